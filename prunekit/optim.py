"""Optimizers built from a run's training settings, below ``methods`` and ``train`` (both use them).

:func:`build_optimizer` makes the training optimizer a :class:`~prunekit.train.config.TrainConfig` names (any
object with its ``optimizer``, ``lr``, ``momentum``, ``nesterov`` and ``weight_decay`` fields);
:class:`SplitOptimizer` steps several optimizers as one, so that a method can train its gate logits with Adam
while the weights keep the training optimizer (:func:`split_optimizer`), and the loop's lr schedule,
checkpoints and AMP scaler still see one object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from prunekit.errors import ConfigError

BUILT_IN = ("sgd", "adam", "adamw")
# optimizers that need the whole model (e.g. sDprun's group structure), registered by the module that owns them:
# name -> builder(model, train_cfg, example_input) -> Optimizer
_MODEL_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {}


def register_model_optimizer(name: str, builder: Callable[..., torch.optim.Optimizer]) -> None:
    """Make ``TrainConfig.optimizer = name`` build ``builder(model, train_cfg, example_input)`` for any method."""
    if name in BUILT_IN or name in _MODEL_OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} is already registered")
    _MODEL_OPTIMIZERS[name] = builder


def optimizer_names() -> tuple[str, ...]:
    """Every name ``TrainConfig.optimizer`` accepts: the built-in ones and the registered model optimizers."""
    return (*BUILT_IN, *sorted(_MODEL_OPTIMIZERS))


def model_optimizer(name: str) -> Callable[..., torch.optim.Optimizer] | None:
    """The registered builder for ``name``, or None for a built-in (per-group) optimizer."""
    return _MODEL_OPTIMIZERS.get(name)


def build_optimizer(groups: list[dict[str, Any]], cfg: Any) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam or AdamW over ``groups``; a group's own ``lr``/``weight_decay`` win."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"optimizer {cfg.optimizer!r} is not a per-group optimizer; one of {', '.join(BUILT_IN)} or a "
                      f"model optimizer ({', '.join(sorted(_MODEL_OPTIMIZERS)) or 'none registered'})")


class SplitOptimizer(torch.optim.Optimizer):
    """Several optimizers stepped as one (weights: SGD; gate logits: Adam, say).

    ``param_groups`` is the concatenation of the inner optimizers' group dicts (the same objects), so an
    lr scheduler scaling ``param_groups[i]["lr"]`` drives the inner optimizers directly.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = list(optimizers)
        params = [p for o in self.optimizers for g in o.param_groups for p in g["params"]]
        super().__init__(params, {})
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for o in self.optimizers:
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        split = [o.state_dict() for o in self.optimizers]
        # the concatenated group dicts too, as a plain optimizer has them: checkpoint checks compare group sizes
        return {"split": split, "param_groups": [g for s in split for g in s["param_groups"]]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict.get("split")
        if not isinstance(states, list) or len(states) != len(self.optimizers):
            raise ConfigError("optimizer state does not match this method's split optimizer")
        for o, s in zip(self.optimizers, states):
            o.load_state_dict(s)
        # torch's load_state_dict gives every inner optimizer new group dicts: point ours (which the lr scheduler
        # drives) at them again, or the schedule would stop reaching the inner optimizers after a resume
        self.param_groups[:] = [g for o in self.optimizers for g in o.param_groups]


def split_optimizer(groups: list[dict[str, Any]], train_cfg: Any) -> torch.optim.Optimizer | None:
    """The training optimizer for ``groups[0]`` (weights) plus Adam without weight decay for the other groups
    (gate logits, at their own ``lr``), as one :class:`SplitOptimizer`; None when there is no second group."""
    if len(groups) == 1:
        return None
    weights = build_optimizer(groups[:1], train_cfg)
    return SplitOptimizer([weights, torch.optim.Adam(groups[1:], lr=groups[1]["lr"], weight_decay=0.0)])
