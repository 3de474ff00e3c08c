"""VGG-11 and VGG-16 with BatchNorm for 32×32 inputs (the CIFAR variant used by network-slimming papers).

Conv3×3-BN-ReLU stacks with 2×2 max-pooling after each of the five stages (32 → 1 pixel), then one
``Linear(512 · width_mult, num_classes)``: the 4096-wide ImageNet classifier is dropped, as in
Liu et al. 2017 ("Learning Efficient Convolutional Networks through Network Slimming").
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.models.cifar_resnet import kaiming_init_
from prunekit.models.registry import register_model

# Simonyan & Zisserman 2015, configurations A (11 layers) and D (16 layers); "M" = 2×2 max-pool.
CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class CifarVGG(nn.Module):
    """``[N, in_channels, 32, 32] -> [N, num_classes]``; other sizes work through the final adaptive pool.

    Args:
        config: layer list (channel counts and ``"M"`` for max-pool).
        num_classes: classifier outputs.
        in_channels: input image channels.
        width_mult: multiplies every channel count.
    """

    def __init__(
        self, config: list[int | str], num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0
    ) -> None:
        super().__init__()
        if not width_mult > 0:
            raise ConfigError(f"width_mult must be > 0, got {width_mult}")
        layers: list[nn.Module] = []
        c = in_channels
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                out = max(1, int(round(int(v) * width_mult)))
                layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
                c = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model("vgg11")
def vgg11(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> CifarVGG:
    return CifarVGG(CONFIGS["vgg11"], num_classes, in_channels, width_mult)


@register_model("vgg16")
def vgg16(num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0) -> CifarVGG:
    return CifarVGG(CONFIGS["vgg16"], num_classes, in_channels, width_mult)
