"""Landing a post-hoc method on a MACs target for the pareto suite (its Config takes no ``target_macs``).

Bridgeout / sDprun: ``l2_prune_to_macs`` removes the same fraction of lowest-L2 filters from every group until
the target is met, with no fine-tuning (their papers' protocol). DPP's ``keep`` for a target is
``prunekit.methods.dpp.keep_for_target``.
"""

from __future__ import annotations

import copy

import torch

from prunekit.augment import GatedModel, augment
from prunekit.collapse import collapse
from prunekit.cost import cost_model, count_macs
from prunekit.curve import group_filter_scores, keep_mask_for_fraction
from prunekit.methods.bridgeout import remove_bridgeout_


def _macs_ratio(gated: GatedModel, masks: list[torch.Tensor]) -> float:
    """Hard MACs ratio (collapsed / dense) if every group of ``gated`` (no block gates) kept exactly ``masks``."""
    cm = cost_model(gated)
    return float(cm.macs([m.float() for m in masks])) / cm.dense_macs


def l2_prune_to_macs(model: torch.nn.Module, x: torch.Tensor, target_macs: int) -> tuple[torch.nn.Module, float]:
    """Remove the same fraction of lowest-L2 filters from every group until MACs ≤ ``target_macs``; no fine-tuning.

    Args:
        model: trained network (Bridgeout noise still installed, or sDprun's finalized gated model); not modified.
        x: example input ``[1, C, H, W]``.
        target_macs: MACs per sample to meet (absolute, so the reference is the caller's dense network).

    Returns:
        (the collapsed slim network, the fraction removed per group).
    """
    if isinstance(model, GatedModel):
        base = collapse(model, x)
    else:
        base = copy.deepcopy(model)
        remove_bridgeout_(base)
    base.eval()
    base_macs = count_macs(base, x)
    gated = augment(base, x, gate="mask", inplace=True).eval()
    scores = [group_filter_scores(g, "l2") for g in gated.groups]

    def masks(f: float) -> list[torch.Tensor]:
        return [keep_mask_for_fraction(s, f) for s in scores]

    def macs(f: float) -> float:
        return _macs_ratio(gated, masks(f)) * base_macs

    if macs(0.0) <= target_macs:
        f = 0.0
    else:
        lo, hi = 0.0, 0.99  # macs(lo) > target >= macs(hi) (or hi is as far as it goes)
        for _ in range(14):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if macs(mid) > target_macs else (lo, mid)
        f = hi
    for group, keep in zip(gated.groups, masks(f)):
        group.set_mask(keep)
    return collapse(gated, x).eval(), f
