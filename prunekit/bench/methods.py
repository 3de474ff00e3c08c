"""``prunekit bench methods``: dense / crisp / growing / l0 / l1 / slimming on one MACs budget.

Every method trains the same model on the same data for the same epochs (the dense run is the
same-budget reference), is finalised and collapsed (``prunekit.collapse``, exact), and the slim network
is measured: test accuracy, MACs (``prunekit.cost.count_macs``: flop counter, 1 MAC = one multiply-add
of conv/linear layers, per sample), parameters, CPU latency (median ms at batch 1 and 32, one thread).
Growing also reports the training MACs it actually spent (sampled-off units saved).

Presets: ``quick`` (a tiny ResNet-20 run on 512 ``shapes`` images, a few minutes on 2 CPU cores: a smoke
comparison, accuracies are not meaningful) and ``full`` (8000 images, 6 epochs: the issue's budget).
Results go to ``methods.json`` and ``methods.md`` in ``out_dir``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from prunekit.augment import GatedModel
from prunekit.collapse import collapse
from prunekit.cost import count_macs, count_params
from prunekit.errors import ConfigError
from prunekit.latency import measure_latency
from prunekit.train.callbacks import Callback
from prunekit.train.config import RunConfig, TrainConfig
from prunekit.train.experiment import run_experiment

logger = logging.getLogger(__name__)

METHODS = ("dense", "crisp", "growing", "l0", "l1", "slimming")

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"model": "resnet20", "dataset": "shapes", "target_macs": 0.5, "epochs": 4, "batch_size": 64,
              "lr": 0.05, "max_steps_per_epoch": 8, "data_options": {"num_samples": 512, "num_test": 256}},
    "full": {"model": "resnet20", "dataset": "shapes", "target_macs": 0.5, "epochs": 6, "batch_size": 128,
             "lr": 0.1, "max_steps_per_epoch": None, "data_options": {}},
}


class _Keep(Callback):
    """Remembers the trainer's method and its last step metrics."""

    def __init__(self) -> None:
        self.method: Any = None
        self.logs: dict[str, float] = {}

    def on_step_end(self, trainer: Any, logs: dict[str, float]) -> None:
        self.logs = dict(logs)

    def on_train_end(self, trainer: Any, result: dict[str, Any]) -> None:
        self.method = trainer.method


def _run_one(method: str, preset: dict[str, Any], seed: int, threads: int) -> dict[str, Any]:
    options = {} if method == "dense" else {"target_macs": preset["target_macs"]}
    train = TrainConfig(epochs=preset["epochs"], batch_size=preset["batch_size"], lr=preset["lr"], seed=seed,
                        max_steps_per_epoch=preset["max_steps_per_epoch"], num_threads=threads, device="cpu",
                        log_every=5)
    cfg = RunConfig(model=preset["model"], dataset=preset["dataset"], method=method, method_options=options,
                    train=train, data_options=dict(preset["data_options"]))
    keep = _Keep()
    t0 = time.perf_counter()
    result = run_experiment(cfg, callbacks=[keep])
    model = result["model"]
    x = torch.zeros(1, result["dataset"]["in_channels"], *result["dataset"]["image_size"])
    if isinstance(model, GatedModel):
        x = model.example_input[:1].cpu()
        slim = collapse(model)
    else:
        slim = model
    slim.eval()
    lat = measure_latency(slim, x, batch_sizes=(1, 32), device="cpu", warmup=2, repeats=7)
    row = {"method": method, "acc_test": result["metrics"].get("acc/test"), "macs": count_macs(slim, x),
           "params": count_params(slim), "latency_ms_b1": lat[1], "latency_ms_b32": lat[32],
           "train_s": result["train_time_s"], "wall_s": time.perf_counter() - t0}
    if "macs_ratio/train" in keep.logs:
        row["train_macs_ratio"] = getattr(keep.method, "train_macs_ratio", keep.logs["macs_ratio/train"])
    return row


def _markdown(rows: list[dict[str, Any]]) -> str:
    head = "| method | acc (test) | MACs | MACs ratio | params | params ratio | latency b1 (ms) | latency b32 (ms) | speed-up b32 | train MACs |"
    lines = [head, "|" + " --- |" * 10]
    for r in rows:
        tm = f"{r['train_macs_ratio']:.3f}" if "train_macs_ratio" in r else ""
        lines.append(f"| {r['method']} | {r['acc_test']:.4f} | {r['macs'] / 1e6:.2f}M | {r['macs_ratio']:.3f} | "
                     f"{r['params'] / 1e3:.1f}k | {r['params_ratio']:.3f} | {r['latency_ms_b1']:.2f} | "
                     f"{r['latency_ms_b32']:.1f} | {r['speedup_b32']:.2f}x | {tm} |")
    return "\n".join(lines)


def bench_methods(out_dir: str | Path, preset: str = "quick", methods: tuple[str, ...] = METHODS, seed: int = 0,
                  threads: int = 1) -> dict[str, Any]:
    """Train, collapse and measure every method on one budget; write ``methods.json`` and ``methods.md``.

    Args:
        out_dir: folder for the results.
        preset: ``"quick"`` or ``"full"`` (see ``PRESETS``).
        methods: which methods (``"dense"`` first: it is the reference for the ratios).
        seed: training seed, the same for every method.
        threads: torch CPU threads for training and timing.
    Returns:
        ``{"preset", "settings", "counter", "rows": [per-method dicts], "markdown"}``.
    """
    if preset not in PRESETS:
        raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    settings = PRESETS[preset]
    methods = tuple(methods)
    if "dense" not in methods:
        methods = ("dense", *methods)
    rows = []
    for m in methods:
        logger.info("bench methods: %s", m)
        rows.append(_run_one(m, settings, seed, threads))
    dense = next(r for r in rows if r["method"] == "dense")
    for r in rows:
        r["macs_ratio"] = r["macs"] / dense["macs"]
        r["params_ratio"] = r["params"] / dense["params"]
        r["speedup_b32"] = dense["latency_ms_b32"] / r["latency_ms_b32"]
    md = _markdown(rows)
    out = {"preset": preset, "settings": settings, "seed": seed,
           "counter": "torch.utils.flop_counter FLOPs / 2 per sample (conv/linear MACs)", "rows": rows,
           "markdown": md}
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / "methods.json").write_text(json.dumps(out, indent=2))
    (path / "methods.md").write_text(md + "\n")
    return out
