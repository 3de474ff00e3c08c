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
    reading ``in_channels`` channels; its weights are freshly initialised as PyTorch's default."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != 3:
                    raise ConfigError(
                        f"tv:{name}: first conv reads {child.in_channels} channels, cannot set in_channels"
                    )
                new = nn.Conv2d(
                    in_channels,
                    child.out_channels,
                    child.kernel_size,
                    stride=child.stride,
                    padding=child.padding,
                    dilation=child.dilation,
                    groups=child.groups if child.groups == 1 else in_channels,
                    bias=child.bias is not None,
                    padding_mode=child.padding_mode,
                )
                if child.groups != 1 and (child.out_channels % in_channels != 0):
                    raise ConfigError(f"tv:{name}: grouped first conv cannot take in_channels={in_channels}")
                setattr(parent, child_name, new)
                return
    raise ConfigError(f"tv:{name} has no Conv2d to adapt to in_channels={in_channels}")
