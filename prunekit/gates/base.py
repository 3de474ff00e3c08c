"""The gate module contract and the registry of gate kinds.

One gate holds the trainable logits of one coupled-channel group (``size`` structures) and turns them
into multipliers in [0, 1]:

* train mode: ``relaxed()``, the method's relaxation (may sample: hard-concrete, Bernoulli, Gumbel top-k);
* eval mode: ``deterministic()`` times the ``keep`` mask: what the network computes after training and
  exactly what ``collapse`` folds into the layers. A structure whose eval value is exactly 0 is removed.

``keep`` is a boolean buffer: structures pruned so far (by ``set_mask`` or ``prune_``) stay at 0 in both
modes. ``expected()`` is the differentiable keep-probability used by the relaxed cost (CRISP: the gate
itself; L0: P(z ≠ 0); growing: σ(βs)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from prunekit._registry import Registry
from prunekit.errors import ConfigError

_GATES: Registry[Callable[..., Gate]] = Registry("gate kind")


class Gate(nn.Module):
    """Base gate: subclasses define ``relaxed`` and ``deterministic`` (and usually ``expected``).

    Args:
        size: number of structures in the group.
        critical: the group must never close completely (stem, stride-2, residual sums).
    """

    name = "base"  #: the registry name (set by :func:`register_gate`), as ``Method.name`` for methods

    def __init__(self, size: int, critical: bool = False) -> None:
        super().__init__()
        if size < 1:
            raise ConfigError(f"gate size must be >= 1, got {size}")
        self.size = int(size)
        self.critical = bool(critical)
        self.register_buffer("keep", torch.ones(self.size, dtype=torch.bool))

    # -- relaxation ----------------------------------------------------------------------------
    def relaxed(self) -> torch.Tensor:
        """Train-mode gate values, shape [size]."""
        raise NotImplementedError

    def deterministic(self) -> torch.Tensor:
        """Eval-mode gate values before the keep mask, shape [size]."""
        raise NotImplementedError

    def expected(self) -> torch.Tensor:
        """Differentiable expected keep value used by the relaxed cost, shape [size]."""
        return self.deterministic()

    def decide(self, threshold: float) -> torch.Tensor:
        """Which structures survive a prune at ``threshold`` (bool [size])."""
        return self.deterministic().detach() > threshold

    # -- masks ------------------------------------------------------------------------------------
    def forward(self) -> torch.Tensor:
        value = self.relaxed() if self.training else self.deterministic()
        return value * self.keep.to(value.dtype)

    @torch.no_grad()
    def values(self) -> torch.Tensor:
        """Eval values (deterministic × keep), no grad: what collapse folds."""
        return self.deterministic().detach() * self.keep.to(torch.float32)

    @torch.no_grad()
    def hard_mask(self) -> torch.Tensor:
        """Bool [size]: structures that survive collapse (eval value ≠ 0)."""
        return self.values() != 0

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor | Any) -> None:
        """Force a keep (True) / remove (False) mask of length ``size``."""
        mask = torch.as_tensor(mask)
        if mask.shape != (self.size,):
            raise ConfigError(f"mask must have shape ({self.size},), got {tuple(mask.shape)}")
        if mask.dtype != torch.bool:
            if not torch.all((mask == 0) | (mask == 1)):
                raise ConfigError("mask must be boolean or 0/1 valued")
            mask = mask.bool()
        self.keep.copy_(mask.to(self.keep.device))

    @torch.no_grad()
    def decision(self, threshold: float) -> torch.Tensor:
        """Bool [size]: what a prune at ``threshold`` would keep now (no change to the gate).

        A critical gate always keeps its strongest structure.
        """
        decision = self.decide(threshold).to(self.keep.device) & self.keep
        if self.critical and not decision.any():
            decision[int(torch.argmax(self.deterministic().detach() * self.keep))] = True
        return decision

    @torch.no_grad()
    def prune_(self, threshold: float) -> int:
        """Remove structures below ``threshold`` for good; returns how many are kept."""
        decision = self.decision(threshold)
        self.keep.copy_(decision)
        return int(decision.sum())

    def extra_repr(self) -> str:
        return f"size={self.size}, kept={int(self.keep.sum())}, critical={self.critical}"


def register_gate(name: str) -> Callable[[type[Gate]], type[Gate]]:
    """Class decorator: register a gate kind under ``name`` (duplicates refused); sets ``cls.name``."""

    def deco(cls: type[Gate]) -> type[Gate]:
        cls.name = name
        _GATES.add(name, cls)
        return cls

    return deco


def list_gates() -> list[str]:
    return _GATES.names()


def create_gate(name: str, size: int, critical: bool = False, **options: Any) -> Gate:
    """Build a gate of the kind registered as ``name`` for a group of ``size`` structures."""
    cls = _GATES.get(name)
    try:
        return cls(size, critical=critical, **options)
    except TypeError as e:
        raise ConfigError(f"bad options for gate {name!r}: {e}") from None


def mask_gate_name() -> str:
    """The registered gate whose eval value is exactly 1 × keep, for pruning by fixed masks without rescaling the
    kept channels: ``mask`` (registered by ``prunekit.methods.baselines``) when it is loaded, else ``bernoulli``."""
    return "mask" if "mask" in _GATES else "bernoulli"
