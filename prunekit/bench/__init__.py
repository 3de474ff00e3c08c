"""Benchmark suites: ``prunekit bench <suite>``; each writes ``<suite>.json`` and ``<suite>.md`` to its folder.

Speed and memory targets are checked here, never by timed unit tests.
"""

from __future__ import annotations

import importlib
import inspect
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prunekit.errors import ConfigError

# suite -> (module, function, one-line description)
SUITES: dict[str, tuple[str, str, str]] = {
    "collapse": ("prunekit.bench.collapse", "bench_collapse", "collapse fidelity, time and realised speedup across the zoo, vs Torch-Pruning"),
    "overhead": ("prunekit.bench.overhead", "bench_overhead", "training step time of gated vs plain models, per relaxation"),
    "effects": ("prunekit.bench.effects", "bench_effects", "one headline effect per method, decided by its own mechanism (pass/fail)"),
    "methods": ("prunekit.bench.methods", "bench_methods", "dense/crisp/growing/l0/l1/slimming on one MACs budget"),
    "curve": ("prunekit.bench.curve", "bench_curve", "post-training pruning curves of SGD vs Bridgeout vs sDprun training"),
    "runner": ("prunekit.bench.runner", "bench_runner", "run-store logging overhead and thread settings beside a UI"),
    "metrics": ("prunekit.bench.metrics", "bench_metrics", "cost of the mask confidence/diversity metrics on resnet50-sized masks"),
    "app": ("prunekit.bench.app", "bench_app", "app latency in a real browser and training throughput with the app open"),
    "pareto": ("prunekit.bench.pareto", "bench_pareto", "accuracy vs MACs vs latency of every method and Torch-Pruning at fixed budgets"),
    "latency": ("prunekit.bench.pareto", "bench_latency", "CPU latency vs MACs of the pareto slim networks against Torch-Pruning's"),
    "cli": ("prunekit.bench.cli", "bench_cli", "wall time of prunekit --help and of argument errors in a fresh interpreter"),
    "data": ("prunekit.bench.data", "bench_data", "data time per epoch, per-image vs batch loader; step time NCHW vs channels_last"),
    "recipe": ("prunekit.bench.data", "bench_recipe", "accuracy and time of each piece of the fast training recipe, alone and together"),
}


def list_suites() -> list[str]:
    return list(SUITES)


def get_suite(name: str) -> Callable[..., dict[str, Any]]:
    if name not in SUITES:
        raise ConfigError(f"unknown bench suite {name!r}; choose from {', '.join(SUITES)}")
    module, func, _ = SUITES[name]
    try:
        return getattr(importlib.import_module(module), func)
    except ModuleNotFoundError as e:
        raise ConfigError(f"bench suite {name!r} is not available in this version ({e})") from None


def run_suite(name: str, out_dir: str | Path, preset: str | None = None, *, resume: bool = False,
              **options: Any) -> dict[str, Any]:
    """Run one suite into ``out_dir``; ``preset`` is passed where the suite has presets, ``resume`` where it
    resumes, and every other option (``methods=``, ``seeds=``, a preset field such as ``epochs=``) where the
    suite takes it.

    Raises:
        ConfigError: the suite does not take one of the options (the error names it and the suite).
    """
    fn = get_suite(name)
    params = inspect.signature(fn).parameters
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs: dict[str, Any] = {}
    if preset is not None:
        options["preset"] = preset
    if resume:
        options["resume"] = True
    for key, value in options.items():
        if key not in params and (not open_ended or key in ("preset", "resume")):
            raise ConfigError(f"bench suite {name!r} does not take {key}, got {key}={value!r}")
        kwargs[key] = value
    return fn(out_dir, **kwargs)


def shared_data_root() -> str | None:
    """``../shared/data`` beside the repository when present (real MNIST files, the CIFAR-10 JPEG tar), else None
    (the default search: ``$PRUNEKIT_DATA``, the cache folder, system folders)."""
    path = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
    return str(path) if path.is_dir() else None


def error_reason(e: BaseException, limit: int = 200) -> str:
    """A failure as one table cell: ``Type: first line of the message`` (cut at ``limit`` characters)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:limit] if lines else ''}"


def machine() -> dict[str, Any]:
    """What the numbers were measured on (goes into every JSON)."""
    import os

    import torch  # here, not at the top: `prunekit bench --help` lists SUITES without importing torch

    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_report(out_dir: str | Path, name: str, result: dict[str, Any], markdown: str) -> dict[str, Any]:
    """Write ``name.json`` (result + machine) and ``name.md``; returns the result with ``markdown``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = {**result, "machine": machine()}
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    (out / f"{name}.md").write_text(markdown)
    return {**result, "markdown": markdown}


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table; floats get 3 significant digits."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
