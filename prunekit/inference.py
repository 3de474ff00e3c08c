"""The inference form of a (slim) network: BatchNorm folded into its convolutions, channels_last where faster.

A collapsed network has fewer channels but the same number of layers, so at small widths the per-layer overhead
(one BatchNorm pass over the activations per conv) weighs more than it does in the dense network: folding the
BatchNorms removes those passes. ``channels_last`` (NHWC) makes oneDNN's convolutions faster on most CPUs for
convs of any width; ``"auto"`` times both layouts on the user's device and keeps the faster.

``save_slim`` keeps the trainable form (BatchNorm separate, fine-tunable); this form is for deployment and latency
measurement, and ``prunekit.io.export_onnx`` exports either.

BatchNorm folding uses ``torch.fx.experimental.optimization.fuse`` (PyTorch's own conv+BN and linear+BN
fusion, which checks that the conv's output feeds only the BatchNorm) instead of a hand-written pass; a model
that torch.fx cannot trace keeps its BatchNorms (logged, and ``bn_folded`` says 0).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from prunekit.errors import CollapseError, ConfigError

logger = logging.getLogger(__name__)

CHANNELS_LAST_CHOICES = (True, False, "auto")


class ChannelsLast(nn.Module):
    """Runs ``inner`` (already converted to channels_last) on a channels_last copy of a 4-D input."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> Any:
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.inner(x)


def _count_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``model`` with every conv→BatchNorm pair folded; returns (model, pairs folded)."""
    from torch.fx.experimental.optimization import fuse

    model = copy.deepcopy(model).eval()
    before = _count_bn(model)
    try:
        fused = fuse(model, inplace=True)
    except Exception as e:  # noqa: BLE001 -- any tracing failure: keep the BatchNorms, say why
        logger.warning("BatchNorm not folded: torch.fx cannot trace %s (%s)", type(model).__name__, e)
        return model, 0
    return fused, before - _count_bn(fused)


def _flatten(out: Any) -> list[torch.Tensor]:
    """Every tensor in a model's output (a tensor, or dicts/lists/tuples of them), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flatten(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flatten(v)]
    return []


def optimize_for_inference(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    fold_bn: bool = True,
    channels_last: bool | str = "auto",
    atol: float = 1e-5,
    batch_size: int = 64,
) -> nn.Module:
    """The inference form of ``model`` (a copy; ``model`` is unchanged).

    Args:
        model: any (slim or dense) network; evaluated in eval mode.
        example_input: one input batch, e.g. ``[1, 3, 32, 32]``: checks the outputs and times the layouts.
        fold_bn: fold every BatchNorm into the conv (or linear) before it.
        channels_last: ``True``/``False``, or ``"auto"``: time both layouts at ``batch_size`` on this device
            (interleaved) and keep the faster (4-D inputs only).
        atol: the largest allowed |output difference| relative to max(1, max |output|); a larger one raises
            :class:`CollapseError` (never silently returns a different network).
        batch_size: the batch the ``"auto"`` layout choice is timed at.

    Returns:
        The network in eval mode, with ``inference_info``: ``{"bn_folded", "channels_last", "max_abs_diff"}``.
    """
    if channels_last not in CHANNELS_LAST_CHOICES:
        raise ConfigError(f"channels_last must be one of {CHANNELS_LAST_CHOICES}, got {channels_last!r}")
    if not isinstance(example_input, torch.Tensor):
        raise ConfigError(f"example_input must be a tensor, got {type(example_input).__name__}")
    if atol <= 0:
        raise ConfigError(f"atol must be > 0, got {atol}")
    reference = copy.deepcopy(model).eval()
    out, folded = fold_batchnorm(model) if fold_bn else (copy.deepcopy(model).eval(), 0)
    use_cl = bool(channels_last) and example_input.dim() == 4
    if channels_last == "auto" and use_cl:
        from prunekit.latency import measure_latency_interleaved

        candidate = ChannelsLast(copy.deepcopy(out).to(memory_format=torch.channels_last))
        lat = measure_latency_interleaved({"nchw": out, "nhwc": candidate}, example_input, (batch_size,), rounds=3,
                                          repeats=2)
        use_cl = lat["nhwc"][batch_size] < lat["nchw"][batch_size]
        logger.info("channels_last %s: %.2f ms vs NCHW %.2f ms at batch %d", "kept" if use_cl else "dropped",
                    lat["nhwc"][batch_size], lat["nchw"][batch_size], batch_size)
        if use_cl:
            out = candidate
    elif use_cl:
        out = ChannelsLast(out.to(memory_format=torch.channels_last))
    out.eval()
    with torch.no_grad():
        ref, got = _flatten(reference(example_input)), _flatten(out(example_input))
    diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(ref, got))
    scale = max(1.0, max(float(t.abs().max()) for t in ref))
    if diff > atol * scale:
        raise CollapseError(f"the inference form differs from the model by {diff:.3g} (allowed {atol * scale:.3g}); "
                            f"try fold_bn=False or channels_last=False")
    out.inference_info = {"bn_folded": folded, "channels_last": use_cl, "max_abs_diff": diff}
    logger.info("inference form: %d BatchNorms folded, channels_last %s, max |Δ| %.2e", folded, use_cl, diff)
    return out
