"""The model registry: builders by name, each with its task (what :func:`prunekit.models.create_model` reads)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from prunekit._registry import Registry
from prunekit.errors import ConfigError

TV_PREFIX = "tv:"
TIMM_PREFIX = "timm:"

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class _Entry:
    """A registered builder and the task of its models."""

    builder: Builder
    task: str


_MODELS: Registry[_Entry] = Registry("model")


def register_model(name: str | None = None, *, task: str = "classification") -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(num_classes, in_channels, **kwargs) -> nn.Module`` under ``name``.

    Args:
        name: registry name (default: the builder's ``__name__``).
        task: ``"classification"`` (output ``[N, num_classes]``) or ``"segmentation"``
            (output ``[N, num_classes, H, W]``).
    """
    if task not in ("classification", "segmentation"):
        raise ConfigError(f"task must be 'classification' or 'segmentation', got {task!r}")

    def deco(builder: Builder) -> Builder:
        key = name or builder.__name__
        for prefix, owner in ((TV_PREFIX, "torchvision"), (TIMM_PREFIX, "timm")):
            if key.startswith(prefix):
                raise ConfigError(f"model names starting with {prefix!r} are reserved for {owner}, got {key!r}")
        _MODELS.add(key, _Entry(builder, task))
        return builder

    return deco
