"""The structures sDprun thresholds: coupled-channel groups of a model's Conv/Linear output rows.

``coupled_param_groups`` asks the engine (``prunekit.augment``) which rows write into one channel group, so
that they share one norm and reach zero together; ``zero_channel_keep_mask`` reads the result back as a
channel mask for collapse. Used by :mod:`prunekit.methods.sdprun`.
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


def per_layer_groups(model: nn.Module, skip: set[str]) -> dict[str, list[Member]]:
    return {
        name: [(m.weight, torch.arange(m.weight.shape[0]))]
        for name, m in model.named_modules()
        if isinstance(m, SPARSE_LAYERS) and name not in skip and m.weight.requires_grad
    }


def coupled_param_groups(model: nn.Module, example_input: torch.Tensor | None = None) -> dict[str, list[Member]]:
    """The structures sDprun thresholds, as ``{name: [(weight, idxs), ...]}`` for :class:`SDPrun`'s ``groups``.

    Uses the engine's coupled-channel groups (``prunekit.augment(model, x).groups``, on a copy of the model,
    so ``model`` is left untouched): the output rows of every Conv/Linear writing into one channel group
    share a norm. Falls back to one group per Conv/Linear layer (its output rows) when the engine is
    unavailable or cannot analyse the model. The classifier (the last Conv/Linear to run) is never included.

    Args:
        model: the network (not yet augmented).
        example_input: an input batch ``[N, C, H, W]``; required for the coupled groups.
    """
    skip = classifier_names(model, example_input)
    if example_input is not None:
        try:
            return _engine_groups(model, example_input, skip)
        except ImportError:
            logger.info("coupled groups unavailable (engine not importable); using per-layer rows")
        except Exception as e:  # noqa: BLE001 - any analysis failure falls back to the always-valid per-layer rows
            logger.warning("coupled-group analysis failed (%s); using per-layer rows", e)
    return per_layer_groups(model, skip)


def member_dim(member: Any) -> str:
    return getattr(member, "kind", None) or member.dim


def _engine_groups(model: nn.Module, example_input: torch.Tensor, skip: set[str]) -> dict[str, list[Member]]:
    from prunekit.augment import augment

    twin = copy.deepcopy(model)
    gated = augment(twin, example_input.to(next(twin.parameters()).device), inplace=True)
    originals = dict(model.named_modules())
    out: dict[str, list[Member]] = {}
    for g in gated.groups:
        members = []
        for mem in g.members:
            if member_dim(mem) != "out" or not isinstance(mem.module, SPARSE_LAYERS):
                continue
            name = mem.name  # the twin was gated in place, so its module paths are the original's
            if name in skip or name not in originals:
                continue
            w = originals[name].weight
            if not w.requires_grad:
                continue
            full = torch.full((int(g.size),), -1, dtype=torch.long)
            full[mem.root_idxs.detach().cpu().long()] = mem.idxs.detach().cpu().long()
            members.append((w, full))
        if members:
            out[str(g.name)] = members
    covered = {id(w) for ms in out.values() for w, _ in ms}
    # Layers of groups the engine keeps whole (e.g. grouped convs) cannot be removed: no point sparsifying them.
    for g in getattr(gated, "fixed_groups", []):
        for mem in g.members:
            if member_dim(mem) == "out" and isinstance(mem.module, SPARSE_LAYERS) and mem.name in originals:
                covered.add(id(originals[mem.name].weight))
    for name, ms in per_layer_groups(model, skip).items():
        if id(ms[0][0]) not in covered:
            out[name] = ms
    return out


def sdprun_param_groups(
    model: nn.Module, groups: Mapping[str, Sequence[Member]], c: float, mu: float
) -> list[dict[str, Any]]:
    """Parameter groups: the weights named in ``groups`` get ``c``; everything else (BN, biases, the
    classifier, gate logits) gets ``c = 0`` (plain SGD)."""
    sparse_ids = {id(p) for ms in groups.values() for p, _ in ms}
    trainable = [p for p in model.parameters() if p.requires_grad]
    sparse = [p for p in trainable if id(p) in sparse_ids]
    plain = [p for p in trainable if id(p) not in sparse_ids]
    out = [{"params": sparse, "c": c, "mu": mu}]
    if plain:
        out.append({"params": plain, "c": 0.0, "mu": mu})
    return out


def zero_channel_keep_mask(group: Any) -> torch.Tensor:
    """``[group.size]`` bool: False where every Conv/Linear "out" member row is exactly zero.

    A critical group (stem, stride-2, residual sum: closing it would cut the network) keeps at least one
    channel; any other group may close completely, which collapse turns into removing the branch.
    """
    zero = torch.ones(int(group.size), dtype=torch.bool)
    seen = False
    for mem in group.members:
        if member_dim(mem) != "out" or not isinstance(mem.module, SPARSE_LAYERS):
            continue
        w = mem.module.weight.detach()
        rows = w.reshape(w.shape[0], -1)[mem.idxs.to(w.device)]
        zero[mem.root_idxs.cpu()] &= (rows == 0).all(1).cpu()
        seen = True
    if not seen:
        return torch.ones(int(group.size), dtype=torch.bool)
    keep = ~zero
    if not keep.any() and getattr(group, "critical", True):
        keep[0] = True
    return keep
