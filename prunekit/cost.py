"""Exact and relaxed cost: MACs and parameters.

Convention: 1 MAC = one multiply-add, counted by ``torch.utils.flop_counter`` (FLOPs / 2) for convolutions,
transposed convolutions and matrix products, per input sample. BatchNorm, LayerNorm, softmax, activations,
pooling and additions are not counted (the usual convention of DepGraph/thop tables; state it beside every
number). Attention's two matrix products are counted: Q·Kᵀ and A·V cost 2·T_q·T_k·d MACs per head of width
d (per window for Swin), whether computed by ``matmul`` or by ``scaled_dot_product_attention`` (whose CPU
kernel the flop counter does not know; prunekit registers the same formula for it).

The relaxed cost replaces each layer's channel counts by the sum of its gate values, so that
for a conv  F̃ = H_out·W_out·k_h·k_w/groups · (Σ g_in)(Σ g_out), and equals the exact count of the
collapsed network when all gates are hard 0/1 (tested across the zoo).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from prunekit.augment import GatedModel
from prunekit.errors import ConfigError
from prunekit.graph import BN_TYPES, CONV_TYPES, CONVT_TYPES, bare_parameter, is_depthwise, member_size
from prunekit.heads import layout


def _unwrap(model: nn.Module) -> nn.Module:
    return model.model if isinstance(model, GatedModel) else model


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _flop_counter() -> FlopCounterMode:
    """A flop counter that also counts CPU scaled-dot-product attention (same formula as the GPU kernels)."""
    extra = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        extra[op] = _cpu_sdpa_flop
    return FlopCounterMode(display=False, custom_mapping=extra)


@torch.no_grad()
def _count(net: nn.Module, example_input: torch.Tensor) -> FlopCounterMode:
    was = net.training
    net.eval()
    try:
        with _flop_counter() as fc:
            net(example_input)
    finally:
        net.train(was)
    return fc


def count_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Exact MACs per sample of one forward pass (flop counter FLOPs / 2 / batch size).

    A GatedModel is counted as its dense base network (gates only mask).
    """
    fc = _count(_unwrap(model), example_input)
    return int(round(fc.get_total_flops() / 2 / example_input.shape[0]))


def count_params(model: nn.Module) -> int:
    """Number of parameters (a GatedModel: of its base network, gate logits excluded)."""
    return sum(p.numel() for p in _unwrap(model).parameters())


@dataclass
class _LayerCost:
    name: str
    macs: float  # dense MACs per sample
    weight: float  # dense weight parameters
    bias: int  # 1 if the layer has a bias (per output channel)
    c_in: int
    c_out: int
    depthwise: bool
    norm: bool  # BatchNorm: params 2·C, no MACs
    heads: bool = False  # attention's matrix products: MACs ∝ kept heads (c_out = num_heads), no params
    param: bool = False  # a bare per-channel parameter (layer scale): weight ∝ kept channels, no MACs


class CostModel:
    """Per-layer dense costs of a GatedModel and their relaxation by gate values.

    Built once (one traced forward); ``macs(values)``/``params(values)`` are cheap, differentiable
    functions of the per-group gate values.
    """

    def __init__(self, gated: nn.Module) -> None:
        net = gated.model
        x = gated.example_input
        shapes: dict[str, tuple[torch.Size, torch.Size]] = {}
        hooks = []
        for name, mod in net.named_modules():
            if isinstance(mod, CONV_TYPES + CONVT_TYPES + (nn.Linear,)):
                hooks.append(mod.register_forward_hook(lambda m, i, o, n=name: shapes.__setitem__(n, (i[0].shape, o.shape))))
        was = net.training
        net.eval()
        try:
            with torch.no_grad(), _flop_counter() as fc:
                net(x)
        finally:
            net.train(was)
            for h in hooks:
                h.remove()
        modules = dict(net.named_modules())
        self.layers: list[_LayerCost] = []
        batch = x.shape[0]
        for name, (ishape, oshape) in shapes.items():
            mod = modules[name]
            n = batch  # per input sample (a Linear inside window attention sees batch × windows rows)
            if isinstance(mod, nn.Linear):
                macs = oshape.numel() / n * mod.in_features
            elif isinstance(mod, CONVT_TYPES):
                # flop counter: transposed conv costs in_numel · (C_out/groups) · k
                macs = ishape.numel() / n * (mod.out_channels // mod.groups) * _prod(mod.kernel_size)
            else:
                macs = oshape.numel() / n * (mod.in_channels // mod.groups) * _prod(mod.kernel_size)
            c_in = mod.in_features if isinstance(mod, nn.Linear) else mod.in_channels
            c_out = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
            self.layers.append(
                _LayerCost(name, float(macs), float(mod.weight.numel()), int(mod.bias is not None), c_in, c_out, is_depthwise(mod), False)
            )
        for name, mod in net.named_modules():
            if isinstance(mod, BN_TYPES) and mod.affine:
                self.layers.append(_LayerCost(name, 0.0, 0.0, 2, mod.num_features, mod.num_features, False, True))
        # attention matrix products: a head-prunable module's FLOPs minus its two projections'
        flops = {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}
        root = net._get_name()
        for name, mod in net.named_modules():
            lay = layout(mod) if name else None
            if lay is None:
                continue
            own = flops.get(f"{root}.{name}", 0) - sum(flops.get(f"{root}.{name}.{c}", 0) for c in (lay.qkv, lay.proj))
            per_head = float(sum(getattr(mod, p).numel() for p, _ in lay.per_head))  # e.g. Swin's bias table
            if own > 0 or per_head:
                self.layers.append(
                    _LayerCost(name, max(own, 0) / 2 / batch, per_head, 0, lay.num_heads, lay.num_heads, False, False, True)
                )
        bare = {m.name: m for h in gated.groups for m in h.group.members if m.dim == "param"}
        for name, m in bare.items():  # layer scales: parameters only, counted like a BatchNorm's
            n = member_size(m)
            self.layers.append(_LayerCost(name, 0.0, float(bare_parameter(m).numel()), 0, n, n, False, False, param=True))
        self.other_params = sum(p.numel() for p in net.parameters()) - sum(
            lc.weight + lc.bias * lc.c_out for lc in self.layers
        )
        # group slices per (layer, dim): lists of (group index, idxs, root_idxs)
        self._slices: dict[tuple[str, str], list[tuple[int, torch.Tensor]]] = {}
        for h in gated.groups:
            for m in h.group.members:
                self._slices.setdefault((m.name, m.dim), []).append((h.index, m.root_idxs))
        # MACs no layer above explains (matrix products outside attention modules prunekit knows): constant
        self.other_macs = max(0.0, fc.get_total_flops() / 2 / batch - sum(lc.macs for lc in self.layers))
        self.dense_macs = float(sum(lc.macs for lc in self.layers)) + self.other_macs
        self.dense_params = float(sum(p.numel() for p in net.parameters()))

    def _count(self, name: str, dim: str, full: int, values: list[torch.Tensor]) -> torch.Tensor | float:
        """Soft channel count of one layer dim: full − Σ over gated slices of (1 − g)."""
        n: torch.Tensor | float = float(full)
        for gi, roots in self._slices.get((name, dim), ()):
            v = values[gi]
            n = n - (1.0 - v[roots.to(v.device)]).sum()
        return n

    def channels(self, values: list[torch.Tensor]) -> dict[str, tuple[torch.Tensor | float, torch.Tensor | float]]:
        """Soft (input, output) channel counts of every conv/linear layer for per-group gate values (differentiable;
        a depthwise conv's input count is its output count). The hook of ``prunekit.latency_table``."""
        out = {}
        for lc in self.layers:
            if lc.norm or lc.heads or lc.param:
                continue
            n_out = self._count(lc.name, "out", lc.c_out, values)
            out[lc.name] = (n_out if lc.depthwise else self._count(lc.name, "in", lc.c_in, values), n_out)
        return out

    def macs(self, values: list[torch.Tensor]) -> torch.Tensor:
        """Relaxed MACs per sample for per-group gate values (list aligned with ``gated.groups``)."""
        total: torch.Tensor | float = self.other_macs
        for lc in self.layers:
            if lc.norm or lc.macs == 0:
                continue
            if lc.heads:
                total = total + lc.macs * self._count(lc.name, "heads", lc.c_out, values) / lc.c_out
                continue
            n_out = self._count(lc.name, "out", lc.c_out, values)
            if lc.depthwise:
                total = total + lc.macs * n_out / lc.c_out
            else:
                n_in = self._count(lc.name, "in", lc.c_in, values)
                total = total + lc.macs * (n_in / lc.c_in) * (n_out / lc.c_out)
        return torch.as_tensor(total)

    def params(self, values: list[torch.Tensor]) -> torch.Tensor:
        """Relaxed parameter count."""
        total: torch.Tensor | float = float(self.other_params)
        for lc in self.layers:
            if lc.heads or lc.param:
                dim = "heads" if lc.heads else "param"
                total = total + lc.weight * self._count(lc.name, dim, lc.c_out, values) / lc.c_out
                continue
            n_out = self._count(lc.name, "out", lc.c_out, values)
            if lc.norm:
                total = total + 2 * n_out
                continue
            if lc.depthwise:
                total = total + lc.weight * n_out / lc.c_out
            else:
                n_in = self._count(lc.name, "in", lc.c_in, values)
                total = total + lc.weight * (n_in / lc.c_in) * (n_out / lc.c_out)
            total = total + lc.bias * n_out
        return torch.as_tensor(total)


def _prod(t) -> int:
    out = 1
    for v in t:
        out *= int(v)
    return out


def cost_model(gated: nn.Module) -> CostModel:
    """The :class:`CostModel` of a GatedModel, built once and kept on it."""
    cm = getattr(gated, "_cost_model", None)
    if cm is None:
        cm = CostModel(gated)
        object.__setattr__(gated, "_cost_model", cm)  # plain attribute, not a submodule
    return cm


def gate_values(gated: nn.Module, mode: str = "expected") -> list[torch.Tensor]:
    """Per-group gate values: ``expected`` (differentiable), ``hard`` (0/1 survivors) or ``eval``.

    Block gates are applied to the groups inside their branch (a closed block closes them all).
    """
    gates = [h.gate for h in gated.groups]
    blocks = list(gated.block_gates)
    if mode == "expected":
        f = lambda g: g.expected() * g.keep.to(torch.float32)  # noqa: E731
    elif mode == "hard":
        f = lambda g: g.hard_mask().to(torch.float32)  # noqa: E731
    elif mode == "eval":
        f = lambda g: g.values()  # noqa: E731
    else:
        raise ConfigError(f"mode must be expected, hard or eval, got {mode!r}")
    return gated.effective_values([f(g) for g in gates], [f(b) for b in blocks])


def relaxed_macs(gated: nn.Module, mode: str = "expected") -> torch.Tensor:
    """Relaxed MACs per sample of a GatedModel; with ``mode="hard"`` equals the collapsed net's MACs."""
    return cost_model(gated).macs(gate_values(gated, mode))


def relaxed_params(gated: nn.Module, mode: str = "expected") -> torch.Tensor:
    return cost_model(gated).params(gate_values(gated, mode))


def macs_ratio(gated: nn.Module, mode: str = "expected") -> torch.Tensor:
    """Relaxed MACs / dense MACs (F̃/F₀ of the CRISP structure loss)."""
    cm = cost_model(gated)
    return cm.macs(gate_values(gated, mode)) / cm.dense_macs


def params_ratio(gated: nn.Module, mode: str = "expected") -> torch.Tensor:
    cm = cost_model(gated)
    return cm.params(gate_values(gated, mode)) / cm.dense_params
