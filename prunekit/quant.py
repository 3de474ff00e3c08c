"""Fake quantisation for joint pruning and quantisation, and the model size in bits.

DPP masks are not chosen by weight magnitude, so the kept weights can be quantised during the same
training (METHODS.md section 2). Quantisation here is *fake*: weights stay float but only take the
values a k-bit integer grid times a per-output-channel scale can represent::

    q_max = 2^(b−1) − 1,      s_c = max_i |W_{c,i}| / q_max,      Q(W)_{c,i} = s_c · clamp(round(W_{c,i}/s_c), −q_max, q_max)

(symmetric, restricted range: 2^b − 1 levels, zero exactly representable so pruned weights stay 0).
The straight-through estimator passes the gradient of Q as the identity: W + stopgrad(Q(W) − W).

:class:`FakeQuantize` is a ``torch.nn.utils.parametrize`` parametrization, so it composes with a DPP
mask on the same weight: registered after the mask, the layer computes Q(W ⊙ A) and the scales are those
of the kept weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit.errors import ConfigError

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
SCALE_BITS = 32  # one float32 scale per output channel


def qmax(bits: int) -> int:
    """Largest integer level of a symmetric ``bits``-bit grid (levels −q_max … q_max)."""
    if not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ConfigError(f"bits must be an integer in [2, 16], got {bits!r}")
    return 2 ** (bits - 1) - 1


def channel_scales(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel scale s_c = max|W_c| / q_max, shape [C_out] (a zero row gets a tiny scale)."""
    amax = weight.detach().reshape(weight.shape[0], -1).abs().amax(dim=1)
    return amax.clamp_min(torch.finfo(weight.dtype).tiny) / qmax(bits)


def fake_quantize(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """k-bit symmetric per-output-channel fake quantisation with a straight-through gradient.

    Args:
        weight: [C_out, ...] (Linear [out, in] or conv [C_out, C_in, *k]).
        bits: bit width b ≥ 2.
    Returns:
        Q(W), same shape; forward values on the grid s_c·{−q_max … q_max}, gradient w.r.t. ``weight``
        the identity.
    """
    q = qmax(bits)
    scale = channel_scales(weight, bits).reshape((-1,) + (1,) * (weight.dim() - 1))
    quant = torch.clamp(torch.round(weight.detach() / scale), -q, q) * scale
    return weight + (quant - weight.detach())


class FakeQuantize(nn.Module):
    """Parametrization W ↦ Q(W) (see :func:`fake_quantize`)."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        qmax(bits)
        self.bits = int(bits)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return fake_quantize(weight, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def quantize_(
    model: nn.Module, bits: int, filter_fn: Callable[[nn.Module, str], bool] | None = None
) -> nn.Module:
    """Register :class:`FakeQuantize` on the weight of every Conv/Linear of ``model`` (in place).

    Args:
        model: the network; existing parametrizations (a DPP mask) run first.
        bits: bit width.
        filter_fn: ``filter_fn(module, name) -> bool``; only layers it accepts are quantised.
    Returns:
        ``model``.
    """
    qmax(bits)
    for name, module in list(model.named_modules()):
        if not isinstance(module, _LAYERS) or (filter_fn is not None and not filter_fn(module, name)):
            continue
        if parametrize.is_parametrized(module, "weight") and any(
            isinstance(p, FakeQuantize) for p in module.parametrizations.weight
        ):
            continue
        parametrize.register_parametrization(module, "weight", FakeQuantize(bits))
    return model


def bake_(model: nn.Module) -> nn.Module:
    """Remove every weight parametrization, leaving the parametrized value (masked, quantised) as a plain
    Parameter, e.g. before ``prunekit.collapse`` or saving (in place; returns ``model``)."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


def layer_bits(module: nn.Module) -> int | None:
    """The fake-quantisation bit width of a layer's weight, or None when it is not quantised."""
    if parametrize.is_parametrized(module, "weight"):
        for p in module.parametrizations.weight:
            if isinstance(p, FakeQuantize):
                return p.bits
    return None


def _dpp_mask(module: nn.Module) -> Any:
    if parametrize.is_parametrized(module, "weight"):
        for p in module.parametrizations.weight:
            if hasattr(p, "expand") and hasattr(p, "_deterministic"):
                return p
    return None


def _weight_shape(module: nn.Module) -> tuple[int, ...]:
    # the raw tensor's shape: reading ``module.weight`` would run the parametrizations (and draw a mask)
    if parametrize.is_parametrized(module, "weight"):
        return tuple(module.parametrizations.weight.original.shape)
    return tuple(module.weight.shape)


def _channel_keep(model: nn.Module) -> dict[int, dict[str, torch.Tensor]]:
    """{id(module): {"out": bool [C_out], "in": bool [C_in]}} from a gated model's group hard masks."""
    keep: dict[int, dict[str, torch.Tensor]] = {}
    for g in getattr(model, "groups", None) or []:
        gate = getattr(g, "gate", None)
        if gate is None:
            continue
        hm = gate.hard_mask().cpu()
        if bool(hm.all()):
            continue
        for mem in g.members:
            mod = mem.module
            if not isinstance(mod, _LAYERS):
                continue
            dim = "out" if mem.dim == "out" else "in"
            n = _weight_shape(mod)[0] if dim == "out" else (mod.in_features if isinstance(mod, nn.Linear) else mod.in_channels)
            vec = keep.setdefault(id(mod), {}).setdefault(dim, torch.ones(n, dtype=torch.bool))
            vec[mem.idxs.cpu()] &= hm[mem.root_idxs.cpu()]
    return keep


def _index_bits(rows: int, n: int, k: int, banks: int) -> int:
    """Bits to store which k of n entries a row keeps: a bitmap or k indices within a bank, the smaller."""
    per_row = min(n, k * max(1, math.ceil(math.log2(max(n // banks, 2)))))
    return rows * per_row


@torch.no_grad()
def model_size_bits(model: nn.Module, bits: int | None = None) -> dict[str, float]:
    """The storage a pruned (and quantised) model needs, counted over its Conv/Linear layers.

    Per layer: kept weights × bit width (the layer's fake-quantisation bits, else ``bits``, else 32);
    one 32-bit scale per kept output channel when quantised; biases at 32 bits; for kernel/weight DPP
    masks the index overhead per kept row (min of an N-bit bitmap and k·⌈log2(N/banks)⌉ index bits).
    Channels removed by a gated model's hard masks (filter granularity) count as gone, as after collapse.
    BatchNorm parameters are not counted (they fold into the convolutions).

    Returns:
        dict with ``bits`` (total), ``weight_bits``, ``scale_bits``, ``mask_bits``, ``bias_bits``,
        ``kept_weights``, ``total_weights``, ``dense_bits`` (every weight and bias at 32 bits) and
        ``ratio`` = bits / dense_bits.
    """
    chan = _channel_keep(model)
    out = dict.fromkeys(("weight_bits", "scale_bits", "mask_bits", "bias_bits", "kept_weights", "total_weights",
                         "dense_bits"), 0.0)
    for module in model.modules():
        if not isinstance(module, _LAYERS):
            continue
        w_shape = _weight_shape(module)
        keep = torch.ones(w_shape, dtype=torch.bool)
        masks = chan.get(id(module), {})
        if "out" in masks:
            keep &= masks["out"].reshape((-1,) + (1,) * (len(w_shape) - 1))
        groups = getattr(module, "groups", 1)
        if "in" in masks and groups == 1:
            keep &= masks["in"].reshape((1, -1) + (1,) * (len(w_shape) - 2))
        dpp = _dpp_mask(module)
        if dpp is not None:
            keep &= dpp.expand(dpp._deterministic(dpp.logits)).cpu().bool()
        kept_rows = int(keep.reshape(w_shape[0], -1).any(1).sum())
        kept = int(keep.sum())
        lb = layer_bits(module)
        width = lb if lb is not None else (bits if bits is not None else 32)
        out["kept_weights"] += kept
        out["total_weights"] += keep.numel()
        out["weight_bits"] += kept * width
        if lb is not None or bits is not None:
            out["scale_bits"] += kept_rows * SCALE_BITS
        if dpp is not None:
            out["mask_bits"] += _index_bits(kept_rows, dpp.logits.shape[1], dpp.k, dpp.banks)
        nbias = module.bias.numel() if module.bias is not None else 0
        if module.bias is not None:
            out["bias_bits"] += (int(masks["out"].sum()) if "out" in masks else nbias) * 32
        out["dense_bits"] += (keep.numel() + nbias) * 32
    out["bits"] = out["weight_bits"] + out["scale_bits"] + out["mask_bits"] + out["bias_bits"]
    out["ratio"] = out["bits"] / out["dense_bits"] if out["dense_bits"] else 1.0
    return out
