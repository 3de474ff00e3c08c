"""The fixed budget of ``bench pareto``: which methods run, how each meets a target, and the presets."""

from __future__ import annotations

import dataclasses
from typing import Any

from prunekit.bench.torch_pruning import PRUNERS
from prunekit.methods import list_methods, method_class

BN_SUFFIX = "+bn"  # post-hoc rows whose BatchNorm statistics were re-estimated (prunekit.bn.recalibrate_bn_)
# Torch-Pruning prunes per layer or globally ranked: its better variant on validation is reported (the methods'
# own variants, e.g. L1/slimming pruning once or in stages and sDprun's constant lr, are their ``bench_variants``)
_TP_VARIANTS = ((), (("global_pruning", True),))

TP_PRUNERS = {f"tp-{name}": name for name in PRUNERS}  # bench method name -> Torch-Pruning pruner


def known_methods() -> tuple[str, ...]:
    """Every registered prunekit method (dense first) and the Torch-Pruning baselines: what ``--methods`` accepts."""
    return ("dense", *[m for m in list_methods() if m != "dense"], *TP_PRUNERS)


def is_targeted(method: str) -> bool:
    """Trained once per target through the method's target option (``Method.target_option``)."""
    return method in list_methods() and method_class(method).target_option is not None


def is_post_hoc(method: str) -> bool:
    """Trained once, then pruned to every target after training (``Method.post_hoc``)."""
    return method in list_methods() and method_class(method).post_hoc


def default_grid() -> tuple[tuple[str, tuple[tuple[tuple[str, Any], ...], ...]], ...]:
    """method -> option variants, chosen on validation accuracy: each method's ``bench_variants`` and TP's own."""
    grid = [(m, tuple(tuple(sorted(v.items())) for v in method_class(m).bench_variants)) for m in list_methods()
            if list(method_class(m).bench_variants) != [{}]]
    return (*grid, *((name, _TP_VARIANTS) for name in TP_PRUNERS))


METHODS = known_methods()  # the registered methods at import (a plugin registered later is accepted too)


@dataclasses.dataclass(frozen=True)
class ParetoPreset:
    """The fixed budget every method gets."""

    model: str = "resnet20"
    datasets: tuple[str, ...] = ("fashion-mnist", "cifar10")
    targets: tuple[float, ...] = (0.3, 0.5, 0.7)
    methods: tuple[str, ...] = METHODS
    epochs: int = 6
    batch_size: int = 128
    lr: float = 0.1
    max_steps_per_epoch: int | None = None
    limit: int | None = 4000  # samples per split (seeded subset); None: everything
    seeds: tuple[int, ...] = (0,)
    sdprun_lr: float = 0.05  # TrainConfig.lr of sDprun's runs (its classifier); its dual averaging takes the grid's lr
    grid: tuple[tuple[str, tuple[tuple[tuple[str, Any], ...], ...]], ...] = dataclasses.field(
        default_factory=default_grid)  # method -> option variants, chosen on validation accuracy
    latency_batch_sizes: tuple[int, ...] = (1, 32)
    latency_repeats: int = 10
    latency_min_seconds: float = 0.5  # keep timing at least this long per batch size (a shared CPU is noisy)
    latency_threads: int = 1
    bn_batches: int = 20  # training batches for the BN re-estimation of the post-hoc rows ("bridgeout+bn")
    latency_rounds: int = 7  # rounds of the final interleaved timing (each times every network once per batch)
    device: str = "cpu"
    num_threads: int | None = None  # training threads (None: torch's default)


PRESETS: dict[str, ParetoPreset] = {
    "smoke": ParetoPreset(targets=(0.5,), epochs=2, batch_size=64, lr=0.05, max_steps_per_epoch=4, limit=512,
                          latency_repeats=5, latency_rounds=3),
    "hour": ParetoPreset(),
    "paper": ParetoPreset(model="resnet56", datasets=("cifar10",), epochs=200, batch_size=128, lr=0.1, limit=None,
                          seeds=(0, 1, 2), device="auto", latency_repeats=50),
}
