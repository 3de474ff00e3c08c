"""The structures sDprun thresholds: every parameter of a coupled channel, from the engine's channel groups.

``coupled_structures`` asks the engine (``prunekit.augment``) which layer slices make up one channel group and
puts **every parameter of a channel** into its structure: the output rows of all convs/linears writing into the
channel (depthwise ones included), their biases, and the BatchNorm γ and β on the channel. Only then can the
threshold make a channel exactly zero: a conv followed by BatchNorm is scale-invariant, so thresholding its
filter alone shrinks the filter without changing the function (the loss does not push back, the gradient grows
as the filter shrinks) while BN's γ/β keep the channel alive (METHODS.md section 3, measured pitfall 1).
``zero_channel_keep_mask`` reads the result back as a channel mask for collapse. Used by
:mod:`prunekit.methods.sdprun`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

SPARSE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
Member = tuple[torch.Tensor, torch.Tensor]  # (parameter, LongTensor of dim-0 indices, one per structure)


# -- groups from a model ---------------------------------------------------------------------------------
def classifier_names(model: nn.Module, example_input: torch.Tensor | None) -> set[str]:
    """The layer that produces the output: the last Conv/Linear to run (or the last one declared)."""
    layers = {m: n for n, m in model.named_modules() if isinstance(m, SPARSE_LAYERS)}
    if not layers:
        return set()
    if example_input is None:
        return {list(layers.values())[-1]}
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(layers[mod])) for m in layers]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            dev = next(model.parameters()).device
            model(example_input.to(dev))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return {order[-1]} if order else {list(layers.values())[-1]}


def channel_params(module: nn.Module, trainable: bool = True) -> list[torch.Tensor]:
    """The per-output-channel parameters of a Conv/Linear (weight, bias) or a BatchNorm (γ, β); with
    ``trainable`` only those that require grad."""
    if not isinstance(module, SPARSE_LAYERS + NORM_LAYERS):
        return []
    return [p for p in (getattr(module, "weight", None), getattr(module, "bias", None))
            if isinstance(p, torch.Tensor) and (p.requires_grad or not trainable)]


def per_layer_groups(model: nn.Module, skip: set[str]) -> dict[str, list[Member]]:
    """One structure per output row of every Conv/Linear (its bias entry included), no coupling."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, SPARSE_LAYERS) and name not in skip and m.weight.requires_grad:
            out[name] = [(p, torch.arange(m.weight.shape[0])) for p in channel_params(m)]
    return out


def coupled_structures(
    model: nn.Module, example_input: torch.Tensor | None = None
) -> tuple[dict[str, list[Member]], Any]:
    """The structures sDprun thresholds and the engine's GatedModel they were read from (None without it).

    Uses the engine's coupled-channel groups (``prunekit.augment(model, x).groups``, on a copy of the model,
    so ``model`` is left untouched): structure ``j`` of group ``g`` holds row ``j`` of every parameter of
    channel ``j``: the output rows (and biases) of every Conv/Linear writing into it and the γ/β of every
    BatchNorm on it, so they share one norm and reach zero together. Falls back to one group per Conv/Linear
    layer (its output rows and biases) when the engine is unavailable or cannot analyse the model. The
    classifier (the last Conv/Linear to run) is never included.

    The returned GatedModel is a copy: only its structure (``groups``, cost model) is meant to be used, to
    price a set of zero channels in MACs (``prunekit.methods._gated.mask_ratio``).
    """
    skip = classifier_names(model, example_input)
    if example_input is not None:
        try:
            return _engine_groups(model, example_input, skip)
        except ImportError:
            logger.info("coupled groups unavailable (engine not importable); using per-layer rows")
        except Exception as e:  # noqa: BLE001 - any analysis failure falls back to the always-valid per-layer rows
            logger.warning("coupled-group analysis failed (%s); using per-layer rows", e)
    return per_layer_groups(model, skip), None


def coupled_param_groups(model: nn.Module, example_input: torch.Tensor | None = None) -> dict[str, list[Member]]:
    """The structures sDprun thresholds, as ``{name: [(param, idxs), ...]}`` for :class:`SDPrun`'s ``groups``
    (:func:`coupled_structures` without the GatedModel)."""
    return coupled_structures(model, example_input)[0]


def member_dim(member: Any) -> str:
    return getattr(member, "kind", None) or member.dim


def _engine_groups(model: nn.Module, example_input: torch.Tensor, skip: set[str]) -> tuple[dict[str, list[Member]], Any]:
    from prunekit.augment import augment

    twin = copy.deepcopy(model)
    gated = augment(twin, example_input.to(next(twin.parameters()).device), inplace=True)
    originals = dict(model.named_modules())
    out: dict[str, list[Member]] = {}
    for g in gated.groups:
        members = []
        seen: set[int] = set()
        for mem in g.members:
            name = mem.name  # the twin was gated in place, so its module paths are the original's
            if member_dim(mem) != "out" or name in skip or name not in originals:
                continue
            full = torch.full((int(g.size),), -1, dtype=torch.long)
            full[mem.root_idxs.detach().cpu().long()] = mem.idxs.detach().cpu().long()
            for p in channel_params(originals[name]):
                if id(p) not in seen:
                    seen.add(id(p))
                    members.append((p, full))
        if any(p.dim() > 1 for p, _ in members):  # a channel of a Conv/Linear, not BatchNorm parameters alone
            out[str(g.name)] = members
    covered = {id(p) for ms in out.values() for p, _ in ms}
    # Layers of groups the engine keeps whole (e.g. grouped convs) cannot be removed: no point sparsifying them.
    for g in getattr(gated, "fixed_groups", []):
        for mem in g.members:
            if member_dim(mem) == "out" and mem.name in originals:
                covered.update(id(p) for p in channel_params(originals[mem.name]))
    for name, ms in per_layer_groups(model, skip).items():
        if id(ms[0][0]) not in covered:
            out[name] = ms
    return out, gated


def sdprun_param_groups(
    model: nn.Module, groups: Mapping[str, Sequence[Member]], c: float, mu: float
) -> list[dict[str, Any]]:
    """Parameter groups: the parameters named in ``groups`` get ``c`` and a constant lr (``"lr_schedule":
    False``: gRDA's threshold assumes a constant γ, so the loop's warm-up and decay must not drive it);
    everything else (the classifier, parameters outside every group, gate logits) is plain SGD (``c = 0``)
    under the loop's schedule."""
    sparse_ids = {id(p) for ms in groups.values() for p, _ in ms}
    trainable = [p for p in model.parameters() if p.requires_grad]
    sparse = [p for p in trainable if id(p) in sparse_ids]
    plain = [p for p in trainable if id(p) not in sparse_ids]
    out = [{"params": sparse, "c": c, "mu": mu, "lr_schedule": False}]
    if plain:
        out.append({"params": plain, "c": 0.0, "mu": mu})
    return out


def zero_channel_keep_mask(
    group: Any, whole_channel: bool = True, modules: Mapping[str, nn.Module] | None = None
) -> torch.Tensor:
    """``[group.size]`` bool: False where the channel's parameters are all exactly zero.

    Args:
        group: a GatedModel group.
        whole_channel: a channel is zero when every Conv/Linear "out" row, bias and BatchNorm γ/β of it is
            zero (then it outputs exactly zero and removing it changes nothing); False: the Conv/Linear rows
            alone (the per-layer structures, which leave BN alone: removing such a channel also removes the
            constant β it emitted).
        modules: read the parameters of the module of this name (``dict(model.named_modules())`` of the live
            network) instead of the group's own modules (e.g. when ``group`` belongs to a structural copy).

    A critical group (stem, stride-2, residual sum: closing it would cut the network) keeps at least one
    channel; any other group may close completely, which collapse turns into removing the branch.
    """
    zero = torch.ones(int(group.size), dtype=torch.bool)
    seen = False
    for mem in group.members:
        if member_dim(mem) != "out":
            continue
        module = mem.module if modules is None else modules.get(mem.name)
        if module is None:
            continue
        params = channel_params(module, trainable=False) if whole_channel else (
            [module.weight] if isinstance(module, SPARSE_LAYERS) else [])
        for p in params:
            p = p.detach()
            rows = p.reshape(p.shape[0], -1)[mem.idxs.to(p.device)]
            zero[mem.root_idxs.cpu()] &= (rows == 0).all(1).cpu()
            seen = seen or isinstance(module, SPARSE_LAYERS)
    if not seen:
        return torch.ones(int(group.size), dtype=torch.bool)
    return keep_at_least_one(~zero, group)


def keep_at_least_one(keep: torch.Tensor, group: Any) -> torch.Tensor:
    """``keep`` with its first structure switched on when a critical group would close completely."""
    if not keep.any() and getattr(group, "critical", True):
        keep = keep.clone()
        keep[0] = True
    return keep
