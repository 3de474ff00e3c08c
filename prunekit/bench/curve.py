"""Benchmark: post-training pruning curves of ResNet-20 trained with plain SGD, Batch Bridgeout and sDprun.

Each model is trained on the procedural ``shapes`` data with the same budget, then
:func:`prunekit.curve.prune_curve` removes 0 … 90% of the filters of every coupled-channel group by L2 norm,
collapses the network and evaluates it with no fine-tuning (METHODS.md sections 3 and 4). Results go to
``curve.json`` and ``curve.md`` in ``out_dir``.

Presets: ``quick`` (about 2 minutes on 2 shared CPU cores: width-8 ResNet-20, 2,000 MNIST digits from
``../shared/data``, 2 epochs), ``quick-shapes`` (the same budget on 16×16 ``shapes``: too short for ResNet-20 to
learn shapes, kept to show it) and ``full`` (width 16, 32×32 shapes, 8,000 samples, 30 epochs; for a GPU).
Run ``python -m prunekit.bench.curve --preset quick --out bench_out``.
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

from prunekit.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CurvePreset:
    """Budget of one benchmark run (the same for every training variant)."""

    dataset: str = "mnist"
    width: int = 8
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
    latency_repeats: int = 10
    num_threads: int | None = 1  # tiny models on a shared CPU: more intra-op threads only add contention
    seed: int = 0


PRESETS: dict[str, CurvePreset] = {
    # MNIST from ../shared/data: a width-8 ResNet-20 learns it in ~60 steps, so the curves mean something.
    "quick": CurvePreset(),
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


def _train(variant: str, preset: CurvePreset, device: str) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    from prunekit.data import make_loaders
    from prunekit.methods import create_method
    from prunekit.models import create_model
    from prunekit.train.config import TrainConfig
    from prunekit.train.evaluate import evaluate
    from prunekit.train.loop import Trainer
    from prunekit.train.seed import seed_everything

    seed_everything(preset.seed)
    loaders = make_loaders(preset.dataset, preset.batch_size, _data_root(), seed=preset.seed, val_fraction=0.1,
                           limit=preset.limit, **dict(preset.data_options))
    info = loaders.info
    model = create_model("resnet20", num_classes=info.num_classes, in_channels=info.in_channels, width=preset.width)
    common = dict(epochs=preset.epochs, batch_size=preset.batch_size, seed=preset.seed, device=device, log_every=50)
    if variant == "sgd":
        method = create_method("dense")
        cfg = TrainConfig(lr=preset.lr, momentum=0.9, nesterov=True, weight_decay=5e-4, **common)
    elif variant == "bridgeout":
        method = create_method("bridgeout", p=preset.bridgeout_p, q=preset.bridgeout_q, seed=preset.seed)
        cfg = TrainConfig(lr=preset.lr, momentum=0.9, nesterov=True, weight_decay=5e-4, **common)
    elif variant == "sdprun":
        method = create_method("sdprun", c=preset.sdprun_c, mu=preset.sdprun_mu)
        cfg = TrainConfig(lr=preset.sdprun_lr, optimizer="sdprun", momentum=0.0, weight_decay=0.0, **common)
    else:
        raise ConfigError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    example = torch.stack([loaders.train.dataset[i][0] for i in range(2)])
    model = method.prepare(model, example)
    trainer = Trainer(model, loaders, cfg, method)
    result = trainer.fit()
    model = trainer.model
    test = evaluate(model, loaders.test, "classification", trainer.device)
    summary = {
        "acc/test": test["acc"],
        "acc/val": result["metrics"].get("acc/val"),
        "train_time_s": result["train_time_s"],
        "steps": result["steps"],
        "optimizer": cfg.optimizer,
        "lr": cfg.lr,
        "method": method.name,
        "method_config": dataclasses.asdict(method.config),
    }
    if variant == "sdprun":
        opt = trainer.optimizer
        summary["zero_structures"] = int(sum(v.numel() for v in opt.zero_groups().values()))
        summary["sparsity"] = opt.sparsity()
    return model, loaders, summary


def _run_variant(variant: str, cfg: CurvePreset, dev: str) -> dict[str, Any]:
    from prunekit.curve import prune_curve

    t = time.perf_counter()
    model, loaders, summary = _train(variant, cfg, dev)
    logger.info("bench curve: %s trained, test acc %.4f", variant, summary["acc/test"])
    example = loaders.test.dataset[0][0].unsqueeze(0)
    df = prune_curve(model, loaders.test, fractions=cfg.fractions, example_input=example, device=dev,
                     latency_repeats=cfg.latency_repeats)
    summary["seconds"] = time.perf_counter() - t
    return {"train": summary, "curve": df.to_dict(orient="records")}


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
        preset: ``"quick"`` (MNIST), ``"quick-shapes"``, ``"full"`` (shapes) or a :class:`CurvePreset`.
        variants: subset of ``("sgd", "bridgeout", "sdprun")``.
        device: where to train and evaluate (latency is measured there too).

    Returns:
        ``{"preset", "config", "device", "runs": {variant: {"train": {...}, "curve": [row, ...]}},
        "seconds", "markdown"}``; rows as :func:`prunekit.curve.prune_curve` columns.
    """
    from prunekit._device import resolve_device, torch_threads

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
    """A markdown table: one row per fraction, accuracy and MACs kept per variant."""
    runs = report["runs"]
    names = list(runs)
    head = "| filters pruned per group | " + " | ".join(f"{n} acc | {n} MACs kept" for n in names) + " |"
    sep = "| --- |" + " --- | --- |" * len(names)
    lines = [
        f"Pruning curves without fine-tuning (preset {report['preset']}, device {report['device']}; "
        "MACs per sample, convs and linears only)",
        "",
        head,
        sep,
    ]
    fractions = [r["fraction"] for r in runs[names[0]]["curve"]] if names else []
    for i, f in enumerate(fractions):
        cells = []
        for n in names:
            row = runs[n]["curve"][i]
            cells.append(f"{100 * row['accuracy']:.1f}% | {100 * row['macs_ratio']:.1f}%")
        lines.append(f"| {100 * f:.0f}% | " + " | ".join(cells) + " |")
    lines.append("")
    for n in names:
        tr = runs[n]["train"]
        extra = f", zero structures at the end {tr['zero_structures']}" if "zero_structures" in tr else ""
        lines.append(f"- {n}: test acc {100 * tr['acc/test']:.1f}% after {tr['steps']} steps "
                     f"({tr['optimizer']}, lr {tr['lr']}){extra}; {tr['seconds']:.0f} s")
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
