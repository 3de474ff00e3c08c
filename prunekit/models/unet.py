"""U-Net (Ronneberger et al. 2015) for small segmentation images, with configurable width and depth.

Encoder: a double conv (conv3×3-BN-ReLU ×2) at each of ``depth + 1`` levels, 2×2 max-pool between them,
channels ``width · 2^level``. Decoder: ``ConvTranspose2d(stride 2)`` up, concatenation with the encoder
feature of the same level, double conv. A 1×1 conv maps to ``num_classes`` logits per pixel. Padding keeps
sizes, so H and W must be divisible by ``2 ** depth``.
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn

from prunekit.errors import ConfigError
from prunekit.models.cifar_resnet import kaiming_init_
from prunekit.models.registry import register_model


def _check_divisible(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Return ``x`` unchanged, or raise if its H, W are not multiples of ``factor``."""
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ConfigError(f"unet input H and W must be divisible by 2**depth = {factor}, got {h}×{w}")
    return x


# A leaf for torch.fx, so symbolic tracing records the check instead of failing on a data-dependent `if`.
torch.fx.wrap("_check_divisible")


class DoubleConv(nn.Sequential):
    """(conv3×3-BN-ReLU) × 2: ``[N, cin, H, W] -> [N, cout, H, W]``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        )


class UNet(nn.Module):
    """``[N, in_channels, H, W] -> [N, num_classes, H, W]`` logits.

    Args:
        num_classes: classes per pixel, including background.
        in_channels: input image channels.
        width: channels at the first level (the paper: 64).
        depth: number of 2× down-steps (the paper: 4).
    """

    def __init__(self, num_classes: int = 2, in_channels: int = 3, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        if width < 1:
            raise ConfigError(f"width must be >= 1, got {width}")
        if depth < 1:
            raise ConfigError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([DoubleConv(in_channels, chans[0])])
        self.down.extend(DoubleConv(chans[i - 1], chans[i]) for i in range(1, depth + 1))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(nn.ConvTranspose2d(chans[i], chans[i - 1], 2, stride=2) for i in range(depth, 0, -1))
        self.dec = nn.ModuleList(DoubleConv(2 * chans[i - 1], chans[i - 1]) for i in range(depth, 0, -1))
        self.head = nn.Conv2d(chans[0], num_classes, 1)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_divisible(x, 2**self.depth)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        skips.pop()  # the bottleneck output is x itself
        for up, dec in zip(self.up, self.dec):
            x = dec(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


@register_model("unet", task="segmentation")
def unet(num_classes: int = 2, in_channels: int = 3, width: int = 16, depth: int = 3) -> UNet:
    return UNet(num_classes, in_channels, width, depth)
