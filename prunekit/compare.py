"""Compare an original (dense or gated) network with its collapsed slim version, side by side.

MACs drop is not latency drop: both are always reported, measured on the user's device.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from prunekit.augment import GatedModel
from prunekit.cost import count_macs, count_params
from prunekit.errors import ConfigError
from prunekit.inference import optimize_for_inference
from prunekit.latency import measure_latency, measure_latency_interleaved, measure_latency_onnx
from prunekit.train.evaluate import evaluate


def layer_widths(original: nn.Module, slim: nn.Module) -> dict[str, list[int]]:
    """``{layer: [channels before, after]}`` for every layer collapse resized or removed (after = 0)."""
    base = original.model if isinstance(original, GatedModel) else original
    modules = dict(base.named_modules())
    out: dict[str, list[int]] = {}
    for name, spec in getattr(slim, "pk_collapse", {}).get("layers", {}).items():
        mod = modules.get(name)
        before = next((getattr(mod, a) for a in ("out_channels", "out_features", "num_features") if hasattr(mod, a)), None)
        if before is None:
            continue
        after = spec.get("out", 0) if spec.get("type") == "resize" else 0
        out[name] = [int(before), int(after)]
    return out


def compare(
    original: nn.Module,
    slim: nn.Module,
    loader: Iterable[Any] | None = None,
    example_input: torch.Tensor | None = None,
    *,
    task: str | None = None,
    device: str | torch.device | None = None,
    batch_sizes: tuple[int, ...] = (1, 64),
    max_batches: int | None = None,
    repeats: int = 10,
) -> dict[str, Any]:
    """Params, MACs, measured latency and accuracy of both networks, plus the collapse facts.

    Args:
        original: the dense or gated network (a GatedModel is evaluated with its hard masks; its params
            and MACs are those of the dense base).
        slim: the collapsed network.
        loader: optional (images, targets) loader for accuracy (mIoU for segmentation).
        example_input: one input like [1, 3, 32, 32]; default: the GatedModel's example.
        task: ``classification`` or ``segmentation`` (default: ``pk_task`` of the model).
        batch_sizes: latency batch sizes.
    Returns:
        ``{"original": {...}, "slim": {...}, "ratios": {...}, "max_abs_diff", "widths", "removed_blocks"}``
        where each side has ``params``, ``macs`` (per sample, 1 MAC = 1 multiply-add), ``latency_ms``
        ({batch: ms}) and ``accuracy`` (or ``miou``) when a loader is given.
    """
    if example_input is None:
        example_input = getattr(original, "example_input", None)
        if example_input is None:
            raise ConfigError("compare needs example_input for a model that is not a GatedModel")
    task = task or getattr(original, "pk_task", None) or getattr(slim, "pk_task", None) or "classification"
    x = example_input[:1]
    sides: dict[str, dict[str, Any]] = {}
    for key, model in (("original", original), ("slim", slim)):
        model.eval()
        side: dict[str, Any] = {
            "params": count_params(model),
            "macs": count_macs(model, x),
            "latency_ms": measure_latency(model, x, batch_sizes, device=device, repeats=repeats),
        }
        if loader is not None:
            res = evaluate(model, loader, task, device, max_batches=max_batches)
            side.update({k: v for k, v in res.items() if k in ("acc", "miou", "pixel_acc", "loss")})
            if "acc" in res:
                side["accuracy"] = res["acc"]
        sides[key] = side
    o, s = sides["original"], sides["slim"]
    ratios = {
        "params": s["params"] / max(o["params"], 1),
        "macs": s["macs"] / max(o["macs"], 1),
        **{f"speedup_b{b}": o["latency_ms"][b] / max(s["latency_ms"][b], 1e-9) for b in batch_sizes},
    }
    ratios["macs_reduction"] = 1.0 / max(ratios["macs"], 1e-12)
    for b in batch_sizes:
        ratios[f"speedup_over_macs_b{b}"] = ratios[f"speedup_b{b}"] / ratios["macs_reduction"]
    info = getattr(slim, "pk_collapse", {})
    return {
        **sides,
        "ratios": ratios,
        "max_abs_diff": info.get("max_diff"),
        "widths": layer_widths(original, slim),
        "removed_blocks": info.get("removed", []),
        "task": task,
    }


def latency_forms(
    before: nn.Module,
    after: nn.Module,
    example_input: torch.Tensor,
    batch_sizes: tuple[int, ...] = (1, 64),
    *,
    rounds: int = 3,
    onnxruntime: bool | None = None,
    eager: bool = True,
) -> dict[str, dict[str, dict[int, float]]]:
    """Latency of two networks (e.g. dense and slim) in every form a user deploys, on this CPU.

    ``eager``: the networks as given, timed interleaved; ``inference``: their inference forms
    (``prunekit.inference.optimize_for_inference``, BatchNorm folded, NCHW for both), interleaved; ``onnxruntime``:
    the inference forms exported to ONNX and run by ONNX Runtime with torch's thread count (when ``onnxruntime``
    is installed, or ``onnxruntime=True`` to require it). ``eager=False`` leaves the first out (a caller that
    already times the networks as given, e.g. beside others).

    Returns:
        ``{form: {"before": {batch: ms}, "after": {batch: ms}}}``.
    """
    x = example_input[:1].cpu()
    before, after = before.cpu().eval(), after.cpu().eval()
    out = {}
    if eager:
        out["eager"] = measure_latency_interleaved({"before": before, "after": after}, x, batch_sizes, rounds=rounds,
                                                   repeats=2)
    forms = {"before": optimize_for_inference(before, x, channels_last=False),
             "after": optimize_for_inference(after, x, channels_last=False)}
    out["inference"] = measure_latency_interleaved(forms, x, batch_sizes, rounds=rounds, repeats=2)
    if onnxruntime is None:
        import importlib.util

        onnxruntime = importlib.util.find_spec("onnxruntime") is not None
    if onnxruntime:
        out["onnxruntime"] = {k: measure_latency_onnx(m, x, batch_sizes, repeats=rounds * 2) for k, m in forms.items()}
    return out
