"""``prunekit bench data``: data time per epoch of the per-image and the batch loader, and the training step time
of NCHW vs channels_last.

Data time: one pass over the train split (and one over val + test) of each dataset through
``make_loaders(loader="torch")`` (a ``DataLoader`` over ``ArrayDataset.__getitem__``, per-image augmentation, no
workers) and ``make_loaders(loader="batch")`` (:class:`~prunekit.data.batches.BatchLoader`), the two interleaved
``repeats`` times so a busy neighbour slows both alike; the median pass is reported. Nothing trains: this is the
time the training loop waits for data. The one-time decode (CIFAR-10 JPEGs → ``.npz``) is done before timing and
reported on its own.

Step time: forward + backward + SGD step of ResNet-20 at batch 128 on synthetic 32×32 input, NCHW and
channels_last steps interleaved, median of ``steps`` each (the issue's measure: 587 ms vs 390 ms at 2 threads on
a quiet machine).

The thread count is the preset's ``threads`` (1 by default: other work shares this CPU); re-measure on a quiet
machine with ``--set threads=2``.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from prunekit.bench import md_table, shared_data_root, write_report
from prunekit.data import make_loaders
from prunekit.errors import ConfigError
from prunekit.models import create_model

logger = logging.getLogger(__name__)

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"datasets": ("cifar10", "fashion-mnist"), "batch_size": 128, "repeats": 2, "model": "resnet20",
              "steps": 6, "threads": 1, "limit": None},
    "full": {"datasets": ("cifar10", "fashion-mnist"), "batch_size": 128, "repeats": 5, "model": "resnet20",
             "steps": 15, "threads": 1, "limit": None},
}


def _preset(suite: str, presets: dict[str, dict[str, Any]], name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Preset ``name`` with ``overrides`` on top (ConfigError naming an unknown preset or field)."""
    if name not in presets:
        raise ConfigError(f"preset must be one of {', '.join(presets)}, got {name!r}")
    unknown = set(overrides) - set(presets[name])
    if unknown:
        raise ConfigError(f"bench {suite} has no preset field {', '.join(sorted(unknown))}; "
                          f"fields: {', '.join(presets[name])}")
    return {**presets[name], **overrides}


def _pass(loader: Any) -> tuple[float, int]:
    """Seconds to draw every batch of ``loader`` once, and the images drawn."""
    t0 = time.perf_counter()
    n = 0
    for x, _ in loader:
        n += x.shape[0]
    return time.perf_counter() - t0, n


def data_times(dataset: str, batch_size: int, repeats: int, root: str | None = None,
               limit: int | None = None) -> dict[str, Any]:
    """Median seconds per train epoch and per val + test pass of the ``torch`` and ``batch`` loaders (``limit``:
    at most that many images per split)."""
    t0 = time.perf_counter()
    kinds = {k: make_loaders(dataset, batch_size, root, loader=k, limit=limit) for k in ("torch", "batch")}
    load_s = time.perf_counter() - t0
    out: dict[str, Any] = {"load_s": load_s, "train_images": len(kinds["batch"].train.dataset)}
    samples: dict[str, dict[str, list[float]]] = {k: {"train": [], "eval": []} for k in kinds}
    for _ in range(repeats):
        for kind, loaders in kinds.items():
            samples[kind]["train"].append(_pass(loaders.train)[0])
            samples[kind]["eval"].append(_pass(loaders.val)[0] + _pass(loaders.test)[0])
    for kind in kinds:
        out[kind] = {part: statistics.median(v) for part, v in samples[kind].items()}
    out["train_speedup"] = out["torch"]["train"] / max(out["batch"]["train"], 1e-9)
    out["eval_speedup"] = out["torch"]["eval"] / max(out["batch"]["eval"], 1e-9)
    return out


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    return time.perf_counter() - t0


def step_times(model_name: str, batch_size: int, steps: int) -> dict[str, float]:
    """Median training step (ms) of ``model_name`` in NCHW and in channels_last, interleaved."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch_size,), generator=g)
    torch.manual_seed(0)
    nchw = create_model(model_name, num_classes=10).train()
    torch.manual_seed(0)
    cl = create_model(model_name, num_classes=10).train().to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    opt_a = torch.optim.SGD(nchw.parameters(), lr=0.01, momentum=0.9)
    opt_b = torch.optim.SGD(cl.parameters(), lr=0.01, momentum=0.9)
    for _ in range(2):  # warm-up: oneDNN primitive caches, allocator
        _step(nchw, opt_a, x, y)
        _step(cl, opt_b, x_cl, y)
    ta, tb = [], []
    for _ in range(steps):
        ta.append(_step(nchw, opt_a, x, y))
        tb.append(_step(cl, opt_b, x_cl, y))
    a, b = statistics.median(ta) * 1e3, statistics.median(tb) * 1e3
    return {"nchw_ms": a, "channels_last_ms": b, "speedup": a / b,
            "nchw_img_s": batch_size / a * 1e3, "channels_last_img_s": batch_size / b * 1e3}


def bench_data(out_dir: str | Path, preset: str = "quick", **overrides: Any) -> dict[str, Any]:
    """Measure data time per epoch (per-image vs batch loader) and step time (NCHW vs channels_last); write
    ``data.json`` / ``data.md``.

    Args:
        preset: ``quick`` or ``full``.
        **overrides: preset fields (``datasets``, ``batch_size``, ``repeats``, ``model``, ``steps``, ``threads``,
            ``limit``: at most this many images per split, None: all).
    """
    p = _preset("data", PRESETS, preset, overrides)
    if isinstance(p["datasets"], str):
        p["datasets"] = tuple(d.strip() for d in p["datasets"].split(",") if d.strip())
    for key in ("batch_size", "repeats", "steps", "threads"):
        if not isinstance(p[key], int) or p[key] < 1:
            raise ConfigError(f"{key} must be an integer >= 1, got {p[key]!r}")
    threads = torch.get_num_threads()
    torch.set_num_threads(p["threads"])
    try:
        root = shared_data_root()
        data: dict[str, Any] = {}
        for name in p["datasets"]:
            logger.info("bench data: %s", name)
            try:
                data[name] = data_times(name, p["batch_size"], p["repeats"], root, p["limit"])
            except Exception as e:  # noqa: BLE001 - a dataset missing on this machine is a row, not a crash
                data[name] = {"error": f"{type(e).__name__}: {e}"}
        step = step_times(p["model"], p["batch_size"], p["steps"])
    finally:
        torch.set_num_threads(threads)
    rows = []
    for name, r in data.items():
        if "error" in r:
            rows.append([name, None, None, None, None, None, None, r["error"][:80]])
            continue
        rows.append([name, r["train_images"], r["torch"]["train"], r["batch"]["train"], r["train_speedup"],
                     r["torch"]["eval"], r["batch"]["eval"], f"{r['load_s']:.1f} s load"])
    md = (f"# data ({preset})\n\nData time per epoch (s, median of {p['repeats']} interleaved passes, batch "
          f"{p['batch_size']}, {p['threads']} thread(s)): `torch` = DataLoader over per-image augmentation, `batch` = "
          "BatchLoader (whole-batch tensor augmentation). Eval = one pass over val + test.\n\n"
          + md_table(["dataset", "train images", "torch train s", "batch train s", "speed-up", "torch eval s",
                      "batch eval s", "note"], rows)
          + f"\nTraining step of {p['model']} (fwd+bwd+SGD), batch {p['batch_size']}, synthetic 32×32, median of "
          f"{p['steps']} interleaved steps, {p['threads']} thread(s):\n\n"
          + md_table(["layout", "ms/step", "img/s"], [["NCHW", step["nchw_ms"], step["nchw_img_s"]],
                                                      ["channels_last", step["channels_last_ms"],
                                                       step["channels_last_img_s"]]])
          + f"\nchannels_last speed-up: {step['speedup']:.2f}×\n")
    return write_report(out_dir, "data", {"preset": preset, "params": p, "data": data, "step": step}, md)


# -- the recipe's pieces ------------------------------------------------------------------------------------------
#: piece -> TrainConfig values on top of the defaults; "fast" is the whole recipe
PIECES: dict[str, dict[str, Any]] = {
    "baseline": {},
    "label_smoothing": {"label_smoothing": 0.1},
    "linear": {"schedule": "linear", "warmup_epochs": 0.3},
    "batch256": {"batch_size": 256, "lr": 0.2},
    "channels_last": {"channels_last": True},
    "fast": {},  # filled from the registered recipe when run
}

RECIPE_PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"dataset": "fashion-mnist", "model": "resnet20", "limit": 10000, "epochs": 2, "threads": 1,
              "pieces": tuple(PIECES), "seeds": (0,)},
    "full": {"dataset": "fashion-mnist", "model": "resnet20", "limit": 10000, "epochs": 3, "threads": 2,
             "pieces": tuple(PIECES), "seeds": (0, 1)},
}


def bench_recipe(out_dir: str | Path, preset: str = "quick", **overrides: Any) -> dict[str, Any]:
    """Train ``model`` on a ``limit``-image subset of ``dataset`` for ``epochs`` with each piece of the ``fast``
    recipe alone and all together; write ``recipe.json`` / ``recipe.md`` (val/test accuracy, train time, img/s).

    Args:
        preset: ``quick`` (2 epochs, 1 thread, seed 0) or ``full`` (3 epochs, 2 threads, seeds 0 and 1).
        **overrides: preset fields (``pieces``, ``seeds``, ``epochs``, ``limit``, ``threads``, ...).
    """
    from prunekit.train.config import RunConfig, TrainConfig
    from prunekit.train.experiment import run_experiment
    from prunekit.train.recipe import get_recipe

    p = _preset("recipe", RECIPE_PRESETS, preset, overrides)
    pieces = {**PIECES, "fast": dict(get_recipe("fast").train)}
    bad = [x for x in p["pieces"] if x not in pieces]
    if bad:
        raise ConfigError(f"pieces must be among {', '.join(pieces)}, got {', '.join(bad)}")
    runs: dict[str, Any] = {}
    rows = []
    for piece in p["pieces"]:
        for seed in p["seeds"]:
            train = TrainConfig(**{"epochs": p["epochs"], "seed": seed, "num_threads": p["threads"], "device": "cpu",
                                   "log_every": 50, **pieces[piece]})
            cfg = RunConfig(model=p["model"], dataset=p["dataset"], train=train, data_root=shared_data_root(),
                            data_options={"limit": p["limit"]}, name=f"recipe/{piece}/{seed}")
            logger.info("bench recipe: %s seed %d", piece, seed)
            r = run_experiment(cfg)
            m = r["metrics"]
            runs[f"{piece}/{seed}"] = {"piece": piece, "seed": seed, "train": pieces[piece],
                                       "acc_val": m.get("acc/val"), "acc_test": m.get("acc/test"),
                                       "train_time_s": r["train_time_s"], "throughput": r["throughput"]}
            rows.append([piece, seed, ", ".join(f"{k}={v}" for k, v in pieces[piece].items()) or "(defaults)",
                         m.get("acc/val"), m.get("acc/test"), r["train_time_s"], r["throughput"]])
    md = (f"# recipe ({preset})\n\n{p['model']} on {p['limit']} {p['dataset']} images, {p['epochs']} epochs, "
          f"{p['threads']} thread(s): each piece of the `fast` recipe alone on top of TrainConfig's defaults, and the "
          "whole recipe.\n\n"
          + md_table(["piece", "seed", "values", "acc/val", "acc/test", "train s", "img/s"], rows))
    return write_report(out_dir, "recipe", {"preset": preset, "params": p, "runs": runs}, md)
