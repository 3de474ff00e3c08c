"""Benchmark of the mask metrics (``prunekit.metrics``) on tv:resnet50-sized masks, on CPU.

Target (issue 5): computing all metrics for tv:resnet50-sized masks takes under 50 ms on CPU. The masks
follow the shapes of torchvision's ResNet-50 (53 convolutions, 26,560 output channels), built directly
(no dependency analysis, no weights):

* ``filter_dpp``: one filter-granularity DPP gate per conv output (an upper bound on the coupled groups),
  all of :func:`prunekit.metrics.gate_layer_rows`;
* ``filter_crisp``: the same with sigmoid (CRISP) gates, the binary-gate path;
* ``kernel_core``: kernel-granularity DPP logits Φ [C_out, C_in] of every conv (≈ 11 M entries):
  confidence, diversity, sparsity and flip rate only;
* ``kernel_rows``: all rows for those kernel masks (the relaxed marginals behind gate_mean/gate_hist are
  estimated from ≤ 64 rows per layer; confidence, diversity and flip rate use every row).

Reported per case: median and minimum wall time over ``repeats`` calls, and the process CPU time
(median), with the number of torch threads. On a loaded machine the wall time includes waiting for a
core; the CPU time is what the metrics cost.
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit._device import torch_threads
from prunekit.gates import create_gate
from prunekit.gates.dpp import DPPGate, DPPMask
from prunekit.metrics import confidence_diversity, flip_rate, gate_layer_rows, selection_probabilities, sparsity

logger = logging.getLogger(__name__)

TARGET_MS = 50.0


def resnet50_conv_shapes() -> list[tuple[int, int, int, int]]:
    """(C_out, C_in, kh, kw) of every conv of torchvision's ResNet-50, in module order."""
    from torchvision.models import resnet50

    return [tuple(m.weight.shape) for m in resnet50(weights=None).modules() if isinstance(m, nn.Conv2d)]


def _time(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    fn()  # warm-up (allocations, lazy imports)
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return {"wall_median_ms": statistics.median(wall), "wall_min_ms": min(wall), "cpu_median_ms": statistics.median(cpu)}


@torch.no_grad()
def _cases(shapes: list[tuple[int, int, int, int]]) -> dict[str, Callable[[], Any]]:
    torch.manual_seed(0)
    dpp = nn.ModuleList(DPPGate(s[0]) for s in shapes)
    crisp = nn.ModuleList(create_gate("crisp", s[0]) for s in shapes)
    masks = nn.ModuleList(DPPMask(s, "kernel") for s in shapes if s[1] >= 2)
    for m in list(dpp) + list(masks):  # two samples each, so the flip rate has something to compare
        state = m.dpp if isinstance(m, DPPGate) else m
        state.train()
        state._sample(state.logits)
        state._sample(state.logits)
    crisp_state: dict[str, torch.Tensor] = {}
    gate_layer_rows(crisp, state=crisp_state)

    def kernel_core() -> None:
        for m in masks:
            confidence_diversity(selection_probabilities(m.logits))
            sparsity(m.last_sample)
            flip_rate(m.prev_sample, m.last_sample)

    return {
        "filter_dpp": lambda: gate_layer_rows(dpp),
        "filter_crisp": lambda: gate_layer_rows(crisp, state=crisp_state),
        "kernel_core": kernel_core,
        "kernel_rows": lambda: gate_layer_rows(masks),
    }


def bench_metrics(
    out_dir: str | Path, repeats: int = 10, kernel_repeats: int = 3, threads: int | None = None
) -> dict[str, Any]:
    """Time every metric case; write ``metrics.json`` and ``metrics.md`` to ``out_dir``.

    Args:
        out_dir: folder for the JSON and markdown results.
        repeats: timed calls per filter case (kernel cases: ``kernel_repeats``).
        threads: torch intra-op threads for the measurement (None: leave torch's setting); restored after.

    Returns:
        ``{"cases": {name: {"wall_median_ms", "wall_min_ms", "cpu_median_ms"}}, "target_ms", "met": bool
        (filter cases' CPU time under the target), "layers", "channels", "kernel_entries", "threads",
        "torch", "machine"}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shapes = resnet50_conv_shapes()
    cases = _cases(shapes)
    with torch_threads(threads):
        timed = {name: _time(fn, kernel_repeats if name.startswith("kernel") else repeats) for name, fn in cases.items()}
        used_threads = torch.get_num_threads()
    res: dict[str, Any] = {
        "cases": timed,
        "target_ms": TARGET_MS,
        "layers": len(shapes),
        "channels": sum(s[0] for s in shapes),
        "kernel_entries": sum(s[0] * s[1] for s in shapes if s[1] >= 2),
        "threads": used_threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "repeats": repeats,
        "kernel_repeats": kernel_repeats,
    }
    res["met"] = all(res["cases"][c]["cpu_median_ms"] < TARGET_MS for c in ("filter_dpp", "filter_crisp"))
    (out_dir / "metrics.json").write_text(json.dumps(res, indent=2))
    (out_dir / "metrics.md").write_text(markdown_table(res))
    logger.info("metrics bench: %s", {k: round(v["cpu_median_ms"], 1) for k, v in res["cases"].items()})
    return res


def markdown_table(res: dict[str, Any]) -> str:
    """The benchmark as a markdown table."""
    lines = [
        f"# Mask metrics on tv:resnet50-sized masks ({res['layers']} convs, {res['channels']} channels, "
        f"{res['kernel_entries']:,} kernel-mask entries; torch {res['torch']}, {res['threads']} threads)",
        "",
        f"Target: all metrics for the filter masks in < {res['target_ms']:.0f} ms on CPU "
        f"({'met' if res['met'] else 'NOT met'}, by CPU time).",
        "",
        "| case | wall median (ms) | wall min (ms) | CPU median (ms) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, r in res["cases"].items():
        lines.append(f"| {name} | {r['wall_median_ms']:.1f} | {r['wall_min_ms']:.1f} | {r['cpu_median_ms']:.1f} |")
    return "\n".join(lines) + "\n"
