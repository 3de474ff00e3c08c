"""Modules that replace removed layers in a collapsed network, and the shared resize rule.

``resize_module_`` is the one mechanism that changes a layer's widths: collapse calls it with the kept
indices, ``load_slim`` with ``arange(n)`` before loading the saved weights over them.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.errors import UnsupportedModelError
from prunekit.graph import BN_TYPES, CONV_TYPES, CONVT_TYPES, is_depthwise


def _take(p: torch.Tensor | None, dim: int, keep: torch.Tensor | None) -> torch.Tensor | None:
    if p is None or keep is None:
        return p
    return p.detach().index_select(dim, keep.to(p.device))  # a new tensor: nothing shared


def _set_param(module: nn.Module, name: str, value: torch.Tensor | None) -> None:
    if value is None:
        return
    old = getattr(module, name)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        setattr(module, name, value)


@torch.no_grad()
def resize_module_(module: nn.Module, out_keep: torch.Tensor | None, in_keep: torch.Tensor | None) -> None:
    """Keep only ``out_keep`` output and ``in_keep`` input channels (LongTensors, sorted) of a layer, in place."""
    if isinstance(module, BN_TYPES) or isinstance(module, nn.PReLU):
        keep = out_keep if out_keep is not None else in_keep
        if keep is None:
            return
        if isinstance(module, nn.PReLU):
            _set_param(module, "weight", _take(module.weight, 0, keep))
            module.num_parameters = len(keep)
            return
        for n in ("weight", "bias", "running_mean", "running_var"):
            _set_param(module, n, _take(getattr(module, n), 0, keep))
        module.num_features = len(keep)
        return
    if isinstance(module, nn.Linear):
        _set_param(module, "weight", _take(_take(module.weight, 0, out_keep), 1, in_keep))
        _set_param(module, "bias", _take(module.bias, 0, out_keep))
        module.out_features, module.in_features = module.weight.shape
        return
    if isinstance(module, CONV_TYPES):
        if is_depthwise(module):
            keep = out_keep if out_keep is not None else in_keep
            if keep is None:
                return
            _set_param(module, "weight", _take(module.weight, 0, keep))
            _set_param(module, "bias", _take(module.bias, 0, keep))
            module.in_channels = module.out_channels = module.groups = len(keep)
            return
        _set_param(module, "weight", _take(_take(module.weight, 0, out_keep), 1, in_keep))
        _set_param(module, "bias", _take(module.bias, 0, out_keep))
        module.out_channels, module.in_channels = module.weight.shape[0], module.weight.shape[1]
        return
    if isinstance(module, CONVT_TYPES):
        # transposed conv weight is [C_in, C_out / groups, k...]
        _set_param(module, "weight", _take(_take(module.weight, 1, out_keep), 0, in_keep))
        _set_param(module, "bias", _take(module.bias, 0, out_keep))
        module.in_channels, module.out_channels = module.weight.shape[0], module.weight.shape[1]
        return
    raise UnsupportedModelError(f"cannot resize {type(module).__name__}")


@torch.no_grad()
def slice_parameter_(root: nn.Module, name: str, axis: int, keep: torch.Tensor) -> dict:
    """Keep ``keep`` (sorted LongTensor) along ``axis`` of the bare parameter ``name`` of ``root`` (e.g. a layer
    scale); returns its spec for ``load_slim``."""
    owner, _, attr = name.rpartition(".")
    module = root.get_submodule(owner) if owner else root
    _set_param(module, attr, _take(getattr(module, attr), axis, keep))
    return {"type": "param", "axis": int(axis), "size": len(keep)}


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


class _ShapeOnly(nn.Module):
    """Shared geometry of the stand-ins below: they read only the input's shape, never its values."""

    def __init__(self, kernel_size=(), stride=(), padding=(), dilation=(), linear: bool = False) -> None:
        super().__init__()
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        self.linear = bool(linear)

    @staticmethod
    def geometry(module: nn.Module) -> dict:
        if isinstance(module, nn.Linear):
            return {"linear": True}
        if isinstance(module.padding, str):
            raise UnsupportedModelError("string padding is not supported for branch removal")
        return {k: getattr(module, k) for k in ("kernel_size", "stride", "padding", "dilation")}

    def out_shape(self, x: torch.Tensor, channels: int) -> tuple[int, ...]:
        """The output shape the replaced layer had for input ``x``, with ``channels`` channels."""
        if self.linear:
            return (*x.shape[:-1], channels)
        spatial = [
            _out_size(n, k, s, p, d)
            for n, k, s, p, d in zip(x.shape[2:], self.kernel_size, self.stride, self.padding, self.dilation)
        ]
        return (x.shape[0], channels, *spatial)

    def spec(self) -> dict:
        return {
            "type": type(self).__name__,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": list(self.padding),
            "dilation": list(self.dilation),
            "linear": self.linear,
        }


class ConstantMap(_ShapeOnly):
    """Replaces a conv or linear layer whose inputs were all removed: it outputs its bias, broadcast.

    A residual branch whose inner channels are all closed reduces to this constant (then its BatchNorm
    turns it into β − γμ/√(σ²+ε)), so the block becomes its shortcut plus an exact per-channel constant.
    """

    def __init__(self, out_channels: int, kernel_size=(), stride=(), padding=(), dilation=(), linear: bool = False) -> None:
        super().__init__(kernel_size, stride, padding, dilation, linear)
        self.out_channels = int(out_channels)
        self.register_buffer("bias", torch.zeros(self.out_channels))

    @classmethod
    def like(cls, module: nn.Module, out_keep: torch.Tensor | None = None) -> ConstantMap:
        """A constant map standing for ``module`` with only ``out_keep`` output channels (default: all)."""
        n_out = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        keep = torch.arange(n_out) if out_keep is None else out_keep
        cm = cls(len(keep), **cls.geometry(module))
        if module.bias is not None:
            cm.bias.copy_(module.bias.detach()[keep])
        return cm

    def spec(self) -> dict:
        return {**super().spec(), "out_channels": self.out_channels}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = self.out_shape(x, self.out_channels)
        b = self.bias.to(x.dtype)
        return (b if self.linear else b.view(1, -1, *([1] * (len(shape) - 2)))).expand(shape)

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, linear={self.linear}"


class EmptyChannels(_ShapeOnly):
    """Replaces a layer whose outputs were all removed: emits a [N, 0, ...] tensor of the right shape."""

    @classmethod
    def like(cls, module: nn.Module) -> EmptyChannels:
        return cls(**cls.geometry(module))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(self.out_shape(x, 0))


class Removed(nn.Identity):
    """Stands where a BatchNorm over zero channels was (identity on an empty tensor)."""

    def spec(self) -> dict:
        return {"type": "Removed"}


SLIM_MODULES = {"ConstantMap": ConstantMap, "EmptyChannels": EmptyChannels, "Removed": Removed}


def build_slim_module(spec: dict) -> nn.Module:
    """Rebuild a replacement module from its spec (the allow-list used by ``load_slim``)."""
    kind = spec.get("type")
    if kind not in SLIM_MODULES:
        raise UnsupportedModelError(f"unknown slim module type {kind!r}")
    args = {k: v for k, v in spec.items() if k != "type"}
    return SLIM_MODULES[kind](**args)


def set_submodule_(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)
