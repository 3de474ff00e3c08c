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
from typing import Any

import torch
from torch import nn

from prunekit._registry import Registry

_METHODS: Registry[type[Method]] = Registry("method")


class Method:
    """Base class: the dense baseline (no change to the model, no regulariser).

    Subclasses set ``name`` and ``Config`` (a frozen dataclass with the papers' defaults) and override hooks.
    """

    name: str = "dense"
    #: After ``finalize`` the loop re-estimates BatchNorm running statistics on training batches (no weight
    #: change): set by methods whose training statistics do not describe the final network (noise removed,
    #: sampled masks frozen).
    recalibrate_bn_after_finalize: bool = False

    @dataclasses.dataclass(frozen=True)
    class Config:
        pass

    def __init__(self, config: Any = None, **options: Any) -> None:
        if config is None:
            config = self.Config(**options)
        elif options:
            config = dataclasses.replace(config, **options)
        self.config = config
        self.steps_per_epoch: int | None = None
        self.epochs: int | None = None

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

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator registering a Method subclass under ``cls.name``."""
    _METHODS.add(cls.name, cls)
    return cls


register_method(Method)


def list_methods() -> list[str]:
    return _METHODS.names()


def create_method(name: str, config: Any = None, **options: Any) -> Method:
    """Build a method by name; ``options`` are fields of its frozen ``Config``.

    Unknown option names raise a ConfigError naming them.
    """
    cls = _METHODS.get(name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    bad = set(options) - fields
    if bad:
        from prunekit.errors import ConfigError

        raise ConfigError(
            f"unknown option(s) for method {name!r}: {', '.join(sorted(bad))}; valid: {', '.join(sorted(fields))}"
        )
    return cls(config, **options)
