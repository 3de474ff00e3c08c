"""The fixed budget of ``bench pareto``: which methods run, how each meets a target, and the presets."""

from __future__ import annotations

import dataclasses
from typing import Any

from prunekit.bench.torch_pruning import PRUNERS

METHODS = ("dense", "crisp", "growing", "dpp", "l0", "l1", "slimming", "bridgeout", "sdprun",
           "tp-groupnorm", "tp-magnitude")
BN_SUFFIX = "+bn"  # post-hoc rows whose BatchNorm statistics were re-estimated (prunekit.bn.recalibrate_bn_)
TARGETED = ("crisp", "growing", "l0", "l1", "slimming", "sdprun")  # take target_macs in their Config
POST_HOC = ("bridgeout",)  # trained once, L2-pruned to every target with no fine-tuning
# Torch-Pruning prunes per layer or globally ranked, L1 and slimming prune once or in stages (as Torch-Pruning's
# progressive schedule does): each side's better variant on validation is reported
_SCHEDULES = ((), (("mode", "iterative"),))
# sDprun's constant dual-averaging lr (method option ``lr``): plain dual averaging has no momentum, and at the
# paper's <= 0.05 it learns far slower than the momentum SGD of the other rows (prunekit.methods.sdprun's runs)
SDPRUN_LR = 0.3
_GRID = (
    ("l1", _SCHEDULES),
    ("slimming", _SCHEDULES),
    ("tp-groupnorm", ((), (("global_pruning", True),))),
    ("tp-magnitude", ((), (("global_pruning", True),))),
)

TP_PRUNERS = {f"tp-{name}": name for name in PRUNERS}  # bench method name -> Torch-Pruning pruner


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
    grid: tuple[tuple[str, tuple[tuple[tuple[str, Any], ...], ...]], ...] = (
        ("sdprun", ((("lr", SDPRUN_LR),),)), *_GRID)  # method -> option variants, chosen on validation accuracy
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
