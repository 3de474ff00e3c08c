"""Mask statistics shared by every method, the app and the notebooks.

**k-of-N selection masks (DPP).** Row m of the logits Φ [M, N] keeps exactly k of its N candidates. What a
row has decided is described by its *inclusion probabilities* p_{m,i} = P(candidate i kept in row m), with
Σ_i p_{m,i} = k (:func:`inclusion_probabilities`). prunekit takes them from the k-subset distribution
P(S) ∝ exp(Σ_{i∈S} φ_{m,i} / T) that Φ defines at a scale T (for k = 1 this is softmax(φ_m / T)) in its
maximum-entropy form: p_{m,i} = σ((φ_{m,i} − c_m) / T), c_m solved so that the row sums to k. This is the
entropy-regularised top-k of φ_m (argmax_p ⟨φ_m, p⟩ + T Σ_i h(p_i) s.t. Σ_i p_i = k), the standard large-N
form of that distribution's marginals; it is exact in the two cases the metrics are anchored on: a uniform
row gives p = k/N everywhere, a row whose top-k logits lead by a wide margin (≫ T) gives p ∈ {0, 1}.
With h(p) = −p log p − (1 − p) log(1 − p) (binary entropy, nats) the two summaries are *reconstructed*
definitions (METHODS.md section 2), both in [0, 1]:

* **confidence** C = 1 − (1/M) Σ_m Σ_i h(p_{m,i}) / (N · h(k/N)): 1 when every row is decided (each
  candidate kept with probability 0 or 1), 0 when every row is uniform (p = k/N). The plain softmax
  entropy H(softmax φ_m) / log N is *not* used: a fully decided k-of-N row would score only
  1 − log k / log N with it.
* **diversity** D = [Σ_i h(p̄_i) − (1/M) Σ_m Σ_i h(p_{m,i})] / (N · h(k/N)), p̄ = (1/M) Σ_m p_m the mean
  row: how differently the rows choose. 0 when every row has the same p (all filters keep the same
  kernels, so a filter-level mask would do); 1 when the rows are decided and together use every candidate
  equally often (p̄ = k/N). Always 0 for a filter mask (M = 1); there the flip rate over time is the
  informative view. D ≥ 0 because h is concave.

Scale: p depends on φ/T. A DPP gate or mask (``probabilities()``) uses T = ε, the scale of its Gumbel noise,
so that p approximates how often its training sampler top-k(φ + εG) keeps each candidate: C = 1 means the
sampled masks no longer change, and a Φ whose spread is far above ε (the paper's N(0, 0.5²) with ε = 0.03)
is "decided" from the first step, which is exactly why such a Φ never explores. The hand-made examples of
notebook 03 use T = 1.

The same functions accept any [M, N] matrix whose rows sum to k (k = the row sum), e.g. softmax rows (k = 1).
A row with k = N (or k = 0) has no choice: it counts as decided (C = 1, D = 0).

**Binary gates** (sigmoid, hard-concrete, Bernoulli) have one keep probability g per structure and no
fixed k: their entropy is the mean binary entropy h(g) in bits (h / h(1/2), ∈ [0, 1]) and their
confidence 1 − that (1: every gate is 0 or 1; 0: every gate is 0.5).

Entropies here are in nats unless a name says bits. With N = 1 there is no choice: C = 1, D = 0.
Everything is computed without autograd and is cheap: see ``prunekit.bench.metrics``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.gates.base import Gate

HIST_BINS = 20
MAX_VALUES = 4096  # gate_values rows carry the full vector only up to this many entries
MAX_ROWS = 64  # gate_mean / gate_hist of kernel and weight masks are estimated from this many rows


# -- probability matrices ----------------------------------------------------------------------------
def selection_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """The per-row softmax π = softmax(Φ) along the last dim, [M, N] (no grad): the k = 1 selection.

    For a k-of-N mask with k > 1 use :func:`inclusion_probabilities` (rows summing to k).
    """
    return torch.softmax(logits.detach().float(), dim=-1)


_NEWTON_STEPS = 60  # safeguarded Newton/bisection iterations at most (typically < 10)


@torch.no_grad()
def inclusion_probabilities(logits: torch.Tensor, k: int, banks: int = 1, temperature: float = 1.0) -> torch.Tensor:
    """k-of-N inclusion probabilities p = σ((φ − c)/T) of every row of Φ [M, N], rows summing to k (no grad).

    c is solved per row (per bank: ``banks`` contiguous banks of N/banks candidates, each summing to
    k/banks) by a safeguarded Newton iteration (bisection whenever a Newton step leaves the bracket).
    See the module docstring for why this form.

    Args:
        logits: Φ, shape [M, N] (or [N], one row).
        k: candidates kept per row, 1 ≤ k ≤ N.
        banks: tiled masks: banks per row (must divide N and k).
        temperature: T, the scale of the logits (1: the scale softmax(φ) uses).
    Returns:
        float32 tensor [M, N] in [0, 1] on the device of ``logits``; every row (bank) sums to k (k/banks).
    Raises:
        ConfigError: k out of range, banks not dividing N and k, or temperature ≤ 0.
    """
    phi = logits.detach()
    if phi.dim() == 1:
        phi = phi.unsqueeze(0)
    if phi.dim() != 2:
        raise ConfigError(f"logits must have shape [M, N], got {tuple(logits.shape)}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    m, n = phi.shape
    if banks < 1 or n % banks or k % banks:
        raise ConfigError(f"banks={banks} must divide the {n} candidates per row and k={k}")
    if not 1 <= k <= n:
        raise ConfigError(f"k must be in [1, {n}] (the candidates per row), got {k}")
    nb, kb = n // banks, k // banks
    if kb == nb:
        return torch.ones(m, n, dtype=torch.float32, device=phi.device)
    # numpy: a filter mask is one short row, where torch's per-op overhead would dominate; float64 for
    # small masks (exact anchors), float32 (sums in float64) for wide kernel/weight masks (~6× faster)
    dtype = np.float64 if phi.numel() <= 1 << 16 else np.float32
    z = phi.cpu().double().numpy().reshape(m * banks, nb).astype(dtype) / dtype(temperature)
    p = _solve_inclusion(z, kb)
    return torch.from_numpy(p.reshape(m, n)).float().to(phi.device)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _solve_inclusion(z: np.ndarray, k: int) -> np.ndarray:
    """p = σ(z − c) with c per row such that Σ_i p = k (rows of z [R, n], 1 ≤ k < n), in z's dtype."""
    n = z.shape[1]
    shift = math.log(k / (n - k))  # logit(k/n): Σσ(z − c) ≥ k at c = min z − shift, ≤ k at max z − shift
    lo, hi = z.min(1).astype(np.float64) - shift, z.max(1).astype(np.float64) - shift
    c = np.clip(z.mean(1, dtype=np.float64) - shift, lo, hi)  # exact for a uniform row
    tol = (1e-9 if z.dtype == np.float64 else 1e-5) * n
    for _ in range(_NEWTON_STEPS):
        p = _sigmoid(z - c[:, None].astype(z.dtype))
        f = p.sum(1, dtype=np.float64) - k  # decreasing in c
        active = np.abs(f) > tol  # converged rows stay where they are
        if not active.any():
            return p
        lo = np.where(f > 0, c, lo)
        hi = np.where(f > 0, hi, c)
        slope = (p * (1 - p)).sum(1, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = c + f / slope
        ok = (slope > 1e-12) & (newton > lo) & (newton < hi)
        c = np.where(active, np.where(ok, newton, (lo + hi) / 2), c)
    return _sigmoid(z - c[:, None].astype(z.dtype))


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """h(p) = −p log p − (1 − p) log(1 − p) elementwise, in nats; 0·log 0 = 0."""
    p = p.clamp(0.0, 1.0)
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p))


def _h(p: np.ndarray) -> np.ndarray:
    """Binary entropy in nats of a float64 array (numpy: cheap for the many short rows of filter masks)."""
    p = np.clip(p, 0.0, 1.0)
    q = 1.0 - p
    with np.errstate(divide="ignore", invalid="ignore"):
        return -(np.where(p > 0, p * np.log(p), 0.0) + np.where(q > 0, q * np.log(q), 0.0))


def _entropy_rows(p: torch.Tensor) -> torch.Tensor:
    """H(p_m) in nats for every row of a probability matrix [M, N] → [M]; 0·log 0 = 0."""
    return -torch.special.xlogy(p, p).sum(-1)


def _as_probs(p: torch.Tensor) -> torch.Tensor:
    if p.dim() == 1:
        p = p.unsqueeze(0)
    if p.dim() != 2:
        raise ConfigError(f"probabilities must have shape [M, N], got {tuple(p.shape)}")
    return p.detach().double()


def mean_row_entropy(probs: torch.Tensor) -> float:
    """(1/M) Σ_m H(π_m) in nats for a softmax-probability matrix [M, N] (rows summing to 1)."""
    return float(_entropy_rows(_as_probs(probs)).mean())


def _row_terms(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Σ_i h(p_{m,i}) per row [M], the uniform row's N·h(k_m/N) per row [M]) for inclusion probabilities."""
    n = p.shape[-1]
    return _h(p).sum(-1), n * _h(p.sum(-1) / n)


def _ratio(h: np.ndarray, base: np.ndarray) -> np.ndarray:
    """h / base, 0 where base is 0 (k = 0 or k = N: no choice)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(base > 1e-12, h / np.maximum(base, 1e-12), 0.0)


def _as_array(probs: torch.Tensor) -> np.ndarray:
    return _as_probs(probs).cpu().numpy()


def confidence(probs: torch.Tensor) -> float:
    """C = 1 − (1/M) Σ_m Σ_i h(p_{m,i}) / (N · h(k/N)) ∈ [0, 1] for inclusion probabilities [M, N].

    Rows sum to k (their own row sum is taken as k). 1: every row decided (p ∈ {0, 1}); 0: every row
    uniform (p = k/N). Pass ``inclusion_probabilities(Φ, k)`` for logits (a DPP gate's or mask's
    ``probabilities()`` returns exactly that).
    """
    return confidence_diversity(probs)[0]


def diversity(probs: torch.Tensor) -> float:
    """D = [Σ_i h(p̄_i) − (1/M) Σ_m Σ_i h(p_{m,i})] / (N · h(k/N)) ∈ [0, 1], p̄ the mean row ([M, N]).

    0 when all rows have the same inclusion probabilities; 1 when every row is decided and the rows together
    keep every candidate equally often (p̄ = k/N).
    """
    return confidence_diversity(probs)[1]


def confidence_diversity(probs: torch.Tensor) -> tuple[float, float]:
    """(C, D) of inclusion probabilities [M, N], sharing one pass over the row entropies."""
    p = _as_array(probs)
    if p.shape[-1] < 2:
        return 1.0, 0.0
    h, base = _row_terms(p)
    c = float(np.clip(1.0 - _ratio(h, base).mean(), 0.0, 1.0))
    if p.shape[0] == 1:  # one row: p̄ = p, nothing to differ
        return c, 0.0
    h_bar, base_bar = _row_terms(p.mean(0, keepdims=True))
    d = _ratio(np.maximum(h_bar - h.mean(), 0.0), base_bar)[0]
    return c, float(np.clip(d, 0.0, 1.0))


# -- binary gates ---------------------------------------------------------------------------------------
def binary_entropy_bits(g: torch.Tensor) -> float:
    """Mean binary entropy H(g) = −g log2 g − (1−g) log2(1−g) of gate probabilities g ∈ [0, 1], in bits."""
    g = g.detach().float().clamp(0.0, 1.0).flatten()
    if g.numel() == 0:
        return 0.0
    h = -(torch.special.xlogy(g, g) + torch.special.xlogy(1 - g, 1 - g)) / math.log(2)
    return float(h.mean())


def binary_confidence(g: torch.Tensor) -> float:
    """1 − mean binary entropy in bits: 1 when every gate is exactly 0 or 1, 0 when all are 0.5."""
    return 1.0 - binary_entropy_bits(g)


# -- masks ----------------------------------------------------------------------------------------------
def sparsity(mask: torch.Tensor) -> float:
    """Fraction of entries that are zero (removed) in a mask of any shape."""
    m = mask.detach()
    return float((m == 0).sum()) / max(m.numel(), 1)


def flip_rate(previous: torch.Tensor, current: torch.Tensor) -> float:
    """Fraction of mask entries that changed between two consecutive samples (same shape)."""
    if previous.shape != current.shape:
        raise ConfigError(f"masks must have the same shape, got {tuple(previous.shape)} and {tuple(current.shape)}")
    return float((previous.detach() != current.detach()).sum()) / max(current.numel(), 1)


def nm_structure(mask: torch.Tensor, banks: int = 1) -> dict[str, Any]:
    """The N:M-style structure of a 0/1 mask [M, N] split into ``banks`` banks per row.

    Returns:
        ``{"pattern": "k:n per row|bank", "k": k, "n": n, "exact": bool}``: ``exact`` says every bank
        of every row keeps the same k (what hardware N:M sparsity needs); k is the maximum per bank.
    """
    m = mask.detach().reshape(mask.shape[0], -1)
    if banks < 1 or m.shape[1] % banks:
        raise ConfigError(f"banks={banks} must divide the {m.shape[1]} columns of the mask")
    counts = (m != 0).reshape(m.shape[0] * banks, -1).sum(-1)
    n = m.shape[1] // banks
    k = int(counts.max()) if counts.numel() else 0
    unit = "bank" if banks > 1 else "row"
    return {"pattern": f"{k}:{n} per {unit}", "k": k, "n": n, "exact": bool((counts == k).all())}


def gate_histogram(values: torch.Tensor, bins: int = HIST_BINS, lo: float = 0.0, hi: float = 1.0) -> dict[str, list]:
    """Histogram of gate values: ``{"edges": [bins + 1 floats], "counts": [bins ints]}`` over [lo, hi]."""
    v = values.detach().float().flatten().clamp(lo, hi)
    # bincount of bin indices: same bins as torch.histc (the top edge belongs to the last bin), ~10× faster
    idx = ((v - lo) * (bins / (hi - lo))).long().clamp_(0, bins - 1)
    counts = torch.bincount(idx, minlength=bins)
    return {"edges": list(_edges(bins, lo, hi)), "counts": counts.tolist()}


@functools.lru_cache(maxsize=32)
def _edges(bins: int, lo: float, hi: float) -> tuple[float, ...]:
    return tuple(np.round(np.linspace(lo, hi, bins + 1), 6).tolist())


def _rounded(values: torch.Tensor, decimals: int = 5) -> list[float]:
    return np.round(values.detach().double().flatten().cpu().numpy(), decimals).tolist()


# -- per-layer rows for any gated model -----------------------------------------------------------------
def _is_selection(module: nn.Module) -> bool:
    """A DPP-style k-of-N selector: exposes ``probabilities()`` ([M, N]) and a hard/eval mask."""
    return callable(getattr(module, "probabilities", None))


def _selectors(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(layer name, gate or mask module) for every gate and DPP weight mask in ``model``, in order."""
    names: dict[int, str] = {}
    for h in getattr(model, "groups", None) or []:
        gate = getattr(h, "gate", None)
        if gate is not None:
            names[id(gate)] = str(h.name)
    for branch, gate in zip(getattr(model, "branches", None) or [], getattr(model, "block_gates", None) or []):
        names[id(gate)] = f"block:{branch.name}"  # a whole residual branch (block gate)
    out = []
    for path, module in model.named_modules():
        if isinstance(module, Gate):
            out.append((names.get(id(module), path), module))
        elif _is_selection(module) and hasattr(module, "expand"):
            # a DPPMask parametrization: "<layer>.parametrizations.weight.<i>" → "<layer>"
            out.append((path.split(".parametrizations.")[0], module))
    return out


def _row(layer: str, name: str, value: float, data: Any = None) -> dict[str, Any]:
    row: dict[str, Any] = {"layer": layer, "name": name, "value": float(value)}
    if data is not None:
        row["data"] = data
    return row


@torch.no_grad()
def gate_layer_rows(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> list[dict[str, Any]]:
    """The per-layer metric rows of ``prunekit.methods.base`` for any gated model, every gate kind.

    Per gate (filter granularity, one row per prunable group) or DPP weight mask (kernel/weight):

    * ``gate_mean``, ``gate_hist`` (data {"edges", "counts"} over [0, 1]), ``gate_values`` (data: the
      values when ≤ 4096): the gate's *expected* keep values (sigmoid gates: the gate; hard-concrete:
      P(z ≠ 0); Bernoulli: σ(βs); DPP: the noise-free relaxation of Φ, rows summing to k) times the
      keep mask; for kernel/weight masks with more than 64 rows, estimated from 64 evenly spaced rows;
    * ``keep_ratio`` (surviving fraction at the eval/hard mask) and ``sparsity`` = 1 − keep_ratio;
    * ``entropy`` (normalised, ∈ [0, 1]) and ``confidence`` = 1 − entropy: for DPP selectors the k-of-N
      form of the module docstring, (1/M) Σ_m Σ_i h(p_{m,i}) / (N·h(k/N)) over the inclusion probabilities
      p = ``probabilities()`` (every row; a DPP gate's removed structures count as decided); for binary
      gates the mean binary entropy in bits;
    * ``diversity`` (DPP selectors only; always 0 for a single-row filter mask);
    * ``flip_rate``: DPP: between the last two training samples; other gates: between the hard mask now
      and at the previous call with the same ``state`` dict (omitted on the first call).

    Args:
        model: a GatedModel, or any model holding DPP weight masks.
        state: a dict owned by the caller, remembered between calls for the flip rate of binary gates.
    Returns:
        list of ``{"layer", "name", "value"[, "data"]}`` dicts.
    """
    rows: list[dict[str, Any]] = []
    for layer, mod in _selectors(model):
        keep_buf = getattr(mod, "keep", None)
        dpp = getattr(mod, "dpp", mod)
        hard = None
        if hasattr(dpp, "summary") and keep_buf is not None:
            # a DPP gate: Φ masked by its keep buffer; eval mask and marginals from one sort
            hard, expected = dpp.summary(mod._logits())
            hard, expected = hard * keep_buf, expected * keep_buf
        elif hasattr(dpp, "summary"):
            # a DPP weight mask: exactly k of N per row, so the keep ratio needs no mask; the marginals
            # (one sort per row) come from at most MAX_ROWS evenly spaced rows
            rows_idx = _sample_rows(dpp.logits.shape[0])
            expected = dpp.summary(dpp.logits[rows_idx] if rows_idx is not None else None)[1]
            keep_ratio = dpp.k / dpp.logits.shape[1]
        else:
            expected = mod.expected().detach().float()
            hard = mod.deterministic().detach()
            if keep_buf is not None:
                expected, hard = expected * keep_buf, hard * keep_buf
        if hard is not None:
            keep_ratio = float((hard != 0).float().mean())
        rows.append(_row(layer, "gate_mean", float(expected.float().mean())))
        rows.append(_row(layer, "gate_hist", float(expected.float().mean()), gate_histogram(expected)))
        if expected.numel() <= MAX_VALUES:
            rows.append(_row(layer, "gate_values", expected.numel(), _rounded(expected)))
        rows.append(_row(layer, "keep_ratio", keep_ratio))
        rows.append(_row(layer, "sparsity", 1.0 - keep_ratio))
        if _is_selection(mod):
            c, d = confidence_diversity(mod.probabilities())
            rows.append(_row(layer, "entropy", 1.0 - c))
            rows.append(_row(layer, "confidence", c))
            rows.append(_row(layer, "diversity", d))
            last, prev = _samples(mod)
            if last is not None and bool(prev.any()):
                rows.append(_row(layer, "flip_rate", flip_rate(prev, last)))
        else:
            h = binary_entropy_bits(expected)
            rows.append(_row(layer, "entropy", h))
            rows.append(_row(layer, "confidence", 1.0 - h))
            if state is not None:
                hb = hard.detach().bool().cpu()
                old = state.get(layer)
                if old is not None and old.shape == hb.shape:
                    rows.append(_row(layer, "flip_rate", flip_rate(old, hb)))
                state[layer] = hb
    return rows


def _sample_rows(m: int) -> torch.Tensor | None:
    if m <= MAX_ROWS:
        return None
    return torch.linspace(0, m - 1, MAX_ROWS).round().long().unique()


def _samples(mod: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    state = getattr(mod, "dpp", mod)
    last, prev = getattr(state, "last_sample", None), getattr(state, "prev_sample", None)
    return last, prev
