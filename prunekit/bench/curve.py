"""Benchmark: post-training pruning curves of ResNet-20 trained with plain SGD, Batch Bridgeout and sDprun.

Each model is trained with the same budget, then :func:`prunekit.curve.prune_curve` removes a fraction of the
filters (``rule="per_layer"``: the Bridgeout paper's per-conv-layer rule; ``"group"``: per coupled-channel
group), collapses the network, re-estimates its BatchNorm statistics on training batches (no weight change) and
evaluates it with no fine-tuning (METHODS.md sections 3 and 4). With ``stale_bn`` every variant also gets the
curve without re-estimation, with the statistics training left (for Bridgeout: gathered under noise). Results
go to ``curve.json`` and ``curve.md`` in ``out_dir``.

Presets: ``quick`` (about 2 minutes on 2 shared CPU cores: width-8 ResNet-20, 2,000 MNIST digits from
``../shared/data``, 2 epochs), ``fashion`` (the Bridgeout effect of issue 14: ResNet-20 at its default width 16
built by ``prunekit.run_experiment``, 2,000 Fashion-MNIST images (Debian's ``dataset-fashion-mnist``), 4 epochs
of batch 64, Bridgeout p = 0.2, q = 1.5; 2.5–3.5 min per training and ~1 min per curve on a shared 2-core CPU),
``quick-shapes`` (the ``quick`` budget on 16×16 ``shapes``: too short for ResNet-20 to learn shapes, kept to show
it) and ``full`` (width 16, 32×32 shapes, 8,000 samples, 30 epochs; for a GPU). Run
``python -m prunekit.bench.curve --preset fashion --variants sgd,bridgeout --out bench_out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from prunekit._device import resolve_device, torch_threads
from prunekit.curve import prune_curve
from prunekit.data import make_loaders
from prunekit.errors import ConfigError
from prunekit.methods import create_method
from prunekit.models import create_model
from prunekit.train.callbacks import Callback
from prunekit.train.config import RunConfig, TrainConfig
from prunekit.train.evaluate import evaluate
from prunekit.train.experiment import run_experiment
from prunekit.train.loop import Trainer
from prunekit.train.seed import seed_everything

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CurvePreset:
    """Budget of one benchmark run (the same for every training variant)."""

    dataset: str = "mnist"
    width: int | None = 8  # None: RunConfig/run_experiment with the model's default width (16)
    limit: int | None = 2000  # samples per split (seeded subset); None: the whole split
    data_options: tuple[tuple[str, Any], ...] = ()  # dataset options, e.g. (("num_samples", 1500),)
    epochs: int = 2
    batch_size: int = 64
    lr: float = 0.1  # SGD and Bridgeout: Nesterov 0.9, weight decay 5e-4 (the Bridgeout paper's protocol)
    sdprun_lr: float = 0.05  # the sDprun paper recommends <= 0.05
    sdprun_c: float = 1e-3
    sdprun_mu: float = 0.51
    bridgeout_p: float = 0.3
    bridgeout_q: float = 1.5
    fractions: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    rules: tuple[str, ...] = ("per_layer", "group")  # prune_curve rules, each measured
    bn_batches: int | None = 50  # training batches for every point's BN re-estimation (None: the whole loader)
    stale_bn: bool = True  # also measure every rule without re-estimation (statistics as training left them)
    latency_repeats: int = 10
    num_threads: int | None = 1  # tiny models on a shared CPU: more intra-op threads only add contention
    seed: int = 0


PRESETS: dict[str, CurvePreset] = {
    # MNIST from ../shared/data: a width-8 ResNet-20 learns it in ~60 steps, so the curves mean something.
    "quick": CurvePreset(),
    # Issue 14's Bridgeout effect: with BN re-estimated, Bridgeout keeps more accuracy than SGD at 40 and 60 %
    # removed (seeds 0 and 1, per-layer and group rules). p = 0.2, not the paper's 0.3: at this 128-step budget
    # p = 0.3 leaves the net undertrained (59.8 % unpruned vs SGD's 80.1 %, seed 0) and it falls below SGD at 40 %
    # (41.4 vs 48.0 %, per-layer), though not at 60 % (33.5 vs 25.3 %); p = 0.1 learns (73.9 %) but loses its
    # edge at 60 % (24.6 %). The paper trains ~100x longer.
    "fashion": CurvePreset(dataset="fashion-mnist", width=None, limit=2000, epochs=4, batch_size=64,
                           bridgeout_p=0.2, fractions=(0.0, 0.2, 0.4, 0.6), latency_repeats=1),
    # The procedural default data; at this budget ResNet-20 stays near chance on shapes (see the issue note).
    "quick-shapes": CurvePreset(dataset="shapes", limit=None, epochs=4,
                                data_options=(("num_samples", 1500), ("num_test", 500), ("image_size", 16))),
    "full": CurvePreset(dataset="shapes", width=16, limit=None, epochs=30, batch_size=128, latency_repeats=50,
                        num_threads=None),
}

VARIANTS = ("sgd", "bridgeout", "sdprun")


def _data_root() -> str | None:
    """``../shared/data`` beside the repository when present (real MNIST/CIFAR files), else the default."""
    path = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
    return str(path) if path.is_dir() else None


class _BNSnapshot(Callback):
    """Callback keeping the BatchNorm buffers as training left them (before finalize and any re-estimation)."""

    def __init__(self) -> None:
        self.buffers: dict[str, dict[str, torch.Tensor]] = {}

    def on_epoch_end(self, trainer: Any, logs: dict[str, float]) -> None:
        self.buffers = {n: {k: v.detach().clone() for k, v in m.named_buffers()}
                        for n, m in trainer.model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}

    def restore(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of ``model`` carrying the snapshot's BatchNorm buffers."""
        import copy

        twin = copy.deepcopy(model)
        mods = dict(twin.named_modules())
        with torch.no_grad():
            for n, bufs in self.buffers.items():
                for k, v in bufs.items():
                    getattr(mods[n], k).copy_(v)
        return twin


def _method_and_train(variant: str, preset: CurvePreset, device: str) -> tuple[str, dict[str, Any], Any]:
    common = dict(epochs=preset.epochs, batch_size=preset.batch_size, seed=preset.seed, device=device, log_every=50)
    if variant == "sgd":
        return "dense", {}, TrainConfig(lr=preset.lr, momentum=0.9, nesterov=True, weight_decay=5e-4, **common)
    if variant == "bridgeout":
        return ("bridgeout", {"p": preset.bridgeout_p, "q": preset.bridgeout_q, "seed": preset.seed},
                TrainConfig(lr=preset.lr, momentum=0.9, nesterov=True, weight_decay=5e-4, **common))
    if variant == "sdprun":
        # the paper's fixed c (no target controller): this suite measures how L2-prunable the trained net is
        return ("sdprun", {"c": preset.sdprun_c, "mu": preset.sdprun_mu, "target_macs": None},
                TrainConfig(lr=preset.sdprun_lr, optimizer="sdprun", momentum=0.0, weight_decay=0.0, **common))
    raise ConfigError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")


def _train(variant: str, preset: CurvePreset, device: str) -> tuple[torch.nn.Module, Any, dict[str, Any], _BNSnapshot]:
    name, options, cfg = _method_and_train(variant, preset, device)
    snap = _BNSnapshot()
    data_options = {**dict(preset.data_options), **({"limit": preset.limit} if preset.limit is not None else {})}
    if preset.width is None:  # the public path: RunConfig -> run_experiment (the model's default width)
        run = RunConfig(model="resnet20", dataset=preset.dataset, method=name, method_options=options, train=cfg,
                        data_root=_data_root(), data_options=data_options)
        result = run_experiment(run, callbacks=[snap])
        model = result.pop("model")
        loaders = make_loaders(preset.dataset, preset.batch_size, _data_root(), seed=preset.seed,
                               val_fraction=run.val_fraction, **data_options)
        test_acc, optimizer = result["metrics"]["acc/test"], None
        method_report = result.get("method_report") or {}
    else:
        seed_everything(preset.seed)
        loaders = make_loaders(preset.dataset, preset.batch_size, _data_root(), seed=preset.seed, val_fraction=0.1,
                               **data_options)
        info = loaders.info
        model = create_model("resnet20", num_classes=info.num_classes, in_channels=info.in_channels,
                             width=preset.width)
        method = create_method(name, **options)
        example = torch.stack([loaders.train.dataset[i][0] for i in range(2)])
        model = method.prepare(model, example)
        trainer = Trainer(model, loaders, cfg, method, callbacks=[snap])
        result = trainer.fit()
        model, optimizer = trainer.model, trainer.optimizer
        test_acc = evaluate(model, loaders.test, "classification", trainer.device)["acc"]
        method_report = dict(getattr(method, "report", None) or {})
    summary = {
        "acc/test": test_acc,
        "acc/val": result["metrics"].get("acc/val"),
        "train_time_s": result["train_time_s"],
        "steps": result["steps"],
        "optimizer": cfg.optimizer,
        "lr": cfg.lr,
        "method": name,
        "method_config": options,
        "method_report": {k: v for k, v in method_report.items() if isinstance(v, (bool, int, float, str))},
    }
    if variant == "sdprun" and optimizer is not None and hasattr(optimizer, "zero_groups"):
        summary["zero_structures"] = int(sum(v.numel() for v in optimizer.zero_groups().values()))
        summary["sparsity"] = optimizer.sparsity()
    return model, loaders, summary, snap


def curve_key(rule: str, bn: bool) -> str:
    """Name of one measured curve: ``"<rule>+bn"`` (BN re-estimated) or ``"<rule>"`` (statistics as trained)."""
    return f"{rule}+bn" if bn else rule


def _run_variant(variant: str, cfg: CurvePreset, dev: str) -> dict[str, Any]:
    t = time.perf_counter()
    model, loaders, summary, snap = _train(variant, cfg, dev)
    logger.info("bench curve: %s trained, test acc %.4f", variant, summary["acc/test"])
    summary["train_seconds"] = time.perf_counter() - t
    example = loaders.test.dataset[0][0].unsqueeze(0)
    as_trained = snap.restore(model) if snap.buffers else model
    curves = {}
    for rule in cfg.rules:
        for bn in (True, False) if cfg.stale_bn else (True,):
            df = prune_curve(as_trained if not bn else model, loaders.test, fractions=cfg.fractions,
                             example_input=example, device=dev, latency_repeats=cfg.latency_repeats, rule=rule,
                             recalibrate_bn=bn, bn_loader=loaders.train, bn_batches=cfg.bn_batches)
            curves[curve_key(rule, bn)] = df.to_dict(orient="records")
    summary["seconds"] = time.perf_counter() - t
    first = next(iter(curves.values()))
    return {"train": summary, "curves": curves, "curve": first}


def bench_curve(
    out_dir: str | Path,
    preset: str | CurvePreset = "quick",
    *,
    variants: tuple[str, ...] = VARIANTS,
    device: str = "auto",
) -> dict[str, Any]:
    """Train every variant with the preset's budget, measure its pruning curve, write JSON and markdown.

    Args:
        out_dir: folder for ``curve.json`` and ``curve.md`` (created).
        preset: ``"quick"`` (MNIST), ``"fashion"`` (Fashion-MNIST), ``"quick-shapes"``, ``"full"`` (shapes) or a
            :class:`CurvePreset`.
        variants: subset of ``("sgd", "bridgeout", "sdprun")``.
        device: where to train and evaluate (latency is measured there too).

    Returns:
        ``{"preset", "config", "device", "runs": {variant: {"train": {...}, "curves": {key: [row, ...]},
        "curve": the first curve}}, "seconds", "markdown"}``; keys as :func:`curve_key` (``"per_layer+bn"``,
        ``"per_layer"``, ``"group+bn"``, ...), rows as :func:`prunekit.curve.prune_curve` columns.
    """
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        name, cfg = preset, PRESETS[preset]
    else:
        name, cfg = "custom", preset
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ConfigError(f"variants must be among {', '.join(VARIANTS)}, got {bad}")
    dev = str(resolve_device(device))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runs: dict[str, Any] = {}
    with torch_threads(cfg.num_threads):
        for variant in variants:
            runs[variant] = _run_variant(variant, cfg, dev)
    report = {
        "preset": name,
        "config": dataclasses.asdict(cfg),
        "device": dev,
        "torch": torch.__version__,
        "runs": runs,
        "seconds": time.perf_counter() - t0,
    }
    report["markdown"] = curve_markdown(report)
    (out / "curve.json").write_text(json.dumps(report, indent=2, default=float))
    (out / "curve.md").write_text(report["markdown"])
    return report


def curve_markdown(report: dict[str, Any]) -> str:
    """Markdown: one table per measured curve (rule, BN re-estimated or not), a row per fraction, accuracy and MACs
    kept per variant; then one line per variant's training."""
    runs = report["runs"]
    names = list(runs)
    lines = [
        f"Pruning curves without fine-tuning (preset {report['preset']}, device {report['device']}; "
        "MACs per sample, convs and linears only; `+bn`: BatchNorm statistics re-estimated on training batches "
        "after pruning, no weight change)",
        "",
    ]
    keys = list(runs[names[0]].get("curves", {"curve": None})) if names else []  # old reports: one "curve"
    for key in keys:
        lines += [f"**{key}**", "", "| filters pruned | " + " | ".join(f"{n} acc | {n} MACs kept" for n in names) + " |",
                  "| --- |" + " --- | --- |" * len(names)]
        rows = {n: runs[n].get("curves", {}).get(key) or runs[n]["curve"] for n in names}
        for i, row0 in enumerate(rows[names[0]]):
            cells = [f"{100 * rows[n][i]['accuracy']:.1f}% | {100 * rows[n][i]['macs_ratio']:.1f}%" for n in names]
            lines.append(f"| {100 * row0['fraction']:.0f}% | " + " | ".join(cells) + " |")
        lines.append("")
    for n in names:
        tr = runs[n]["train"]
        extra = f", zero structures at the end {tr['zero_structures']}" if "zero_structures" in tr else ""
        lines.append(f"- {n}: test acc {100 * tr['acc/test']:.1f}% after {tr['steps']} steps "
                     f"({tr['optimizer']}, lr {tr['lr']}){extra}; {tr.get('train_seconds', tr['seconds']):.0f} s "
                     f"training, {tr['seconds']:.0f} s with the curves")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prunekit bench curve", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick", choices=sorted(PRESETS))
    parser.add_argument("--out", default="bench_out/curve")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    args = parser.parse_args(argv)
    report = bench_curve(args.out, args.preset, variants=tuple(v for v in args.variants.split(",") if v),
                         device=args.device)
    sys.stdout.write(report["markdown"] + f"\nwrote {Path(args.out) / 'curve.json'} in {report['seconds']:.0f} s\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
