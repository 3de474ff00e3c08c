"""Frozen configuration of a training run; JSON round-trippable so the run store can keep it.

``RunConfig`` is the single description of an experiment used by the CLI, the background runner,
the app and the notebooks: model → dataset → method → training schedule.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from prunekit.data import LOADERS
from prunekit.errors import ConfigError
from prunekit.methods import create_method, run_target
from prunekit.methods.base import OptionSpec, option, option_specs
from prunekit.optim import optimizer_names
from prunekit.validate import check_choice, check_range

# cosine / step / constant: a factor per epoch; linear: per step, from the base lr after the warm-up to 0 at the
# last step (with the warm-up, a triangular one-cycle schedule)
SCHEDULES = ("cosine", "step", "constant", "linear")


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation schedule. Defaults suit short CPU runs of CIFAR-sized data."""

    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()  # epochs at which the step schedule multiplies lr by gamma
    gamma: float = 0.1
    # linear lr warm-up over the first epochs (capped at half the run): from-scratch nets on data whose
    # only cue is shape (``shapes``) stall at chance when they start at lr 0.1
    warmup_epochs: float = 1.0
    device: str = "auto"
    amp: bool = True  # used on CUDA only
    channels_last: bool = False
    seed: int = 0
    num_threads: int | None = None  # torch intra-op threads; None = leave torch's default
    log_every: int = 10  # steps between scalar log events
    max_steps_per_epoch: int | None = None  # cap for smoke tests and what-if runs
    num_workers: int = 0
    label_smoothing: float = option(
        0.0, "share of the target probability spread evenly over all classes in the training loss "
        "(classification; evaluation losses stay plain)", unit="probability", low=0, high=1, high_open=True)
    loader: str = option(
        "auto", "batch: whole-batch tensor augmentation in the training process; torch: a DataLoader over "
        "per-image augmentation (worker processes); auto: batch unless num_workers > 0", choices=LOADERS)

    def __post_init__(self) -> None:
        check_range("epochs", self.epochs, 0)
        check_range("batch_size", self.batch_size, 1)
        check_range("lr", self.lr, 0, low_open=True)
        check_choice("optimizer", self.optimizer, optimizer_names())
        check_choice("schedule", self.schedule, SCHEDULES)
        check_range("weight_decay", self.weight_decay, 0)
        check_range("warmup_epochs", self.warmup_epochs, 0)
        check_range("log_every", self.log_every, 1)
        check_range("num_threads", self.num_threads, 1, allow_none=True)
        check_range("max_steps_per_epoch", self.max_steps_per_epoch, 1, allow_none=True)
        check_range("num_workers", self.num_workers, 0)
        check_range("label_smoothing", self.label_smoothing, 0, 1, high_open=True)
        check_choice("loader", self.loader, LOADERS)
        if self.loader == "batch" and self.num_workers > 0:
            raise ConfigError(f"loader 'batch' runs in the training process: num_workers must be 0 with it, got "
                              f"{self.num_workers} (use loader 'torch' or 'auto' for worker processes)")
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))


def train_options() -> list[OptionSpec]:
    """The TrainConfig fields declared with ``option()`` (help, unit, range or choices): the CLI generates a flag
    for each (``--label-smoothing``, ``--loader``), as it does for the methods' options."""
    declared = {f.name for f in dataclasses.fields(TrainConfig) if "option" in f.metadata}
    return [s for s in option_specs(TrainConfig) if s.name in declared]


@dataclass(frozen=True)
class RunConfig:
    """One experiment: which model, data, method and schedule.

    ``method_options`` are the keyword arguments of the method's own frozen config
    (``prunekit.methods.create(method, **method_options)``); ``data_options`` go to the dataset
    builder (e.g. ``{"num_samples": 2000}`` for ``shapes``).
    """

    model: str = "resnet20"
    dataset: str = "shapes"
    method: str = "dense"
    method_options: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    data_root: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    in_channels: int | None = None  # None: take it from the dataset
    num_classes: int | None = None  # None: take it from the dataset
    val_fraction: float = 0.1
    name: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.in_channels is not None and self.in_channels < 1:
            raise ConfigError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {self.num_classes}")
        if isinstance(self.train, dict):
            object.__setattr__(self, "train", TrainConfig(**self.train))
        object.__setattr__(self, "method_options", dict(self.method_options or {}))
        self.method_config  # noqa: B018  (validated once, here: unknown names and values out of range fail now)

    @property
    def method_config(self) -> Any:
        """The method's own frozen Config for ``method_options`` (validated; serialised as name + options)."""
        return create_method(self.method, **self.method_options).config

    @property
    def target_macs(self) -> float | None:
        """The MACs target (fraction of dense MACs) the method was asked for; None when it has no target option."""
        return run_target(self.method, self.method_options)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["train"]["milestones"] = list(self.train.milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Build from a dict (e.g. JSON), refusing unknown keys with their names."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown run config keys: {', '.join(sorted(unknown))}")
        d = dict(d)
        train = d.get("train", {})
        if isinstance(train, dict):
            tknown = {f.name for f in dataclasses.fields(TrainConfig)}
            bad = set(train) - tknown
            if bad:
                raise ConfigError(f"unknown train config keys: {', '.join(sorted(bad))}")
            d["train"] = TrainConfig(**train)
        return cls(**d)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)
