"""MobileNetV2 (Sandler et al. 2018) for 32×32 inputs.

The CIFAR variant keeps the stem at stride 1 and the second stage (24 channels) at stride 1, so a 32×32
image is downsampled only 8× (to 4×4) instead of 32×; everything else follows the paper's table 2:
inverted residual blocks (1×1 expand, 3×3 depthwise, 1×1 linear projection), ReLU6, residual connection
when stride is 1 and the width is unchanged, a 1×1 conv to 1280 channels, global pooling, a linear head.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.models.cifar_resnet import kaiming_init_
from prunekit.models.registry import register_model

# (expansion t, output channels c, repeats n, first stride s); strides of the stem and stage 2 are 1 for 32×32.
CIFAR_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round ``v`` to a multiple of ``divisor`` without going more than 10% below it (torchvision's rule)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(),
    )


class InvertedResidual(nn.Module):
    """``[N, cin, H, W] -> [N, cout, H/stride, W/stride]``."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_relu(cin, hidden, 1))
        layers += [
            _conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class CifarMobileNetV2(nn.Module):
    """``[N, in_channels, 32, 32] -> [N, num_classes]``.

    Args:
        num_classes: classifier outputs.
        in_channels: input image channels.
        width_mult: multiplies every width (rounded to multiples of 8); the last conv keeps
            1280 channels for ``width_mult <= 1``, as in the paper.
        dropout: dropout before the classifier (0.2 in torchvision).
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, dropout: float = 0.2
    ) -> None:
        super().__init__()
        if not width_mult > 0:
            raise ConfigError(f"width_mult must be > 0, got {width_mult}")
        if not 0 <= dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        cin = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [_conv_bn_relu(in_channels, cin, 3, stride=1)]
        for t, c, n, s in CIFAR_SETTING:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(_conv_bn_relu(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model("mobilenetv2")
def mobilenetv2(
    num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, dropout: float = 0.2
) -> CifarMobileNetV2:
    return CifarMobileNetV2(num_classes, in_channels, width_mult, dropout)
