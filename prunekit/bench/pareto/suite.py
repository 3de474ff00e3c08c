"""Running ``bench pareto`` and ``bench latency``: train, collapse and measure every method at every target."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from prunekit.augment import GatedModel
from prunekit.bench import error_reason, write_report
from prunekit.bench.pareto.journal import grid_variants, journal, open_journal
from prunekit.bench.pareto.preset import (
    BN_SUFFIX,
    PRESETS,
    TP_PRUNERS,
    ParetoPreset,
    is_post_hoc,
    is_targeted,
    known_methods,
)
from prunekit.bench.pareto.report import latency_markdown, latency_rows, pareto_markdown, summarize
from prunekit.bench.pareto.targets import l2_prune_to_macs
from prunekit.bench.plot import write_pareto_plots
from prunekit.bench.torch_pruning import run_tp_experiment
from prunekit.bn import recalibrate_bn_
from prunekit.collapse import collapse
from prunekit.cost import count_macs, count_params
from prunekit.data import make_loaders
from prunekit.errors import ConfigError, DataNotFoundError
from prunekit.latency import measure_latency, measure_latency_interleaved
from prunekit.methods import method_class
from prunekit.models import create_model
from prunekit.train.config import RunConfig, TrainConfig
from prunekit.train.evaluate import evaluate
from prunekit.train.experiment import run_experiment

logger = logging.getLogger(__name__)


def _data_root() -> str | None:
    """``../shared/data`` beside the repository when present (the CIFAR-10 JPEG tar), else the default search."""
    path = (Path(__file__).resolve().parents[3] / ".." / "shared" / "data").resolve()
    return str(path) if path.is_dir() else None


def _run_config(p: ParetoPreset, dataset: str, method: str, options: dict[str, Any], seed: int) -> Any:
    common = dict(epochs=p.epochs, batch_size=p.batch_size, seed=seed, max_steps_per_epoch=p.max_steps_per_epoch,
                  device=p.device, num_threads=p.num_threads, log_every=50)
    if method == "sdprun":
        train = TrainConfig(lr=p.sdprun_lr, optimizer="sdprun", momentum=0.0, weight_decay=0.0, **common)
    else:
        train = TrainConfig(lr=p.lr, **common)
    data_options = {"limit": p.limit} if p.limit is not None else {}
    tp = method in TP_PRUNERS  # a Torch-Pruning row trains "dense"; its options go to run_tp_experiment
    return RunConfig(model=p.model, dataset=dataset, method="dense" if tp else method,
                     method_options={} if tp else options, train=train, data_root=_data_root(),
                     data_options=data_options)


# -- one run -------------------------------------------------------------------------------------------------
def _measure(slim: torch.nn.Module, x: torch.Tensor, p: ParetoPreset) -> dict[str, Any]:
    lat = measure_latency(slim, x, p.latency_batch_sizes, device="cpu", warmup=2, repeats=p.latency_repeats,
                          min_seconds=p.latency_min_seconds, threads=p.latency_threads)
    slim.to(x.device)
    return {"macs": count_macs(slim, x), "params": count_params(slim), "latency_source": "inline",
            **{f"latency_ms_b{b}": v for b, v in lat.items()}, **{f"latency_inline_ms_b{b}": v for b, v in lat.items()}}


Nets = dict[str, dict[tuple, torch.nn.Module]]  # dataset -> (method, seed, variant, target) -> slim network


def _interleaved_latency(rows: list[dict[str, Any]], nets: Nets, xs: dict[str, torch.Tensor], p: ParetoPreset) -> None:
    """Re-time every kept network of a dataset interleaved; the rows' ``latency_ms_b*`` become those medians."""
    for dataset, kept in nets.items():
        logger.info("bench pareto: timing %d %s networks interleaved", len(kept), dataset)
        lat = measure_latency_interleaved(kept, xs[dataset].cpu(), p.latency_batch_sizes, device="cpu",
                                          rounds=p.latency_rounds, repeats=1, threads=p.latency_threads)
        for r in rows:
            key = (r["method"], r["seed"], r.get("variant", 0), r["target"])
            if r["dataset"] == dataset and "error" not in r and key in lat:
                r.update({f"latency_ms_b{b}": v for b, v in lat[key].items()}, latency_source="interleaved")


def _slim(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.nn.Module, float | None]:
    if isinstance(model, GatedModel):
        slim = collapse(model, x)
        return slim.eval(), float(slim.pk_collapse["max_diff"])
    return model.eval(), None


def _loaders(cfg: Any) -> Any:
    t = cfg.train
    return make_loaders(cfg.dataset, t.batch_size, cfg.data_root, seed=t.seed, val_fraction=cfg.val_fraction,
                        **cfg.data_options)


def _evaluate(model: torch.nn.Module, loaders: Any) -> dict[str, float]:
    return {f"acc/{s}": evaluate(model, getattr(loaders, s), "classification", "cpu")["acc"] for s in ("val", "test")}


def _train(p: ParetoPreset, dataset: str, method: str, options: dict[str, Any], seed: int,
           target: float | None) -> tuple[torch.nn.Module, dict[str, Any], Any]:
    cfg = _run_config(p, dataset, method, options, seed)
    if method in TP_PRUNERS:
        result = run_tp_experiment(cfg, TP_PRUNERS[method], float(target), **options)
    else:
        result = run_experiment(cfg)
    model = result.pop("model").cpu().eval()
    return model, result, cfg


def _rows_for(p: ParetoPreset, dataset: str, method: str, seed: int, dense_macs: int, x: torch.Tensor,
              info: dict[str, Any], nets: dict[tuple, torch.nn.Module]) -> list[dict[str, Any]]:
    """Every row (targets × option variants) of one method on one dataset and seed; networks go into ``nets``."""
    rows = []
    targets: list[float | None] = [None] if method == "dense" else list(p.targets)
    for variant, options in enumerate(grid_variants(p.grid, method)):
        if is_post_hoc(method):
            t0 = time.perf_counter()
            model, result, cfg = _train(p, dataset, method, options, seed, None)
            train_s = time.perf_counter() - t0
            loaders = _loaders(cfg)
            for t in targets:
                t1 = time.perf_counter()
                slim, frac = l2_prune_to_macs(model, x, int(t * dense_macs))
                measured = _measure(slim, x, p)
                # the papers' protocol as is, then the same network with its BatchNorm statistics re-estimated
                for name in (method, f"{method}{BN_SUFFIX}"):
                    if name != method:
                        recalibrate_bn_(slim, loaders.train, p.bn_batches, "cpu")
                        slim.eval()
                    acc = _evaluate(slim, loaders)
                    rows.append({"method": name, "options": options, "target": t, "acc_val": acc["acc/val"],
                                 "acc_test": acc["acc/test"], "fraction_removed": frac, "train_s": train_s,
                                 "wall_s": train_s + time.perf_counter() - t1, "variant": variant, **measured})
                    nets[(name, seed, variant, t)] = slim
            continue
        for t in targets:
            t0 = time.perf_counter()
            opts = dict(options)
            if is_targeted(method):
                opts.update(method_class(method).target_options(float(t)))
            model, result, _ = _train(p, dataset, method, opts, seed, t)
            slim, max_diff = _slim(model, x)
            m = result["metrics"]
            row = {"options": opts, "target": t, "acc_val": m.get("acc/val"), "acc_test": m.get("acc/test"),
                   "collapse_max_diff": max_diff, "train_s": result.get("train_time_s"),
                   "wall_s": time.perf_counter() - t0, "variant": variant, **_measure(slim, x, p)}
            report = result.get("method_report") or {}
            for key in ("relaxation_macs_ratio", "calibration_flips", "mask_moved"):  # what the method decided itself
                if key in report:
                    row[key] = report[key]
            if "tp" in result:
                row["tp_prune_steps"] = result["tp"].get("steps")
            rows.append(row)
            nets[(method, seed, variant, t)] = slim
    for r in rows:
        r.setdefault("method", method)
        r.update(dataset=dataset, seed=seed, macs_ratio=r["macs"] / dense_macs)
    return rows


def _guarded_rows(p: ParetoPreset, dataset: str, method: str, seed: int, dense_macs: int, x: torch.Tensor,
                  info: dict[str, Any], nets: dict[tuple, torch.nn.Module]) -> list[dict[str, Any]]:
    try:
        return _rows_for(p, dataset, method, seed, dense_macs, x, info, nets)
    except Exception as e:  # noqa: BLE001 - a method that fails is a result, reported with its reason
        logger.exception("bench pareto: %s on %s failed", method, dataset)
        return [{"dataset": dataset, "method": method, "seed": seed, "target": t,
                 "error": error_reason(e)}
                for t in ([None] if method == "dense" else p.targets)]


# -- the suite ------------------------------------------------------------------------------------------------
def _dataset_setup(p: ParetoPreset, dataset: str) -> tuple[torch.Tensor, dict[str, Any]]:
    loaders = make_loaders(dataset, p.batch_size, _data_root(), seed=p.seeds[0],
                           **({"limit": p.limit} if p.limit is not None else {}))
    info = loaders.info
    x = loaders.test.dataset[0][0].unsqueeze(0)
    model = create_model(p.model, num_classes=info.num_classes, in_channels=info.in_channels)
    return x, {"model": model, "num_classes": info.num_classes, "in_channels": info.in_channels}


def bench_pareto(out_dir: str | Path, preset: str = "smoke", *, methods: tuple[str, ...] | None = None,
                 datasets: tuple[str, ...] | None = None, seeds: tuple[int, ...] | None = None,
                 plots: bool = True, resume: bool = False, **overrides: Any) -> dict[str, Any]:
    """Train, collapse and measure every method at every target; write pareto and latency reports.

    Args:
        out_dir: results folder: ``pareto.json/.md``, ``latency.json/.md`` and the plots.
        preset: ``smoke``, ``hour`` or ``paper`` (see ``PRESETS``).
        methods: override the preset's methods (``dense`` is always added: the reference).
        datasets: override the preset's datasets.
        seeds: override the preset's seeds (mean ± std over them when more than one).
        plots: write the figures (``prunekit.bench.plot``).
        resume: reuse the trainings journalled in ``out_dir`` by an earlier call with the same budget (more
            seeds, methods or variants are trained and added).
        **overrides: further ``ParetoPreset`` fields (e.g. ``targets=(0.5,)``, ``limit=256``).

    Returns:
        ``{"preset", "settings", "counter", "rows" (every run), "summary" (selected, over seeds), "latency",
        "markdown"}`` plus the machine description.
    """
    if preset not in PRESETS:
        raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    changes = {k: tuple(v) for k, v in (("methods", methods), ("datasets", datasets), ("seeds", seeds)) if v}
    bad = set(overrides) - {f.name for f in dataclasses.fields(ParetoPreset)}
    if bad:
        raise ConfigError(f"unknown pareto settings: {', '.join(sorted(bad))}")
    p = dataclasses.replace(PRESETS[preset], **changes, **overrides)
    known = known_methods()
    unknown = [m for m in p.methods if m not in known]
    if unknown:
        raise ConfigError(f"methods must be among {', '.join(known)}, got {unknown}")
    if not p.seeds:
        raise ConfigError(f"seeds must not be empty, got {p.seeds}")
    for t in p.targets:
        if not 0 < t < 1:
            raise ConfigError(f"targets must be in (0, 1), got {t}")
    method_list = ("dense", *[m for m in p.methods if m != "dense"])
    settings = dataclasses.asdict(p)
    out_path = Path(out_dir)
    rows, done = open_journal(out_path, settings, resume)
    skipped: dict[str, str] = {}
    nets: Nets = {}
    xs: dict[str, torch.Tensor] = {}
    for dataset in p.datasets:
        try:
            x, info = _dataset_setup(p, dataset)
        except DataNotFoundError as e:
            skipped[dataset] = str(e).splitlines()[0]
            logger.warning("bench pareto: skipping %s: %s", dataset, skipped[dataset])
            continue
        xs[dataset] = x
        dense_macs = count_macs(info["model"], x)
        for seed in p.seeds:
            for method in method_list:
                if (dataset, method, seed) in done:
                    continue
                logger.info("bench pareto: %s on %s, seed %d", method, dataset, seed)
                new = _guarded_rows(p, dataset, method, seed, dense_macs, x, info, nets.setdefault(dataset, {}))
                journal(out_path, dataset, method, seed, grid_variants(p.grid, method), new)
                rows += new
    _interleaved_latency(rows, nets, xs, p)
    summary = summarize(rows)
    lat = latency_rows(summary)
    md = pareto_markdown(summary, p, preset)
    if skipped:
        md += "\nSkipped datasets: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()) + "\n"
    lat_md = latency_markdown(lat, summary, p, preset)
    counter = "torch.utils.flop_counter FLOPs / 2 per sample (conv/linear multiply-adds)"
    result = {"preset": preset, "settings": settings, "counter": counter, "rows": rows, "summary": summary,
              "latency": lat, "skipped": skipped}
    out = write_report(out_dir, "pareto", result, md)
    write_report(out_dir, "latency", {"preset": preset, "settings": settings, "rows": lat}, lat_md)
    if plots:
        out["plots"] = [str(f) for f in write_pareto_plots(summary, out_dir, title=f"{p.model} ({preset})", model=p.model)]
    return out


def bench_latency(out_dir: str | Path, preset: str = "smoke") -> dict[str, Any]:
    """Suite 4 alone: the latency table of an existing ``pareto.json`` in ``out_dir`` (else runs the pareto suite)."""
    path = Path(out_dir) / "pareto.json"
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("preset") == preset:
            p = dataclasses.replace(PRESETS[preset], **{k: tuple(v) if isinstance(v, list) else v
                                                        for k, v in data["settings"].items() if k != "grid"})
            lat = latency_rows(data["summary"])
            return write_report(out_dir, "latency", {"preset": preset, "settings": data["settings"], "rows": lat},
                                latency_markdown(lat, data["summary"], p, preset))
    return {**bench_pareto(out_dir, preset), "markdown": (Path(out_dir) / "latency.md").read_text()}
