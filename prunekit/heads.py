"""Attention heads as prunable structures.

A head of multi-head self-attention is removable exactly: its softmax runs over its own scores, so
dropping head ``h`` means dropping rows ``h`` of the fused Q/K/V projection (in each of the three thirds),
the projection's input columns of that head, any per-head parameter (Swin's relative-position bias
table), and decrementing ``num_heads``. The embedding width stays whole (it feeds LayerNorms).

An attention module is head-prunable when its forward takes ``num_heads`` and the head width from
attributes (not from the embedding width) and calls its output projection as a module, so a gate can
multiply the projection's input per head. prunekit knows these layouts by module type:

* :class:`HeadAttention` (prunekit's own; the in-house ViT uses it) and timm's ``Attention`` and
  ``WindowAttention`` (Swin), which are head-prunable as they are;
* ``nn.MultiheadAttention`` (self-attention, torchvision's ViT) and torchvision's Swin
  ``ShiftedWindowAttention``, whose forwards derive the head width from the embedding width: ``convert``
  swaps them for :class:`MultiheadSelfAttention` / :class:`WindowHeads`, which compute the same outputs
  with the head width held apart.

Every other attention module keeps its heads whole (its projections stay in fixed groups).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.swin_transformer import ShiftedWindowAttention

from prunekit.errors import UnsupportedModelError

log = logging.getLogger(__name__)


class HeadAttention(nn.Module):
    """Multi-head self-attention whose inner width ``num_heads·head_dim`` may differ from ``dim``.

    Args:
        dim: token embedding width (input and output).
        num_heads: number of heads.
        head_dim: width of one head (default ``dim // num_heads``).
        qkv_bias, proj_bias: biases of the fused Q/K/V and the output projection.
        attn_drop, proj_drop: dropout on the attention weights and on the output.

    Shapes: x [B, N, dim] -> [B, N, dim]. ``qkv`` rows are ordered [3][num_heads][head_dim].
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if num_heads < 1 or (head_dim is None and dim % num_heads):
            raise UnsupportedModelError(f"num_heads must be >= 1 and divide dim={dim} (or give head_dim), got {num_heads}")
        self.dim, self.num_heads = dim, num_heads
        self.head_dim = head_dim or dim // num_heads
        self.attn_drop = float(attn_drop)
        self.qkv = nn.Linear(dim, 3 * self.num_heads * self.head_dim, bias=qkv_bias)
        self.proj = nn.Linear(self.num_heads * self.head_dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """Attention of x [B, N, dim] before the output projection: [B, N, num_heads·head_dim]."""
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        p = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_drop(self.proj(self.attend(x)))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, head_dim={self.head_dim}"


class MultiheadSelfAttention(HeadAttention):
    """:class:`HeadAttention` called like ``nn.MultiheadAttention`` for self-attention (``m(x, x, x)``).

    Returns ``(output, None)``: attention weights are not computed (torchvision's ViT asks for none).
    """

    def __init__(self, *args, batch_first: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batch_first = bool(batch_first)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> MultiheadSelfAttention:
        """The same function as ``mha`` (its weights copied) with a separate head width."""
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise UnsupportedModelError("only plain self-attention nn.MultiheadAttention can be head-pruned")
        new = cls(
            mha.embed_dim,
            mha.num_heads,
            qkv_bias=mha.in_proj_bias is not None,
            proj_bias=mha.out_proj.bias is not None,
            attn_drop=mha.dropout,
            batch_first=mha.batch_first,
        ).to(mha.in_proj_weight.device, mha.in_proj_weight.dtype)
        with torch.no_grad():
            # in_proj rows are [q; k; v], each [num_heads][head_dim]: the qkv layout
            new.qkv.weight.copy_(mha.in_proj_weight)
            if mha.in_proj_bias is not None:
                new.qkv.bias.copy_(mha.in_proj_bias)
            new.proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                new.proj.bias.copy_(mha.out_proj.bias)
        new.train(mha.training)
        return new

    def forward(  # type: ignore[override]
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        **_: object,
    ) -> tuple[torch.Tensor, None]:
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise UnsupportedModelError("MultiheadSelfAttention computes self-attention only (key and value must be query)")
        if key_padding_mask is not None or attn_mask is not None:
            raise UnsupportedModelError("MultiheadSelfAttention does not take attention masks")
        x = query if self.batch_first else query.transpose(0, 1)
        out = self.proj(self.attend(x))
        return (out if self.batch_first else out.transpose(0, 1)), None


def shifted_window_attention(
    x: torch.Tensor,
    qkv: nn.Linear,
    proj: nn.Linear,
    relative_position_bias: torch.Tensor,
    window_size: list[int],
    shift_size: list[int],
    num_heads: int,
    head_dim: int,
    attention_dropout: float,
    dropout: float,
    training: bool,
) -> torch.Tensor:
    """torchvision's Swin (V1) window attention with the head width held apart from the channel width.

    Args:
        x: [B, H, W, C].
        relative_position_bias: [1, num_heads, Ws·Ws, Ws·Ws].
    Returns:
        [B, H, W, C]. ``qkv`` and ``proj`` are called as modules (their hooks run).
    """
    b, h, w, c = x.shape
    pad_r = (window_size[1] - w % window_size[1]) % window_size[1]
    pad_b = (window_size[0] - h % window_size[0]) % window_size[0]
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    _, ph, pw, _ = x.shape
    shift = list(shift_size)
    if window_size[0] >= ph:
        shift[0] = 0
    if window_size[1] >= pw:
        shift[1] = 0
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    nw = (ph // window_size[0]) * (pw // window_size[1])
    x = x.view(b, ph // window_size[0], window_size[0], pw // window_size[1], window_size[1], c)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b * nw, window_size[0] * window_size[1], c)
    t = x.size(1)
    q, k, v = qkv(x).reshape(x.size(0), t, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    attn = (q * head_dim**-0.5).matmul(k.transpose(-2, -1)) + relative_position_bias
    if sum(shift) > 0:
        mask = x.new_zeros((ph, pw))
        hs = ((0, -window_size[0]), (-window_size[0], -shift[0]), (-shift[0], None))
        ws = ((0, -window_size[1]), (-window_size[1], -shift[1]), (-shift[1], None))
        count = 0
        for hh in hs:
            for ww in ws:
                mask[hh[0] : hh[1], ww[0] : ww[1]] = count
                count += 1
        mask = mask.view(ph // window_size[0], window_size[0], pw // window_size[1], window_size[1])
        mask = mask.permute(0, 2, 1, 3).reshape(nw, window_size[0] * window_size[1])
        mask = mask.unsqueeze(1) - mask.unsqueeze(2)
        mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
        attn = attn.view(x.size(0) // nw, nw, num_heads, t, t) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, num_heads, t, t)
    attn = F.dropout(F.softmax(attn, dim=-1), p=attention_dropout, training=training)
    x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), t, num_heads * head_dim)
    x = F.dropout(proj(x), p=dropout, training=training)
    x = x.view(b, ph // window_size[0], pw // window_size[1], window_size[0], window_size[1], c)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, c)
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x[:, :h, :w, :].contiguous()


class WindowHeads(ShiftedWindowAttention):
    """torchvision's Swin ``ShiftedWindowAttention`` with ``head_dim`` held apart (same parameter names).

    Made by :func:`convert` re-classing the module in place (its weights stay where they are).
    """

    head_dim: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.get_relative_position_bias()  # [1, num_heads, T, T]
        return shifted_window_attention(
            x, self.qkv, self.proj, bias, self.window_size, self.shift_size, self.num_heads, self.head_dim,
            self.attention_dropout, self.dropout, self.training,
        )  # fmt: skip


def convert(module: nn.Module) -> nn.Module | None:
    """A head-prunable module computing what ``module`` computes, or None when no conversion is needed/known.

    ``nn.MultiheadAttention`` → a new :class:`MultiheadSelfAttention` (weights copied); torchvision's Swin
    V1 window attention → the same module re-classed as :class:`WindowHeads`.
    """
    if isinstance(module, nn.MultiheadAttention):
        return MultiheadSelfAttention.from_mha(module)
    if type(module) is ShiftedWindowAttention:
        module.__class__ = WindowHeads
        module.head_dim = module.qkv.out_features // 3 // module.num_heads
        return module
    return None


def convert_(model: nn.Module) -> list[str]:
    """Swap every convertible attention module of ``model`` in place; returns their names."""
    done: list[str] = []
    for name, mod in list(model.named_modules()):
        if not name:
            continue
        try:
            new = convert(mod)
        except UnsupportedModelError as e:
            log.info("attention %r keeps its heads whole: %s", name, e)
            continue
        if new is not None:
            if new is not mod:
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, new)
            done.append(name)
    return done


@dataclass
class HeadLayout:
    """Where the heads of one attention module live.

    Attributes:
        qkv: child name of the fused Q/K/V Linear (rows [3][num_heads][head_dim]).
        proj: child name of the output projection (input columns [num_heads][head_dim]).
        num_heads, head_dim: current head count and width.
        per_head: (parameter name, dim) of parameters with one slice per head.
        attrs: attributes recomputed from the head count (``attr -> multiplier of num_heads``).
    """

    qkv: str
    proj: str
    num_heads: int
    head_dim: int
    per_head: list[tuple[str, int]] = field(default_factory=list)
    attrs: dict[str, int] = field(default_factory=dict)


def layout(module: nn.Module) -> HeadLayout | None:
    """The head layout of a head-prunable attention module, or None."""
    qkv, proj = getattr(module, "qkv", None), getattr(module, "proj", None)
    if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear)):
        return None
    heads = getattr(module, "num_heads", None)
    if not isinstance(heads, int) or heads < 1:
        return None
    if isinstance(module, (HeadAttention, WindowHeads)):
        hd = module.head_dim
        per_head = [("relative_position_bias_table", 1)] if isinstance(module, WindowHeads) else []
        return HeadLayout("qkv", "proj", heads, hd, per_head)
    kind = f"{type(module).__module__}.{type(module).__name__}"
    if kind == "timm.layers.attention.Attention":
        if module.gate is not None or not isinstance(module.norm, nn.Identity):
            return None  # a gate or norm over the whole inner width mixes heads
        return HeadLayout("qkv", "proj", heads, module.head_dim, attrs={"attn_dim": module.head_dim})
    if kind == "timm.models.swin_transformer.WindowAttention":
        hd = qkv.out_features // 3 // heads
        return HeadLayout("qkv", "proj", heads, hd, [("relative_position_bias_table", 1)])
    return None


@torch.no_grad()
def set_heads_(module: nn.Module, keep: torch.Tensor) -> None:
    """Keep heads ``keep`` (sorted LongTensor) of ``module``'s per-head parameters and set ``num_heads``.

    The Q/K/V and projection Linears are resized separately (they are ordinary group members).
    """
    lay = layout(module)
    if lay is None:
        raise UnsupportedModelError(f"{type(module).__name__} has no known head layout")
    for pname, dim in lay.per_head:
        p = getattr(module, pname)
        setattr(module, pname, nn.Parameter(p.detach().index_select(dim, keep.to(p.device)), requires_grad=p.requires_grad))
    module.num_heads = len(keep)
    for attr, mult in lay.attrs.items():
        setattr(module, attr, mult * len(keep))


def head_spec(module: nn.Module) -> dict:
    """The JSON spec ``load_slim`` uses to convert a freshly built module and set its head count."""
    return {"type": "heads", "num_heads": int(module.num_heads)}


def apply_head_spec_(root: nn.Module, name: str, spec: dict) -> None:
    """Convert module ``name`` of ``root`` if needed and keep its first ``spec['num_heads']`` heads."""
    mod = root.get_submodule(name)
    if layout(mod) is None:
        new = convert(mod)
        if new is None or layout(new) is None:
            raise UnsupportedModelError(f"layer {name!r} ({type(mod).__name__}) has no known head layout")
        if new is not mod:
            parent, _, child = name.rpartition(".")
            setattr(root.get_submodule(parent) if parent else root, child, new)
        mod = new
    set_heads_(mod, torch.arange(int(spec["num_heads"])))


def head_members(layout_: HeadLayout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Head index of each Q/K/V row [3·H·d], of each projection column [H·d], and of each head [H]."""
    h, d = layout_.num_heads, layout_.head_dim
    rows = (torch.arange(3 * h * d) // d) % h
    cols = torch.arange(h * d) // d
    return rows, cols, torch.arange(h)
