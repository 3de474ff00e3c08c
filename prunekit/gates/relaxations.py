"""Relaxations of a binary keep/remove decision, as pure functions (tested on their own).

Each maps trainable logits ``s`` (shape [n]) to gate values in [0, 1]. The gate modules in
``prunekit.gates`` hold the parameters and pick between these in train and eval mode.
"""

from __future__ import annotations

import torch

# Hard-concrete constants of Louizos et al. (2018): stretch interval (gamma, zeta) and temperature beta.
HC_GAMMA = -0.1
HC_ZETA = 1.1
HC_BETA = 2.0 / 3.0


def crisp_gate(s: torch.Tensor, a: float = 5.0, normalize: bool = False) -> torch.Tensor:
    """CRISP gate g = sigmoid(a·s), optionally divided by its maximum.

    With s initialised to 1 and a = 5, g ≈ 0.993; the gate switches over s in [-1, 1]. ``normalize``
    (g / max g) is used on groups that must never close completely (stem, stride-2, projections):
    the largest gate is always exactly 1, so at least one channel survives any threshold < 1.

    Args:
        s: logits, shape [n].
        a: scale (the inverse temperature); a → ∞ gives the step function 1[s > 0].
    Returns:
        gate values, shape [n].
    """
    g = torch.sigmoid(a * s)
    if normalize:
        g = g / g.max().clamp_min(1e-12)
    return g


def prune_basis(s: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """CRISP prune basis G(s) = exp(-(s / (2σ²))²), largest at s = 0 (g = 0.5).

    Penalising sqrt(mean G(s)²) pushes logits away from the undecided middle towards clearly on or off.
    """
    return torch.exp(-((s / (2.0 * sigma**2)) ** 2))


def hard_concrete_sample(
    log_alpha: torch.Tensor,
    beta: float = HC_BETA,
    gamma: float = HC_GAMMA,
    zeta: float = HC_ZETA,
    u: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample the hard-concrete gate z = clamp(sigmoid((log u − log(1−u) + log α)/β)·(ζ−γ)+γ, 0, 1).

    Exact zeros and ones have non-zero probability, which is what makes an L0 penalty differentiable.
    """
    if u is None:
        u = torch.rand(log_alpha.shape, generator=generator, device=log_alpha.device, dtype=log_alpha.dtype)
    u = u.clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / beta)
    return (s * (zeta - gamma) + gamma).clamp(0.0, 1.0)


def hard_concrete_deterministic(
    log_alpha: torch.Tensor, gamma: float = HC_GAMMA, zeta: float = HC_ZETA
) -> torch.Tensor:
    """Test-time hard-concrete gate: clamp(sigmoid(log α)·(ζ−γ)+γ, 0, 1) (can be exactly 0)."""
    return (torch.sigmoid(log_alpha) * (zeta - gamma) + gamma).clamp(0.0, 1.0)


def hard_concrete_prob_nonzero(
    log_alpha: torch.Tensor, beta: float = HC_BETA, gamma: float = HC_GAMMA, zeta: float = HC_ZETA
) -> torch.Tensor:
    """P(z ≠ 0) = sigmoid(log α − β·log(−γ/ζ)): the expected L0 norm per gate."""
    return torch.sigmoid(log_alpha - beta * torch.log(torch.tensor(-gamma / zeta)))


def bernoulli_gate(
    s: torch.Tensor, beta: torch.Tensor | float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Growing-method gate: m = σ(βs) ⊙ q with q ~ Bernoulli(σ(βs)).

    The gradient reaches s through σ(βs); units with q = 0 are skipped this step (their compute is
    saved, which is what the growing method reports as training MACs).

    Returns:
        (gate values m, the sampled q as float), both shape [n].
    """
    p = torch.sigmoid(beta * s)
    q = torch.bernoulli(p.detach(), generator=generator)
    return p * q, q
