"""Training recipes: named sets of :class:`~prunekit.train.config.TrainConfig` values (``prunekit train --recipe``).

A recipe changes the defaults, never what the user set: :meth:`Recipe.config` starts from ``TrainConfig``'s
defaults, applies the recipe's values, then the caller's. The CLI, the runner and the benches build their
``TrainConfig`` through it, and ``prunekit bench recipe`` measures each of its pieces on its own.

``fast`` (BENCHMARKS.md section 7, ResNet-20 on 4,000 Fashion-MNIST images for 3 epochs, a loaded machine):
channels_last (1.3–1.4× per training step on this CPU), label smoothing 0.1 and the per-step ``linear`` lr decay
after a 0.3-epoch warm-up (a triangular one-cycle). Together: 78.7 % test over 3 seeds (78.1–79.5) against the
defaults' 70.9 % (60.8–77.8); each of the two accuracy pieces alone also lifted the seed where the defaults failed.
A larger batch (256, lr 0.2) lost 11 points at that budget (half the steps) and is not in it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prunekit._registry import Registry
from prunekit.errors import ConfigError
from prunekit.train.config import TrainConfig

_RECIPES: Registry[Recipe] = Registry("recipe")


@dataclass(frozen=True)
class Recipe:
    """A named set of TrainConfig values.

    Attributes:
        name: what ``--recipe`` takes.
        summary: one line for ``--help`` and the docs.
        train: TrainConfig field -> value.
    """

    name: str
    summary: str
    train: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        bad = set(self.train) - known
        if bad:
            raise ConfigError(f"recipe {self.name!r} sets unknown train config keys: {', '.join(sorted(bad))}")
        TrainConfig(**self.train)  # its values are in range

    def config(self, base: TrainConfig | None = None, **given: Any) -> TrainConfig:
        """``base`` (default: ``TrainConfig()``) with the recipe's values, then ``given`` on top.

        Raises:
            ConfigError: an unknown key or a value out of range (named with the value).
        """
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        bad = set(given) - known
        if bad:
            raise ConfigError(f"unknown train config keys: {', '.join(sorted(bad))}")
        return dataclasses.replace(base or TrainConfig(), **{**self.train, **given})


def register_recipe(recipe: Recipe) -> Recipe:
    """Add ``recipe`` under its name (ValueError if the name is taken)."""
    _RECIPES.add(recipe.name, recipe)
    return recipe


def list_recipes() -> list[str]:
    return _RECIPES.names()


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (ConfigError naming the recipe and the known ones otherwise)."""
    return _RECIPES.get(name)


def recipe_config(name: str | None, **given: Any) -> TrainConfig:
    """``TrainConfig`` of recipe ``name`` (None: the plain defaults) with ``given`` on top."""
    maker: Callable[..., TrainConfig] = get_recipe(name).config if name else TrainConfig
    return maker(**given)


register_recipe(Recipe("default", "TrainConfig's own defaults (cosine per epoch, batch 128, NCHW)"))
FAST = register_recipe(Recipe(
    "fast",
    "converges in few epochs on a CPU: label smoothing 0.1, per-step linear lr decay after a 0.3-epoch warm-up, "
    "channels_last",
    {"label_smoothing": 0.1, "schedule": "linear", "warmup_epochs": 0.3, "channels_last": True},
))
