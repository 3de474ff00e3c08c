"""CRISP gate: g = sigmoid(a·s), deterministic, logits initialised to +1 (METHODS.md §1)."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.gates.base import Gate, register_gate
from prunekit.gates.relaxations import crisp_gate


@register_gate("crisp")
class CrispGate(Gate):
    """Deterministic sigmoid gate; on critical groups normalised as g / max(g).

    Args:
        size: channels in the group.
        critical: normalise by the max so at least one channel survives.
        a: scale of the sigmoid (5 in the paper); may be annealed upward by the method.
        init: initial logit (+1: g ≈ 0.993).
    """

    def __init__(self, size: int, critical: bool = False, a: float = 5.0, init: float = 1.0) -> None:
        super().__init__(size, critical)
        if a <= 0:
            raise ConfigError(f"a must be > 0, got {a}")
        self.logit = nn.Parameter(torch.full((size,), float(init)))
        self.register_buffer("a", torch.tensor(float(a)))

    def relaxed(self) -> torch.Tensor:
        return crisp_gate(self.logit, float(self.a), normalize=self.critical)

    def deterministic(self) -> torch.Tensor:
        return self.relaxed()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, a={float(self.a):g}"
