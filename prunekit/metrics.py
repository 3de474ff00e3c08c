"""Mask statistics shared by every method, the app and the notebooks.

Selection masks (DPP) are rows of a probability matrix π [M, N]: row m of the logits Φ chooses among N
candidates with π_m = softmax(φ_m). The two information-theoretic summaries are *reconstructed*
definitions (METHODS.md section 2), normalised to [0, 1] by log N:

* **confidence** C = 1 − (1/M) Σ_m H(π_m) / log N: 1 when every row is deterministic (one-hot), 0 when
  every row is uniform. It says how decided the masks are.
* **diversity** D = [H(π̄) − (1/M) Σ_m H(π_m)] / log N with π̄ = (1/M) Σ_m π_m: the mutual information
  I(row; choice) between which row samples and which candidate it picks (rows drawn uniformly), over
  log N. 0 when all rows have the same distribution (every filter uses the same pattern); for M ≤ N
  disjoint one-hot rows it reaches log M / log N, and 1 needs M ≥ N rows spread over all candidates.

Binary gates (sigmoid, hard-concrete, Bernoulli) have one keep probability g per structure; their
entropy is the mean binary entropy H(g) in bits (∈ [0, 1]) and their confidence 1 − that.

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

HIST_BINS = 20
MAX_VALUES = 4096  # gate_values rows carry the full vector only up to this many entries
MAX_ROWS = 64  # gate_mean / gate_hist of kernel and weight masks are estimated from this many rows


# -- probability matrices ----------------------------------------------------------------------------
def selection_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """The per-row selection probability matrix π = softmax(Φ) along the last dim, [M, N] (no grad)."""
    return torch.softmax(logits.detach().float(), dim=-1)


def _entropy_rows(p: torch.Tensor) -> torch.Tensor:
    """H(p_m) in nats for every row of a probability matrix [M, N] → [M]; 0·log 0 = 0."""
    return -torch.special.xlogy(p, p).sum(-1)


def _as_probs(p: torch.Tensor) -> torch.Tensor:
    if p.dim() == 1:
        p = p.unsqueeze(0)
    if p.dim() != 2:
        raise ConfigError(f"probabilities must have shape [M, N], got {tuple(p.shape)}")
    return p.detach().float()


def mean_row_entropy(probs: torch.Tensor) -> float:
    """(1/M) Σ_m H(π_m) in nats for a probability matrix [M, N]."""
    return float(_entropy_rows(_as_probs(probs)).mean())


def confidence(probs: torch.Tensor) -> float:
    """C = 1 − (1/M) Σ_m H(π_m) / log N ∈ [0, 1] for a probability matrix [M, N] (rows sum to 1).

    1: every row is one-hot; 0: every row is uniform. Pass ``selection_probabilities(Φ)`` for logits.
    """
    p = _as_probs(probs)
    n = p.shape[-1]
    if n < 2:
        return 1.0
    return float(1.0 - _entropy_rows(p).mean() / math.log(n))


def diversity(probs: torch.Tensor) -> float:
    """D = [H(π̄) − (1/M) Σ_m H(π_m)] / log N ∈ [0, 1], π̄ the mean row ([M, N] probabilities).

    The normalised mutual information between the row index (uniform over M) and the chosen candidate:
    0 when all rows are equal, log M / log N for M ≤ N disjoint one-hot rows.
    """
    p = _as_probs(probs)
    n = p.shape[-1]
    if n < 2:
        return 0.0
    h_mean = _entropy_rows(p.mean(0, keepdim=True))[0]
    return float(((h_mean - _entropy_rows(p).mean()) / math.log(n)).clamp_min(0.0))


def confidence_diversity(probs: torch.Tensor) -> tuple[float, float]:
    """(C, D) sharing one pass over the row entropies (the fast path for many layers)."""
    p = _as_probs(probs)
    n = p.shape[-1]
    if n < 2:
        return 1.0, 0.0
    logn = math.log(n)
    h_rows = _entropy_rows(p).mean()
    if p.shape[0] == 1:  # one row: π̄ = π, no mutual information
        return float(1.0 - h_rows / logn), 0.0
    h_mean = _entropy_rows(p.mean(0, keepdim=True))[0]
    return float(1.0 - h_rows / logn), float(((h_mean - h_rows) / logn).clamp_min(0.0))


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
    from prunekit.gates.base import Gate

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
    * ``entropy`` (normalised, ∈ [0, 1]) and ``confidence`` = 1 − entropy: for DPP selectors the row
      entropy of π = softmax(Φ) over log N; for binary gates the mean binary entropy in bits;
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
