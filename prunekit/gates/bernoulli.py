"""Growing-method gate (Yuan, Savarese, Maire 2021): σ(βs) ⊙ Bernoulli(σ(βs)) with a per-unit β."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.gates.base import Gate, register_gate
from prunekit.gates.relaxations import bernoulli_gate


@register_gate("bernoulli")
class BernoulliGate(Gate):
    """Per-unit temperature β (buffer, raised by the method's schedule); eval keeps units with s > 0.

    ``last_sample`` holds the q drawn in the latest training forward (1 = computed, 0 = skipped), which the
    growing method uses to count training MACs and to raise β of the sampled units.

    Args:
        init: initial logit; negative values start a unit off (the growing seed architecture).
        beta0: initial temperature.
    """

    def __init__(self, size: int, critical: bool = False, init: float | torch.Tensor = 1.0, beta0: float = 1.0) -> None:
        super().__init__(size, critical)
        init_t = torch.as_tensor(init, dtype=torch.float32).expand(size).clone()
        self.logit = nn.Parameter(init_t)
        self.register_buffer("beta", torch.full((size,), float(beta0)))
        self.register_buffer("last_sample", torch.ones(size))
        self.generator: torch.Generator | None = None

    def relaxed(self) -> torch.Tensor:
        m, q = bernoulli_gate(self.logit, self.beta, self.generator)
        if self.critical and not bool(q.any()):
            # keep the most likely unit so the network is never cut in two
            i = int(torch.argmax(self.logit.detach()))
            q[i] = 1.0
            m = torch.sigmoid(self.beta * self.logit) * q
        self.last_sample.copy_(q.detach())
        return m

    def deterministic(self) -> torch.Tensor:
        on = (self.logit > 0).to(self.logit.dtype)
        if self.critical and not bool(on.any()):
            on = torch.zeros_like(on)
            on[int(torch.argmax(self.logit.detach()))] = 1.0
        return on

    def expected(self) -> torch.Tensor:
        return torch.sigmoid(self.beta * self.logit)

    def decide(self, threshold: float) -> torch.Tensor:
        return self.logit.detach() > 0
