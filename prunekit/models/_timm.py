"""timm models by name (``timm:vit_small_patch16_224``), built without downloading anything.

``timm.create_model(name, pretrained=False, num_classes=..., in_chans=...)`` builds a freshly initialised
network (timm is the optional extra ``prunekit[timm]``); weights come only from a local file given to
:func:`prunekit.create_model`. Options such as ``img_size=64`` pass through, so ViTs and Swins can be built
for small inputs.
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

from prunekit.errors import ConfigError


def _timm():
    try:
        import timm
    except ImportError as e:
        raise ConfigError("timm models need the timm package: pip install 'prunekit[timm]'") from e
    return timm


@functools.lru_cache(maxsize=1)
def timm_names() -> tuple[str, ...]:
    """Names of timm's model architectures, sorted (empty when timm is not installed)."""
    try:
        return tuple(sorted(_timm().list_models()))
    except ConfigError:
        return ()


def build_timm(name: str, num_classes: int, in_channels: int, **options: Any) -> nn.Module:
    """Build ``timm.create_model(name)`` without pretrained weights.

    Args:
        name: timm architecture name (without the ``timm:`` prefix).
        num_classes: classifier outputs.
        in_channels: input channels (timm's ``in_chans``).
        **options: passed to timm (e.g. ``img_size=64``, ``drop_path_rate=0.0``).
    """
    timm = _timm()
    if options.get("pretrained"):
        raise ConfigError(f"timm:{name}: pretrained weights are never downloaded; pass weights=<local file>")
    options.pop("pretrained", None)
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **options)
    except (TypeError, RuntimeError, AssertionError) as e:
        raise ConfigError(f"bad options for model 'timm:{name}': {options!r} ({e})") from None
