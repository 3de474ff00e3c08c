"""Landing a method on a MACs target for the pareto suite, where its Config takes no ``target_macs``.

* DPP (filter): exactly-k masks per group; ``dpp_keep_for_target`` solves the ``keep`` fraction.
* Bridgeout / sDprun: post-hoc, ``l2_prune_to_macs`` removes the same fraction of lowest-L2 filters from
  every group until the target is met, with no fine-tuning (their papers' protocol).
"""

from __future__ import annotations

import copy

import torch


def dpp_keep_for_target(model: torch.nn.Module, x: torch.Tensor, target: float) -> tuple[float, float]:
    """The DPP ``keep`` fraction whose exactly-k masks (k = keep_count(keep, N) per group) give ``target`` MACs.

    Returns:
        (keep, the MACs ratio those masks give), nearest to ``target`` over a bisection of ``keep``.
    """
    from prunekit.augment import augment
    from prunekit.gates.dpp import keep_count
    from prunekit.methods._gated import mask_ratio

    gated = augment(copy.deepcopy(model), x, gate="mask")

    def ratio(keep: float) -> float:
        masks = [torch.arange(h.size) < keep_count(keep, h.size) for h in gated.groups]
        return mask_ratio(gated, masks)

    lo, hi = 1e-3, 1.0
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ratio(mid) < target else (lo, mid)
    best = min((lo, hi), key=lambda k: abs(ratio(k) - target))
    return best, ratio(best)


def l2_prune_to_macs(model: torch.nn.Module, x: torch.Tensor, target_macs: int) -> tuple[torch.nn.Module, float]:
    """Remove the same fraction of lowest-L2 filters from every group until MACs ≤ ``target_macs``; no fine-tuning.

    Args:
        model: trained network (Bridgeout noise still installed, or sDprun's finalized gated model); not modified.
        x: example input ``[1, C, H, W]``.
        target_macs: MACs per sample to meet (absolute, so the reference is the caller's dense network).

    Returns:
        (the collapsed slim network, the fraction removed per group).
    """
    from prunekit.augment import GatedModel, augment
    from prunekit.collapse import collapse
    from prunekit.cost import count_macs
    from prunekit.curve import group_filter_scores, keep_mask_for_fraction
    from prunekit.methods._gated import apply_masks, mask_ratio
    from prunekit.methods.bridgeout import remove_bridgeout_

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
        return mask_ratio(gated, masks(f)) * base_macs

    if macs(0.0) <= target_macs:
        f = 0.0
    else:
        lo, hi = 0.0, 0.99  # macs(lo) > target >= macs(hi) (or hi is as far as it goes)
        for _ in range(14):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if macs(mid) > target_macs else (lo, mid)
        f = hi
    apply_masks(gated, masks(f))
    return collapse(gated, x).eval(), f
