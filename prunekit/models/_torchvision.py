"""torchvision classification models by name (``tv:resnet50``), built without downloading anything.

``torchvision.models.get_model(name, weights=None, num_classes=...)`` builds a freshly initialised network;
for ``in_channels != 3`` the first ``Conv2d`` that reads the image is replaced by one with the new input
width (same kernel, stride, padding, groups and bias). Most of these networks downsample 32× and end in
adaptive pooling, so they also run on 32×32 inputs; a few (Inception-v3, ViT, Swin with fixed sizes) need
their native resolution.
"""

from __future__ import annotations

import functools
from typing import Any

import torchvision
from torch import nn

from prunekit.errors import ConfigError


@functools.lru_cache(maxsize=1)
def torchvision_names() -> tuple[str, ...]:
    """Names of torchvision's classification models (those in ``torchvision.models`` itself), sorted."""
    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def build_torchvision(name: str, num_classes: int, in_channels: int, **options: Any) -> nn.Module:
    """Build ``torchvision.models.<name>`` without weights.

    Args:
        name: torchvision model name (without the ``tv:`` prefix).
        num_classes: classifier outputs.
        in_channels: input channels; the first image conv is rebuilt when this is not 3.
        **options: passed to torchvision's builder (e.g. ``dropout=0.0``).
    """
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **options)
    except TypeError as e:
        raise ConfigError(f"bad options for model 'tv:{name}': {options!r} ({e})") from None
    if in_channels != 3:
        _replace_first_conv_(model, in_channels, name)
    return model


def _replace_first_conv_(model: nn.Module, in_channels: int, name: str) -> None:
    """Swap the first Conv2d (in registration order, which is forward order for torchvision) for one
    reading ``in_channels`` channels, He-initialised like torchvision's own convs."""
    first = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ConfigError(f"tv:{name} has no Conv2d to adapt to in_channels={in_channels}")
    path, conv = first
    if conv.in_channels != 3:
        raise ConfigError(f"tv:{name}: first conv reads {conv.in_channels} channels, cannot set in_channels")
    if conv.groups != 1:
        raise ConfigError(f"tv:{name}: first conv is grouped, cannot set in_channels={in_channels}")
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    parent_path, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, attr, new)
