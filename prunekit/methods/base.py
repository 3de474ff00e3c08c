"""The contract between a pruning method and the training loop.

A method is a recipe: it may change the model before training (``prepare``: insert gates, noise),
add named regulariser terms to the loss, build its own optimizer (sDprun) or parameter groups (gate
logits get their own lr and no weight decay), follow schedules (temperature, ramps) per epoch/step,
report scalar and per-layer metrics, and finish (``finalize``: set hard masks, prune). The loop calls
these hooks in this order::

    model = method.prepare(model, example_input)
    method.plan(steps_per_epoch, epochs)
    opt = method.make_optimizer(model, train_cfg)            # None -> loop builds SGD/Adam from param_groups
    for epoch: method.on_epoch_start(model, epoch, epochs)
        for step: loss = task + sum(method.regularizer(model, step, epoch).values())
                  loss.backward(); opt.step(); method.after_step(model, step, epoch)
                  every log_every steps: method.step_metrics(model), method.layer_metrics(model)
        method.on_epoch_end(model, epoch, epochs)            # e.g. CRISP prune rounds
    model = method.finalize(model)

Metric names (shared with the run store, app and notebooks):
  scalars: ``loss``, ``loss/task``, ``loss/<term>`` (one per regulariser term), ``acc/train``,
  ``acc/val``, ``acc/test``, ``miou/val``, ``lr``, ``temperature``, ``macs_ratio/expected``
  (relaxed MACs / dense MACs), ``macs_ratio/hard`` (MACs at the current hard masks / dense),
  ``macs_ratio/train`` (MACs actually spent in training, growing), ``macs_ratio/relaxation`` (MACs of the
  network the method's *own decision rule* gives now: CRISP's threshold, L0's exact-zero gates, growing's
  s > 0, DPP's noiseless top-k, sDprun's exactly-zero groups; before any calibration), ``sparsity``,
  ``throughput`` (img/s).

Method report (``method.report``, returned as ``result["method_report"]`` and stored with the run): every
method with a decision rule of its own records ``relaxation_macs_ratio`` (the own rule's MACs ÷ dense MACs at
the moment the masks are fixed) and ``calibration_flips`` (the share of prunable structures whose keep/remove
decision a final calibration changed; 0.0 when none ran): a calibration is a last correction, and these two
numbers say how much of the result the method itself decided (``prunekit.methods._gated.decision_report``).
  per-layer rows (dicts with keys ``layer``, ``name``, ``value`` and optional ``data``):
  ``gate_mean``, ``gate_hist`` (data = {"edges": [...], "counts": [...]}), ``gate_values`` (data = list),
  ``keep_ratio``, ``entropy``, ``confidence``, ``diversity``, ``flip_rate``, ``sparsity``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit._registry import Registry
from prunekit.errors import ConfigError
from prunekit.validate import check_choice, check_range, interval_text

_METHODS: Registry[type[Method]] = Registry("method")


# -- options: what a method's Config declares about each of its fields ------------------------------------
@dataclass(frozen=True)
class Option:
    """A Config field's description: help, unit, range, choices, the paper's value. Made by :func:`option`."""

    help: str
    unit: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] = ()
    paper: Any = None  # the paper's value where it differs from prunekit's default (None: same or not stated)


def option(default: Any, help: str, **info: Any) -> Any:
    """A method Config field with its description (keyword arguments of :class:`Option`).

    Example: ``target_macs: float = option(0.5, "MACs kept", unit="fraction of dense MACs", low=0, high=1,
    low_open=True)``. The range and choices are checked when the method is built (``prunekit.validate``), and
    the CLI help, the app form, the notebook widgets and ``prunekit list methods -v`` show the rest.
    """
    return dataclasses.field(default=default, metadata={"option": Option(help, **info)})


@dataclass(frozen=True, kw_only=True)
class OptionSpec(Option):
    """One option of a method as its consumers (CLI, app form, widgets, benches) see it: its :class:`Option`
    description plus name, default, a widget kind and whether None is allowed (e.g. "derive it from the run")."""

    name: str
    default: Any
    kind: str  # "bool" | "int" | "float" | "choice" | "text" (JSON or plain string)
    nullable: bool = False

    @property
    def range_text(self) -> str:
        return interval_text(self.low, self.high, self.low_open, self.high_open)

    def describe(self) -> str:
        """One line: help, unit, range or choices, the paper's value."""
        bits = [self.help] if self.help else []
        if self.unit:
            bits.append(f"unit: {self.unit}")
        if self.choices:
            bits.append("one of " + ", ".join(map(str, self.choices)))
        elif self.low is not None or self.high is not None:
            bits.append(self.range_text)
        if self.paper is not None:
            bits.append(f"paper: {self.paper}")
        return "; ".join(bits)

    def parse_text(self, text: str) -> Any:
        """A value typed as text (app form, notebook widget) in the option's type: None for an empty/"none"
        entry of a nullable option, the stripped text for a string option, else JSON (a list becomes a tuple
        where the default is one). ConfigError naming the option for text that is none of these."""
        stripped = text.strip()
        if self.nullable and stripped.lower() in ("", "none", "null"):
            return None
        if isinstance(self.default, str):
            return stripped
        try:
            parsed = json.loads(stripped)
        except json.JSONDecodeError:
            raise ConfigError(f"{self.name} must be JSON like {json.dumps(self.default)}, got {text!r}") from None
        return tuple(parsed) if isinstance(self.default, tuple) and isinstance(parsed, list) else parsed

    def check(self, value: Any) -> None:
        """ConfigError naming the option and the value when it is out of range or not a choice."""
        if self.choices:
            check_choice(self.name, value, self.choices, allow_none=self.nullable)
        elif self.low is not None or self.high is not None:
            check_range(self.name, value, self.low, self.high, low_open=self.low_open, high_open=self.high_open,
                        allow_none=self.nullable)


def _field_comments(cls: type) -> dict[str, str]:
    """Trailing ``# comments`` of a dataclass's field lines (help for fields declared without :func:`option`)."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for line in src.splitlines():
        m = re.match(r"\s+(\w+)\s*:[^#=]*(?:=[^#]*)?#\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _kind(default: Any, annotation: Any, choices: tuple[Any, ...]) -> str:
    ann = str(annotation)
    if choices:
        return "choice"
    if isinstance(default, bool) or ann == "bool":
        return "bool"
    if ann == "int" and (default is None or isinstance(default, int)):
        return "int"
    if ann == "float" and (default is None or isinstance(default, (int, float))):
        return "float"
    return "text"


def option_specs(config_cls: type) -> list[OptionSpec]:
    """The options of a method Config class: its own fields first, then the inherited ones."""
    return list(_option_specs(config_cls))


@functools.cache
def _option_specs(config_cls: type) -> tuple[OptionSpec, ...]:
    # computed once per Config class: every Method construction checks its options against these
    fields = dataclasses.fields(config_cls)
    # help of fields declared without option(): their trailing comments (reads the source, so only when needed)
    comments = _field_comments(config_cls) if any("option" not in f.metadata for f in fields) else {}
    own = config_cls.__dict__.get("__annotations__", {})
    specs = []
    for f in sorted(fields, key=lambda f: f.name not in own):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        info: Option = f.metadata.get("option") or Option(f.metadata.get("help") or comments.get(f.name, ""))
        ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))  # without __future__
        specs.append(OptionSpec(**{k.name: getattr(info, k.name) for k in dataclasses.fields(info)}, name=f.name,
                                default=default, kind=_kind(default, str(ann).replace(" | None", ""), info.choices),
                                nullable=default is None or "None" in str(ann)))
    return tuple(specs)


def check_options(config_cls: type, values: dict[str, Any]) -> None:
    """Check ``values`` (option name -> value) against the declared ranges and choices of ``config_cls``."""
    for spec in option_specs(config_cls):
        if spec.name in values:
            spec.check(values[spec.name])


def validate_options(config: Any) -> None:
    """Check every declared range and choice of a method Config instance (ConfigError naming option and value)."""
    check_options(type(config), {spec.name: getattr(config, spec.name) for spec in option_specs(type(config))})


class Method:
    """Base class: the dense baseline (no change to the model, no regulariser).

    Subclasses set ``name`` and ``Config`` (a frozen dataclass with the papers' defaults) and override hooks.
    """

    name: str = "dense"
    # -- what the method says about itself: the CLI, the app, the notebooks and the benches read these ----------
    #: one line: what the method does
    summary: str = "the dense baseline: trains the network as it is, nothing is removed"
    #: the paper (authors, year) or "" for prunekit's own baselines
    paper: str = ""
    #: the option that sets the size target, always a fraction of dense MACs in (0, 1]; None: no target option
    target_option: str | None = None
    #: trained once, then pruned after training to any target (benches prune its network per target)
    post_hoc: bool = False
    #: the loss terms it adds (logged as ``loss/<name>``) -> what each does, in plain words
    loss_help: dict[str, str] = {}
    #: metrics it logs besides the shared ones (``macs_ratio/*``, accuracy ...) -> plain caption
    metric_help: dict[str, str] = {}
    #: its own decision rule in plain words (what decides the kept structures, before any calibration)
    decision_rule: str = "nothing is removed"
    #: what trains it
    optimizer_help: str = "the run's optimizer (TrainConfig.optimizer)"
    #: option variants ``bench pareto`` tries at every target (the best on validation accuracy is reported)
    bench_variants: tuple[dict[str, Any], ...] = ({},)
    #: After ``finalize`` the loop re-estimates BatchNorm running statistics on training batches (no weight
    #: change): set by methods whose training statistics do not describe the final network (noise removed,
    #: sampled masks frozen).
    recalibrate_bn_after_finalize: bool = False
    #: True once the method has fixed its masks (its search is over; the same name in every method's state)
    masks_fixed: bool = False

    @dataclasses.dataclass(frozen=True)
    class Config:
        pass

    def __init__(self, config: Any = None, **options: Any) -> None:
        # declared ranges are checked before the Config's own __post_init__ (cross-field checks) sees the values
        if config is None:
            check_options(self.Config, options)
            config = self.Config(**options)
        elif options:
            check_options(type(config), options)
            config = dataclasses.replace(config, **options)
        else:
            validate_options(config)
        self.config = config
        self.steps_per_epoch: int | None = None
        self.epochs: int | None = None

    # -- self-description -----------------------------------------------------------------------------
    @classmethod
    def options(cls) -> list[OptionSpec]:
        """The options of this method's Config (defaults, help, unit, range, the paper's value)."""
        return option_specs(cls.Config)

    @classmethod
    def target_options(cls, target_macs: float) -> dict[str, Any]:
        """The options that ask this method for ``target_macs`` (fraction of dense MACs); {} without a target."""
        check_range("target_macs", target_macs, 0.0, 1.0, low_open=True)
        return {cls.target_option: float(target_macs)} if cls.target_option else {}

    @classmethod
    def target_value(cls, options: dict[str, Any] | None) -> float | None:
        """The MACs target a run with these options asked for (its default when not given); None without one."""
        if not cls.target_option:
            return None
        opts = options or {}
        if cls.target_option in opts:
            value = opts[cls.target_option]
        else:
            value = next((s.default for s in cls.options() if s.name == cls.target_option), None)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def decision_threshold(self) -> float | None:
        """The gate value its own rule keeps above (keep iff eval gate > threshold; the what-if view starts there)."""
        return None

    # -- model and optimizer -------------------------------------------------------------
    def plan(self, steps_per_epoch: int, epochs: int) -> None:
        """Told by the loop, before ``make_optimizer``, how long the run is (budget-scaled schedules)."""
        self.steps_per_epoch, self.epochs = int(steps_per_epoch), int(epochs)

    def prepare(self, model: nn.Module, example_input: torch.Tensor) -> nn.Module:
        return model

    def make_optimizer(self, model: nn.Module, train_cfg: Any) -> torch.optim.Optimizer | None:
        return None

    def param_groups(self, model: nn.Module, train_cfg: Any) -> list[dict[str, Any]]:
        """Optimizer parameter groups; the default is one group of every trainable parameter."""
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    # -- schedules and loss ----------------------------------------------------------------
    def on_epoch_start(self, model: nn.Module, epoch: int, num_epochs: int) -> None:
        pass

    def on_epoch_end(self, model: nn.Module, epoch: int, num_epochs: int) -> None:
        pass

    def regularizer(self, model: nn.Module, step: int, epoch: int) -> dict[str, torch.Tensor]:
        return {}

    def after_step(self, model: nn.Module, step: int, epoch: int) -> None:
        pass

    # -- reporting ----------------------------------------------------------------------------
    def step_metrics(self, model: nn.Module) -> dict[str, float]:
        return {}

    def layer_metrics(self, model: nn.Module) -> list[dict[str, Any]]:
        return []

    def decision_masks(self, model: nn.Module) -> list[torch.Tensor] | None:
        """Keep masks (bool [size] per group of ``model.groups``) that the method's own rule decides *now*.

        None when the method has no rule of its own at this point (dense training, post-hoc magnitude pruning).
        """
        return None

    def finalize(self, model: nn.Module) -> nn.Module:
        return model

    # -- resume -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def report_state(self) -> dict[str, Any]:
        """What the method's reporting remembers (tensors and plain types): its ``report`` and the last masks a
        flip rate compares with. Checkpoints keep it beside :meth:`state_dict`, so a resumed run logs and reports
        what the uninterrupted run does."""
        return {}

    def load_report_state(self, state: dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator registering a Method subclass under ``cls.name``."""
    _METHODS.add(cls.name, cls)
    return cls


register_method(Method)


def list_methods() -> list[str]:
    return _METHODS.names()


def method_class(name: str) -> type[Method]:
    """The registered Method class ``name`` (ConfigError with close matches when unknown): its options and
    self-description without building it."""
    return _METHODS.get(name)


def create_method(name: str, config: Any = None, **options: Any) -> Method:
    """Build a method by name; ``options`` are fields of its frozen ``Config``.

    Unknown option names raise a ConfigError naming them; values out of a declared range name option and value.
    """
    cls = _METHODS.get(name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    bad = set(options) - fields
    if bad:
        raise ConfigError(
            f"unknown option(s) for method {name!r}: {', '.join(sorted(bad))}; valid: {', '.join(sorted(fields))}"
        )
    return cls(config, **options)


def run_target(method: str | None, options: dict[str, Any] | None) -> float | None:
    """The MACs target (fraction of dense) of a run of ``method`` with ``options``; None when the method has no
    target option or is not registered here (a run store may hold runs of methods this install lacks)."""
    if not method or method not in _METHODS:
        return None
    return _METHODS.get(method).target_value(options)


def loss_help() -> dict[str, str]:
    """Every registered method's loss terms -> caption (the Live page explains a term by its logged name)."""
    out: dict[str, str] = {}
    for name in list_methods():
        out.update(_METHODS.get(name).loss_help)
    return out


def metric_help() -> dict[str, str]:
    """Every registered method's own metrics -> caption."""
    out: dict[str, str] = {}
    for name in list_methods():
        out.update(_METHODS.get(name).metric_help)
    return out
