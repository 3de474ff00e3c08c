"""Insert one gate per prunable coupled-channel group: ``augment(model, x) -> GatedModel``.

The gate multiplies the outputs of the group's gate points (BatchNorms, or convs/linears without a
following BatchNorm of the group), after BN and before the activation as in CRISP:
y = act(g ⊙ BN(conv(x))). Gate values are computed once per forward, then forward hooks apply them.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from prunekit import heads
from prunekit._device import model_device
from prunekit.errors import ConfigError, UnsupportedModelError
from prunekit.gates import create_gate
from prunekit.gates.base import Gate
from prunekit.graph import Branch, ChannelGroup, Member, analyze, residual_branches, run_naming_layer

log = logging.getLogger(__name__)


class GroupHandle:
    """A prunable group as users see it: ``.name``, ``.size``, ``.members``, ``.gate``, ``.set_mask``."""

    def __init__(self, group: ChannelGroup, gate: Gate, index: int) -> None:
        self.group = group
        self.gate = gate
        self.index = index

    name = property(lambda self: self.group.name)
    size = property(lambda self: self.group.size)
    members = property(lambda self: self.group.members)
    critical = property(lambda self: self.group.critical)

    def set_mask(self, mask: Any) -> None:
        """Force a hard keep (True) / remove (False) mask of length ``size``."""
        self.gate.set_mask(mask)

    def values(self) -> torch.Tensor:
        """Eval gate values [size] (0 where removed)."""
        return self.gate.values()

    def hard_mask(self) -> torch.Tensor:
        return self.gate.hard_mask()

    def __repr__(self) -> str:
        return f"Group({self.name!r}, size={self.size}, members={len(self.members)}, critical={self.critical})"


def _broadcast(v: torch.Tensor, like: torch.Tensor, last: bool) -> torch.Tensor:
    """``v`` [C] shaped to multiply ``like`` along its channel dim: the last for a Linear's features
    ([N, C] or tokens [B, T, C], channels-last [B, H, W, C]), dim 1 for convs and BatchNorms."""
    if last:
        return v
    return v.view(1, -1, *([1] * (like.dim() - 2)))


class _GateHook:
    """Forward hook multiplying a module's output channels by the current gate values.

    As a forward pre-hook (``dim="in"``) it multiplies the input features of a Linear instead (the heads
    of an attention module, gated at its output projection's input).
    """

    def __init__(self, owner: GatedModel, entries: list[tuple[int, Member]], width: int, last: bool = False) -> None:
        self.owner_ref = owner
        self.entries = entries
        self.width = width
        self.last = last
        # the whole gate vector is the multiplier only when the group is exactly this layer's channels
        self.full = len(entries) == 1 and entries[0][1].covers_all and owner.groups[entries[0][0]].size == width

    def mask(self, values: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        if self.full:
            return values[self.entries[0][0]].to(like.dtype)
        v = like.new_ones(self.width)
        for gi, m in self.entries:
            v = v.index_put((m.idxs.to(v.device),), values[gi][m.root_idxs.to(v.device)].to(v.dtype))
        return v

    def __call__(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        values = self.owner_ref._values
        if values is None:  # the base model called on its own: no gating
            return None
        v = self.mask(values, output)
        return output * _broadcast(v, output, self.last)

    def pre(self, module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...] | None:
        values = self.owner_ref._values
        if values is None:
            return None
        x = inputs[0]
        return (x * self.mask(values, x), *inputs[1:])


class _BlockHook:
    """Forward hook multiplying a residual branch's output (its last BatchNorm) by its block gate."""

    def __init__(self, owner: GatedModel, index: int) -> None:
        self.owner_ref = owner
        self.index = index

    def __call__(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        values = self.owner_ref._block_values
        if values is None:
            return None
        return output * _broadcast(values[self.index].to(output.dtype), output, isinstance(module, nn.Linear))


class GatedModel(nn.Module):
    """A model with one gate per prunable coupled-channel group.

    Train mode uses each gate's relaxation; eval mode uses deterministic values times the keep masks,
    which is exactly what :func:`prunekit.collapse` turns into a slim network.

    Attributes:
        model: the wrapped network (its modules carry the gate hooks).
        gates: one gate per prunable group, aligned with ``groups``.
        groups: list of :class:`GroupHandle`.
        fixed_groups: groups that stay whole, each with the reason.
        example_shape: input shape used for the analysis (cost model, collapse check).
    """

    def __init__(
        self,
        model: nn.Module,
        groups: list[ChannelGroup],
        gates: list[Gate],
        example_input: torch.Tensor,
        branches: list[Branch] | None = None,
        block_gates: list[Gate] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.gates = nn.ModuleList(gates)
        prunable = [g for g in groups if g.prunable]
        self.groups = [GroupHandle(g, gate, i) for i, (g, gate) in enumerate(zip(prunable, gates))]
        self.fixed_groups = [g for g in groups if not g.prunable]
        self.register_buffer("example_input", example_input.detach().clone(), persistent=False)
        self._values: list[torch.Tensor] | None = None
        self._block_values: list[torch.Tensor] | None = None
        self._hooks = []
        # residual branches with a block gate each; inner groups as indices into self.groups
        position = {id(g): i for i, g in enumerate(prunable)}
        self.branches = list(branches or [])
        self.block_gates = nn.ModuleList(block_gates or [])
        self.branch_inner = [[position[id(groups[gi])] for gi in b.inner] for b in self.branches]
        self.block_of_group: dict[int, int] = {gi: bi for bi, inner in enumerate(self.branch_inner) for gi in inner}
        names = dict(model.named_modules())
        entries: dict[str, list[tuple[int, Member]]] = {}
        for h in self.groups:
            for m in h.group.gate_points:
                entries.setdefault(m.name, []).append((h.index, m))
        for name, ents in entries.items():
            if len({m.dim for _, m in ents}) > 1:
                raise UnsupportedModelError(f"layer {name!r} would be gated at both its input and its output")
        # An affine BatchNorm's gate is folded into its scale and shift for each forward:
        # g ⊙ (γ x̂ + β) = (gγ) x̂ + gβ costs two vector products instead of one more pass over the
        # activations (forward and backward). Other gate points (convs, linears) use forward hooks.
        self._bn_points: dict[str, tuple[_GateHook | None, int | None]] = {}
        self._point_hooks: dict[str, _GateHook] = {}
        for name, ents in entries.items():
            module = names[name]
            if ents[0][1].dim == "in":
                # the input features of a Linear (attention heads); collapse folds it into its columns
                hook = self._point_hooks[name] = _GateHook(self, ents, module.in_features, last=True)
                module.pk_gate_dim = "in"
                self._hooks.append(module.register_forward_pre_hook(hook.pre))
                continue
            width = ents[0][1].module.num_features if hasattr(module, "num_features") else _out_width(module)
            hook = self._point_hooks[name] = _GateHook(self, ents, width, last=isinstance(module, nn.Linear))
            if _foldable(module):
                self._bn_points[name] = (hook, None)
            else:
                self._hooks.append(module.register_forward_hook(hook))
        self.gate_points = {name: ents for name, ents in entries.items()}
        for bi, b in enumerate(self.branches):
            if _foldable(names[b.end.name]):
                hook = self._bn_points.get(b.end.name, (None, None))[0]
                self._bn_points[b.end.name] = (hook, bi)
            else:
                self._hooks.append(names[b.end.name].register_forward_hook(_BlockHook(self, bi)))
        self._bn_modules = {name: names[name] for name in self._bn_points}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._values = [g() for g in self.gates]
        self._block_values = [g() for g in self.block_gates]
        try:
            overrides = self._folded_bn_parameters(self._values, self._block_values)
            return torch.func.functional_call(self.model, overrides, args, kwargs)
        finally:
            self._values = None
            self._block_values = None

    def point_mask(self, name: str, values: list[torch.Tensor]) -> torch.Tensor:
        """The full-width channel multiplier of gate point ``name`` for per-group ``values``."""
        return self._point_hooks[name].mask(values, values[0] if values else torch.ones(1))

    def _folded_bn_parameters(self, values: list[torch.Tensor], block_values: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{"<bn>.weight": γ·g, "<bn>.bias": β·g}`` for every gated affine BatchNorm."""
        out: dict[str, torch.Tensor] = {}
        for name, (hook, bi) in self._bn_points.items():
            bn = self._bn_modules[name]
            v = hook.mask(values, bn.weight) if hook is not None else None
            if bi is not None:
                b = block_values[bi].to(bn.weight.dtype)
                v = b.expand(bn.num_features) if v is None else v * b
            out[f"{name}.weight"] = bn.weight * v
            out[f"{name}.bias"] = bn.bias * v
        return out

    def effective_values(self, values: list[torch.Tensor], block_values: list[torch.Tensor]) -> list[torch.Tensor]:
        """Group values with each branch's block gate applied to its inner groups.

        A closed block (value 0) closes every channel inside its branch: that is how block masks remove
        whole residual blocks at collapse, and how the relaxed cost sees them.
        """
        if not block_values:
            return values
        return [v * block_values[self.block_of_group[i]] if i in self.block_of_group else v for i, v in enumerate(values)]

    # -- conveniences --------------------------------------------------------------------------
    def group(self, name: str) -> GroupHandle:
        for h in self.groups:
            if h.name == name:
                return h
        raise ConfigError(f"no prunable group named {name!r}")

    def gate_values(self) -> dict[str, torch.Tensor]:
        """Eval gate values per group name."""
        return {h.name: h.values() for h in self.groups}

    def hard_masks(self) -> dict[str, torch.Tensor]:
        return {h.name: h.hard_mask() for h in self.groups}

    def gate_parameters(self) -> list[nn.Parameter]:
        """Trainable gate logits, block gates included (they get their own optimizer group)."""
        return list(self.gates.parameters()) + list(self.block_gates.parameters())

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    @torch.no_grad()
    def prune_(self, threshold: float) -> int:
        """Apply every gate's prune rule at ``threshold``; returns the number of kept channels."""
        return sum(h.gate.prune_(threshold) for h in self.groups)

    def extra_repr(self) -> str:
        return f"groups={len(self.groups)}, fixed={len(self.fixed_groups)}"


def find_gated(model: nn.Module) -> GatedModel | None:
    """The :class:`GatedModel` that is ``model`` or sits inside it (e.g. under a method's wrapper); None if none."""
    return next((m for m in model.modules() if isinstance(m, GatedModel)), None)


def _foldable(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine


def _out_width(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    return module.out_channels


def is_gate_hook(hook: Callable[..., Any]) -> bool:
    """True for prunekit's gate hooks (forward hooks, and the bound ``pre`` of an input gate)."""
    owner = getattr(hook, "__self__", hook)
    return isinstance(owner, (_GateHook, _BlockHook))


def augment(
    model: nn.Module,
    example_input: torch.Tensor,
    gate: str = "crisp",
    *,
    gate_options: dict[str, Any] | None = None,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    inplace: bool = False,
    timeout_s: float = 120.0,
    block_gate: str | None = None,
    block_gate_options: dict[str, Any] | None = None,
) -> GatedModel:
    """Gate every prunable coupled-channel group of ``model``.

    Args:
        model: a CNN traceable with ``example_input`` (the classifier/segmentation head is protected).
        example_input: a batch like the real inputs, e.g. [1, 3, 32, 32].
        gate: registered gate kind (``crisp``, ``hardconcrete``, ``bernoulli``, ``dpp``, ...).
        gate_options: keyword options of the gate kind (e.g. ``{"a": 5.0}``).
        filter_fn: ``filter_fn(root_module, name) -> bool``; groups whose root fails stay whole.
        inplace: gate ``model`` itself instead of a deep copy. Either way, attention modules whose head width
            is derived from the embedding width (``nn.MultiheadAttention``, torchvision's Swin attention) are
            replaced in the gated network by equivalent head-prunable modules (``prunekit.heads.convert``).
        timeout_s: bound on the graph analysis.
        block_gate: also gate every residual branch as a whole with a one-unit gate of this kind
            (e.g. ``"bernoulli"`` for the growing method); a closed block removes the branch.
        block_gate_options: keyword options of the block gate kind.
    Returns:
        a :class:`GatedModel`; ``.groups`` lists the prunable groups.
    Raises:
        UnsupportedModelError: nothing to prune, the graph cannot be traced, or the gated network fails to
            run (the message names the layer).
    """
    if isinstance(model, GatedModel):
        raise ConfigError("model is already gated (a GatedModel); pass the plain model")
    if not isinstance(example_input, torch.Tensor):
        raise ConfigError(f"example_input must be a tensor, got {type(example_input).__name__}")
    target = model if inplace else copy.deepcopy(model)
    device = model_device(target)
    example_input = example_input.to(device)
    converted = heads.convert_(target)  # attention modules whose heads need a separate head width
    if converted:
        log.info("attention modules made head-prunable: %s", ", ".join(converted))
    groups = analyze(target, example_input, filter_fn=filter_fn, timeout_s=timeout_s)
    prunable = [g for g in groups if g.prunable]
    if not prunable:
        reasons = "; ".join(sorted({g.reason or "" for g in groups})[:3]) or "no conv/linear layers found"
        raise UnsupportedModelError(f"{type(model).__name__} has no prunable channel group ({reasons})")
    gates = [create_gate(gate, g.size, critical=g.critical, **(gate_options or {})).to(device) for g in prunable]
    branches = residual_branches(groups) if block_gate else []
    block_gates = [create_gate(block_gate, 1, **(block_gate_options or {})).to(device) for _ in branches]
    gated = GatedModel(target, groups, gates, example_input[:1], branches, block_gates)
    was_training = gated.training
    gated.eval()
    try:
        with torch.no_grad():
            run_naming_layer(target, lambda: gated(example_input[:1]), UnsupportedModelError, f"gated {type(model).__name__}")
    finally:
        gated.train(was_training)
    for attr in ("pk_spec", "pk_task"):
        if hasattr(model, attr):
            setattr(gated, attr, getattr(model, attr))
    log.info("augmented %s: %d gated groups, %d fixed", type(model).__name__, len(prunable), len(groups) - len(prunable))
    return gated
