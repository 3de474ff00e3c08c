"""A small Vision Transformer for 32×32 inputs (``vit_tiny32``): the in-house transformer of the zoo.

Pre-norm encoder blocks (Dosovitskiy et al. 2021): x + Attn(LN(x)), then x + MLP(LN(x)) with a 4× GELU
MLP, a class token and learned position embeddings, a final LayerNorm and a linear head on the class
token. Patches of 4×4 pixels give 64 tokens (+1) at 32×32. Prunable: every MLP's hidden width and every
attention module's heads (:class:`prunekit.heads.HeadAttention`); the embedding width feeds LayerNorms
and stays whole.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError
from prunekit.heads import HeadAttention
from prunekit.models.registry import register_model


class _Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = HeadAttention(dim, num_heads, proj_drop=dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SmallViT(nn.Module):
    """``[N, in_channels, H, W] -> [N, num_classes]``; position embeddings are learned for ``image_size`` and
    resized for other inputs (e.g. 28×28 MNIST).

    Args:
        num_classes: classifier outputs.
        in_channels: input image channels.
        image_size: input side the position embeddings are learned for (a multiple of ``patch_size``).
        patch_size: side of a square patch.
        dim: token width.
        depth: number of encoder blocks.
        num_heads: heads per attention module (divides ``dim``).
        mlp_ratio: MLP hidden width / ``dim``.
        dropout: dropout after attention and in the MLP.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
        patch_size: int = 4,
        dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ConfigError(f"image_size must be a multiple of patch_size={patch_size}, got {image_size}")
        if depth < 1:
            raise ConfigError(f"depth must be >= 1, got {depth}")
        if num_heads < 1 or dim % num_heads:
            raise ConfigError(f"num_heads must divide dim={dim}, got {num_heads}")
        self.grid = image_size // patch_size
        tokens = self.grid**2
        self.patch = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[_Block(dim, num_heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        """Position embeddings [1, 1 + h·w, dim]; bilinearly resized when the patch grid is not the trained one."""
        g = self.grid
        if (h, w) == (g, g):
            return self.pos_embed
        grid = self.pos_embed[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
        return torch.cat([self.pos_embed[:, :1], grid], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x)  # [N, dim, h, w]
        pos = self._pos_embed(x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # [N, T, dim]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


@register_model("vit_tiny32")
def vit_tiny32(num_classes: int = 10, in_channels: int = 3, **kwargs) -> SmallViT:
    """4 blocks, width 64, 4 heads, 4×4 patches: about 0.2 M parameters at 32×32."""
    return SmallViT(num_classes=num_classes, in_channels=in_channels, **kwargs)
