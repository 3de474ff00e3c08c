"""L0 hard-concrete gate (Louizos et al. 2018): γ = −0.1, ζ = 1.1, β = 2/3."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.gates.base import Gate, register_gate
from prunekit.gates.relaxations import (
    HC_BETA,
    HC_GAMMA,
    HC_ZETA,
    hard_concrete_deterministic,
    hard_concrete_prob_nonzero,
    hard_concrete_sample,
)


@register_gate("hardconcrete")
class HardConcreteGate(Gate):
    """Stochastic in training, ``clamp(sigmoid(log α)(ζ−γ)+γ, 0, 1)`` at eval (exact zeros possible).

    Args:
        init_keep: initial P(keep) ≈ sigmoid(log α); 0.9 starts close to the dense network.
    """

    def __init__(
        self,
        size: int,
        critical: bool = False,
        init_keep: float = 0.9,
        beta: float = HC_BETA,
        gamma: float = HC_GAMMA,
        zeta: float = HC_ZETA,
    ) -> None:
        super().__init__(size, critical)
        p = torch.tensor(float(init_keep)).clamp(1e-3, 1 - 1e-3)
        self.log_alpha = nn.Parameter(torch.full((size,), float(torch.log(p) - torch.log1p(-p))))
        # log α is used as scale · log_alpha: a method may raise the scale (a temperature) so that the expected
        # L0 norm turns into the count of gates the eval rule keeps (see prunekit.methods.l0)
        self.register_buffer("scale", torch.tensor(1.0))
        self.beta, self.gamma, self.zeta = beta, gamma, zeta

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        state_dict.setdefault(prefix + "scale", torch.tensor(1.0))  # checkpoints written before the scale existed
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def effective_log_alpha(self) -> torch.Tensor:
        return self.log_alpha * self.scale

    def relaxed(self) -> torch.Tensor:
        z = hard_concrete_sample(self.effective_log_alpha, self.beta, self.gamma, self.zeta)
        if self.critical:
            z = z / z.max().clamp_min(1e-6)
        return z

    def deterministic(self) -> torch.Tensor:
        z = hard_concrete_deterministic(self.effective_log_alpha, self.gamma, self.zeta)
        if self.critical:
            z = z / z.max().clamp_min(1e-6)
        return z

    def expected(self) -> torch.Tensor:
        return hard_concrete_prob_nonzero(self.effective_log_alpha, self.beta, self.gamma, self.zeta)
