"""Dynamic Probabilistic Pruning (DPP): exactly-k-out-of-n Gumbel masks (METHODS.md section 2).

Logits Φ of shape [M, N] hold M independent rows of N candidates; each row keeps exactly k of them.

* **Hard mask** (forward): top-k of Φ + εG per row, G standard Gumbel noise scaled by ε. A fresh mask
  is drawn on every training forward, so every mini-batch sees a different k-subset.
* **Soft relaxation** (backward): sequential softmax without replacement. With C_{<j} the sum of the
  first j − 1 hard one-hots (the top-(j−1) entries of Φ + εG)::

      a_j = softmax((log(exp Φ ⊙ (1 − C_{<j})) + εG) / τ),      A_soft = Σ_{j=1..k} a_j

  ``log(exp Φ ⊙ (1 − C))`` is Φ on free entries and −∞ on chosen ones, so step j is a softmax of
  z = (Φ + εG)/τ over the entries not yet chosen. Sorting z in decreasing order (s_1 ≥ s_2 ≥ …, which
  is exactly the order in which the hard top-k picks them) gives the denominators in closed form,
  L_j = logsumexp(s_j, …, s_N), and the sum over steps becomes, for the entry in sorted position p,
  A_soft = exp(s_p + log Σ_{j ≤ min(p, k)} exp(−L_j)). That is the loop over k collapsed into one sort and
  two cumulative log-sum-exps: no Python loop, stable in log space (every term is ≤ 0 before the final
  log-count), cheap for conv layers with thousands of candidates. ``sequential_softmax_loop`` is the
  literal loop, kept as the reference the tests compare against.
* **Straight-through**: A = A_hard + (A_soft − stopgrad(A_soft)). This is the usual
  stopgrad(A_hard − A_soft) + A_soft, written so that the forward value is *bitwise* A_hard (exactly
  k ones per row, exact zeros) while the gradient is that of A_soft.
* **Eval**: deterministic top-k of Φ (no noise).
* **Banks** (tiled DPP): N is split into B contiguous banks of N/B candidates, each keeping k/B
  (hardware-balanced, N:M-style sparsity: k = 2, N = 4·B gives "2:4").

The module classes are the ``dpp`` gate kind (filter granularity: Φ [1, size], one coupled channel group)
and :class:`DPPMask`, a ``torch.nn.utils.parametrize`` parametrization W ↦ W ⊙ A for the kernel
(Φ [C_out, C_in]) and weight (Φ [out, in] / [C_out, C_in·kh·kw]) granularities.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.gates.base import Gate, register_gate

# A Φ entry of a structure removed by ``set_mask``: far below any trained logit, finite so that the
# cumulative log-sum-exps never see −∞ − (−∞).
_MASKED_LOGIT = -1e4


# -- pure functions ------------------------------------------------------------------------------------
def gumbel_noise(
    shape: torch.Size | tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard Gumbel noise G = −log(−log U), U ~ Uniform(0, 1) clamped away from 0 and 1."""
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    tiny = torch.finfo(dtype).tiny
    return -torch.log(-torch.log(u.clamp(tiny, 1.0 - torch.finfo(dtype).eps)))


def per_bank_k(n: int, k: int, banks: int = 1) -> int:
    """Check a k-of-n choice split into ``banks`` banks and return k per bank.

    Raises:
        ConfigError: k outside [1, n], banks < 1, or n or k not divisible by banks.
    """
    if banks < 1:
        raise ConfigError(f"banks must be >= 1, got {banks}")
    if not 1 <= k <= n:
        raise ConfigError(f"k must be in [1, {n}] (the number of candidates per row), got {k}")
    if n % banks:
        raise ConfigError(f"banks={banks} must divide the {n} candidates per row (n % banks = {n % banks})")
    if k % banks:
        raise ConfigError(f"banks={banks} must divide k={k} (each bank keeps k/banks)")
    return k // banks


def _to_banks(x: torch.Tensor, banks: int) -> torch.Tensor:
    """[M, N] → [M·B, N/B]: each bank becomes a row of its own (contiguous candidates)."""
    return x.reshape(x.shape[0] * banks, x.shape[1] // banks) if banks > 1 else x


def _from_banks(x: torch.Tensor, rows: int) -> torch.Tensor:
    return x.reshape(rows, -1)


def topk_mask(scores: torch.Tensor, k: int, banks: int = 1) -> torch.Tensor:
    """Float 0/1 mask [M, N] with exactly k ones per row (k/banks per bank): the top-k of ``scores``."""
    kb = per_bank_k(scores.shape[-1], k, banks)
    s = _to_banks(scores.detach(), banks)
    idx = s.topk(kb, dim=-1).indices
    mask = torch.zeros_like(s).scatter_(-1, idx, 1.0)
    return _from_banks(mask, scores.shape[0])


def deterministic_mask(logits: torch.Tensor, k: int, banks: int = 1) -> torch.Tensor:
    """Eval-mode DPP mask: top-k of Φ per row (per bank), no noise. Shape [M, N], values 0/1."""
    return topk_mask(logits, k, banks)


def sequential_softmax(z: torch.Tensor, order: torch.Tensor, k: int) -> torch.Tensor:
    """Σ_{j=1..k} a_j of the sequential softmax without replacement, in closed form.

    Args:
        z: scaled scores (Φ + εG)/τ, shape [R, N] (differentiable).
        order: LongTensor [R, N], the entries of each row sorted by decreasing z (the hard pick order).
        k: number of steps (≤ N).
    Returns:
        A_soft, shape [R, N]; every row sums to k.
    """
    s = z.gather(-1, order)  # sorted scores, differentiable
    lse_tail = torch.logcumsumexp(s.flip(-1), dim=-1).flip(-1)  # L_j = logsumexp(s_j..s_N)
    cum = torch.logcumsumexp(-lse_tail[:, :k], dim=-1)  # log Σ_{j≤m} exp(−L_j), m = 1..k
    pos = torch.arange(s.shape[-1], device=s.device).clamp_max(k - 1)
    soft_sorted = torch.exp(s + cum[:, pos])
    return torch.zeros_like(z).scatter(-1, order, soft_sorted)


def sequential_softmax_loop(logits: torch.Tensor, noise: torch.Tensor, k: int, tau: float, epsilon: float) -> torch.Tensor:
    """The literal relaxation of METHODS.md, one softmax per step (reference for tests; O(k·N) per row).

    Returns:
        A_soft = Σ_j softmax((log(exp Φ ⊙ (1 − C_{<j})) + εG)/τ), shape [M, N].
    """
    z = logits + epsilon * noise
    chosen = torch.zeros_like(logits, dtype=torch.bool)
    total = torch.zeros_like(logits)
    for _ in range(k):
        a = torch.softmax(z.masked_fill(chosen, float("-inf")) / tau, dim=-1)
        total = total + a
        pick = z.detach().masked_fill(chosen, float("-inf")).argmax(-1, keepdim=True)
        chosen = chosen.scatter(-1, pick, True)
    return total


def dpp_sample(
    logits: torch.Tensor,
    k: int,
    tau: float | torch.Tensor,
    epsilon: float = 0.03,
    banks: int = 1,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One training-mode DPP mask: hard top-k of Φ + εG forward, sequential softmax backward.

    Args:
        logits: Φ, shape [M, N].
        k: structures kept per row (k/banks per bank).
        tau: softmax temperature of the relaxation (> 0).
        epsilon: scale of the Gumbel noise in the hard sample and the relaxation.
        banks: split every row into this many contiguous banks (tiled DPP).
        noise: Gumbel noise [M, N] to use (drawn when None).
    Returns:
        A, shape [M, N]: forward values exactly the 0/1 hard mask (k ones per row), gradient of A_soft.
    """
    tau_f = float(tau)
    if not tau_f > 0:
        raise ConfigError(f"tau must be > 0, got {tau_f}")
    if logits.dim() != 2:
        raise ConfigError(f"logits must have shape [M, N], got {tuple(logits.shape)}")
    kb = per_bank_k(logits.shape[-1], k, banks)
    if noise is None:
        noise = gumbel_noise(logits.shape, generator, logits.device, logits.dtype)
    perturbed = _to_banks(logits + epsilon * noise, banks)
    order = perturbed.detach().argsort(dim=-1, descending=True)
    hard = torch.zeros_like(perturbed).scatter_(-1, order[:, :kb], 1.0)
    soft = sequential_softmax(perturbed / tau_f, order, kb)
    return _from_banks(hard + (soft - soft.detach()), logits.shape[0])


def soft_marginals(logits: torch.Tensor, k: int, tau: float | torch.Tensor, banks: int = 1) -> torch.Tensor:
    """Noise-free relaxation A_soft of Φ (each row sums to k; entries clamped to ≤ 1). Shape [M, N].

    The differentiable "expected keep" of a DPP mask, used by relaxed costs and as its gate values.
    """
    kb = per_bank_k(logits.shape[-1], k, banks)
    z = _to_banks(logits, banks)
    order = z.detach().argsort(dim=-1, descending=True)
    soft = sequential_softmax(z / float(tau), order, kb)
    return _from_banks(soft, logits.shape[0]).clamp_max(1.0)


def row_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(softmax φ_m) in nats for every row m of Φ [M, N] → [M] (the DPP entropy regulariser's term)."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def keep_count(keep: float, n: int, banks: int = 1) -> int:
    """k for a keep fraction of n candidates: a multiple of ``banks``, at least one per bank."""
    if not 0 < keep <= 1:
        raise ConfigError(f"keep must be in (0, 1], got {keep}")
    if banks < 1 or n % banks:
        raise ConfigError(f"banks={banks} must divide the {n} candidates per row")
    return banks * max(1, round(keep * n / banks))


# -- modules -------------------------------------------------------------------------------------------
class DPPState(nn.Module):
    """Logits Φ [M, N], the temperature buffer and the last two samples (for the flip rate)."""

    def __init__(self, rows: int, n: int, k: int, epsilon: float, tau: float, banks: int, init_std: float) -> None:
        super().__init__()
        per_bank_k(n, k, banks)
        if epsilon < 0:
            raise ConfigError(f"epsilon must be >= 0, got {epsilon}")
        if not tau > 0:
            raise ConfigError(f"tau must be > 0, got {tau}")
        self.k, self.banks, self.epsilon = int(k), int(banks), float(epsilon)
        self.lambda_h = 5e-3  # weight of this mask's entropy term; the method sets it per layer type
        self.logits = nn.Parameter(torch.randn(rows, n) * init_std)
        self.register_buffer("tau", torch.tensor(float(tau)))
        self.register_buffer("last_sample", torch.zeros(rows, n))
        self.register_buffer("prev_sample", torch.zeros(rows, n))
        self.register_buffer("fixed", torch.zeros(0))  # set by freeze_(): the final mask, used in both modes
        self.generator: torch.Generator | None = None

    @property
    def frozen(self) -> bool:
        return self.fixed.numel() > 0

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # a frozen mask's ``fixed`` is [M, N], an unfrozen one's is empty: take the saved shape
        fixed = state_dict.get(prefix + "fixed")
        if fixed is not None and fixed.shape != self.fixed.shape:
            self.fixed = torch.empty(fixed.shape, dtype=self.fixed.dtype, device=self.fixed.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.logits.requires_grad_(not self.frozen)

    def set_tau(self, tau: float) -> None:
        if not tau > 0:
            raise ConfigError(f"tau must be > 0, got {tau}")
        self.tau.fill_(float(tau))

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        if self.frozen:
            return self.fixed
        a = dpp_sample(logits, self.k, self.tau, self.epsilon, self.banks, generator=self.generator)
        with torch.no_grad():
            self.prev_sample.copy_(self.last_sample)
            self.last_sample.copy_(a.detach())
        return a

    def _deterministic(self, logits: torch.Tensor) -> torch.Tensor:
        return self.fixed if self.frozen else deterministic_mask(logits, self.k, self.banks)

    @torch.no_grad()
    def freeze_(self, logits: torch.Tensor | None = None) -> None:
        """Fix the mask to top-k(Φ) for good (train and eval); Φ stops training.

        Args:
            logits: the Φ to take the top-k of (default: ``self.logits``; a gate passes its keep-masked Φ).
        """
        self.fixed = deterministic_mask(self.logits if logits is None else logits, self.k, self.banks)
        self.logits.requires_grad_(False)

    @torch.no_grad()
    def summary(self, logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(eval mask, noise-free soft marginals), both [R, N], from one sort (the cheap path for metrics).

        Args:
            logits: Φ or some of its rows [R, N] (default: all of ``self.logits``).
        """
        if self.frozen:
            return self.fixed, self.fixed
        logits = self.logits if logits is None else logits
        phi = _to_banks(logits, self.banks)
        kb = self.k // self.banks
        order = phi.argsort(dim=-1, descending=True)
        hard = torch.zeros_like(phi).scatter_(-1, order[:, :kb], 1.0)
        soft = sequential_softmax(phi / float(self.tau), order, kb).clamp_max_(1.0)
        return _from_banks(hard, logits.shape[0]), _from_banks(soft, logits.shape[0])

    def probabilities(self, logits: torch.Tensor | None = None) -> torch.Tensor:
        """k-of-N inclusion probabilities p [M, N] of Φ (no grad; every row sums to k, each bank to k/banks).

        ``prunekit.metrics.inclusion_probabilities`` at the sampler's own scale: p = σ((φ − c)/ε), the row's c
        solved so that Σ p = k, approximates how often the training sampler top-k(Φ + εG) keeps each
        candidate; what ``prunekit.metrics.confidence`` / ``diversity`` summarise. A frozen mask (or ε = 0,
        no sampling) returns the 0/1 mask itself.

        Args:
            logits: Φ to use (default ``self.logits``; a gate passes its keep-masked Φ).
        """
        logits = self.logits if logits is None else logits
        if self.frozen:
            return self.fixed.detach().float()
        if self.epsilon <= 0:
            return deterministic_mask(logits.detach(), self.k, self.banks).float()
        from prunekit.metrics import inclusion_probabilities

        return inclusion_probabilities(logits, self.k, self.banks, temperature=self.epsilon)

    def entropy(self) -> torch.Tensor:
        """Σ_rows H(softmax φ_m) in nats (differentiable)."""
        return row_entropy(self.logits).sum()

    def pattern(self) -> str:
        """The N:M-style structure, e.g. ``"2:4 per row"`` or ``"2:4 per bank (4 banks)"``."""
        n = self.logits.shape[1]
        if self.banks > 1:
            return f"{self.k // self.banks}:{n // self.banks} per bank ({self.banks} banks)"
        return f"{self.k}:{n} per row"


@register_gate("dpp")
class DPPGate(Gate):
    """Filter-granularity DPP: keep exactly k of the ``size`` channels of a coupled group.

    Args:
        size: channels in the group (N; M = 1).
        critical: ignored beyond bookkeeping: a DPP gate always keeps k ≥ 1 channels.
        keep: fraction kept, k = round(keep · size) (a multiple of ``banks``, ≥ 1 per bank).
        epsilon: Gumbel noise scale (0.01–0.05 for conv layers).
        tau: initial relaxation temperature; the method's schedule sets ``tau`` every epoch.
        banks: tiled variant, size split into banks each keeping k/banks.
        init_std: Φ ~ N(0, init_std²).
    """

    def __init__(
        self,
        size: int,
        critical: bool = False,
        keep: float = 0.5,
        epsilon: float = 0.03,
        tau: float = 5.0,
        banks: int = 1,
        init_std: float = 0.5,
    ) -> None:
        super().__init__(size, critical)
        self.dpp = DPPState(1, size, keep_count(keep, size, banks), epsilon, tau, banks, init_std)

    @property
    def k(self) -> int:
        return self.dpp.k

    def _logits(self) -> torch.Tensor:
        phi = self.dpp.logits
        return phi if bool(self.keep.all()) else phi.masked_fill(~self.keep, _MASKED_LOGIT)

    def relaxed(self) -> torch.Tensor:
        return self.dpp._sample(self._logits())[0]

    def deterministic(self) -> torch.Tensor:
        return self.dpp._deterministic(self._logits())[0]

    def expected(self) -> torch.Tensor:
        return soft_marginals(self._logits(), self.k, self.dpp.tau, self.dpp.banks)[0]

    def decide(self, threshold: float) -> torch.Tensor:
        return self.deterministic().detach() > 0.5

    def probabilities(self) -> torch.Tensor:
        """k-of-``size`` inclusion probabilities of the keep-masked Φ, shape [1, size] (sums to k; removed → 0)."""
        return self.dpp.probabilities(self._logits())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.k}, tau={float(self.dpp.tau):g}, epsilon={self.dpp.epsilon:g}"


class DPPMask(DPPState):
    """Parametrization W ↦ W ⊙ A of a Conv/Linear weight (kernel or weight granularity).

    Register with ``torch.nn.utils.parametrize.register_parametrization(layer, "weight", mask)``; the layer
    then computes with the masked weight itself (``layer.weight`` *is* W ⊙ A), not a masked copy.

    Args:
        weight_shape: shape of the weight it masks: [out, in] (Linear) or [C_out, C_in/groups, *kernel].
        granularity: ``"kernel"`` (Φ [C_out, C_in/groups]: whole kxk kernels) or ``"weight"``
            (Φ [out, in] for Linear, [C_out, C_in/groups·kh·kw] for conv: single weights).
        keep: fraction of candidates kept per row.
    """

    def __init__(
        self,
        weight_shape: torch.Size | tuple[int, ...],
        granularity: str = "kernel",
        keep: float = 0.5,
        epsilon: float = 0.03,
        tau: float = 5.0,
        banks: int = 1,
        init_std: float = 0.5,
    ) -> None:
        shape = tuple(int(s) for s in weight_shape)
        if granularity not in ("kernel", "weight"):
            raise ConfigError(f"granularity must be 'kernel' or 'weight' for a weight mask, got {granularity!r}")
        if len(shape) < 2:
            raise ConfigError(f"weight_shape must have >= 2 dims, got {shape}")
        if granularity == "kernel" and len(shape) < 3:
            raise ConfigError(f"kernel granularity needs a conv weight [C_out, C_in, *k], got {shape}")
        n = shape[1] if granularity == "kernel" else math.prod(shape[1:])
        super().__init__(shape[0], n, keep_count(keep, n, banks), epsilon, tau, banks, init_std)
        self.granularity = granularity
        self.weight_shape = shape

    def mask(self) -> torch.Tensor:
        """The current mask [M, N] (sampled in training, top-k of Φ in eval)."""
        return self._sample(self.logits) if self.training else self._deterministic(self.logits)

    def expand(self, mask: torch.Tensor) -> torch.Tensor:
        """[M, N] → weight shape (a kernel mask covers its whole kh×kw kernel)."""
        if self.granularity == "kernel":
            return mask.reshape(mask.shape + (1,) * (len(self.weight_shape) - 2))
        return mask.reshape(self.weight_shape)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.expand(self.mask()).to(weight.dtype)

    def extra_repr(self) -> str:
        return f"{self.granularity}, {self.pattern()}, tau={float(self.tau):g}, epsilon={self.epsilon:g}"
