"""Layer sensitivity: how much accuracy each coupled-channel group costs when it alone loses channels.

The classic analysis users know from Distiller: for every prunable group and every fraction f, remove the
``floor(f · size)`` weakest channels of that group only (always keeping one), re-estimate the BatchNorm
statistics (:func:`prunekit.bn.recalibrate_bn_`, no weight changes), evaluate on a fixed subset, and record
the accuracy drop against the unpruned network measured the same way (also BN re-estimated, so the drop
isolates the pruning, not the re-estimation).

Channels are ranked by the run's own gate values when the model is gated (lowest first, ties by filter L2
norm), or by the L2 norm of their output filters otherwise. For a gated model the fractions count the
group's full width: channels the run already removed rank lowest, so a group the run pruned to 40 % shows
no drop up to f = 0.6, and the curve says how much more it could lose.

The channels are masked, not collapsed: a masked network computes exactly what the collapsed one does
(``prunekit.collapse`` checks it), and masking costs nothing per point.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from prunekit._device import resolve_device
from prunekit.augment import augment, find_gated
from prunekit.bn import batchnorm_layers, recalibrate_bn_
from prunekit.curve import group_filter_scores
from prunekit.errors import ConfigError
from prunekit.gates import mask_gate_name
from prunekit.methods.bridgeout import remove_bridgeout_
from prunekit.train.evaluate import evaluate

logger = logging.getLogger(__name__)

DEFAULT_FRACTIONS = tuple(round(0.1 * i, 1) for i in range(1, 10))
RANKINGS = ("auto", "gate", "l2")
COLUMNS = ("group", "size", "fraction", "removed", "accuracy", "drop")


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    out = [float(f) for f in fractions]
    if not out:
        raise ConfigError("fractions must not be empty, got []")
    for f in out:
        if not 0 < f < 1:
            raise ConfigError(f"fractions must be in (0, 1), got {f}")
    return out


def removal_order(group: Any, ranking: str = "gate") -> torch.Tensor:
    """The order in which a group's channels are removed: weakest first.

    Args:
        group: a :class:`~prunekit.augment.GroupHandle`.
        ranking: ``"gate"`` (eval gate values × keep mask; ties, e.g. a gate without values, by filter L2
            norm) or ``"l2"`` (the L2 norm of the channel's output filters, concatenated over the group).

    Returns:
        LongTensor [size]: channel positions, weakest first (stable: lower index first among equals).
    """
    if ranking not in ("gate", "l2"):
        raise ConfigError(f"ranking must be 'gate' or 'l2', got {ranking!r}")
    l2 = group_filter_scores(group.group, "l2").float()
    order = torch.sort(l2, stable=True).indices
    if ranking == "l2":
        return order
    values = group.values().detach().float().cpu()
    return order[torch.sort(values[order], stable=True).indices]


def _keep_without(order: torch.Tensor, size: int, fraction: float, keep: torch.Tensor) -> tuple[torch.Tensor, int]:
    k = min(int(fraction * size + 1e-9), size - 1)
    mask = keep.clone().bool().cpu()
    mask[order[:k]] = False
    if not mask.any():  # the run's own mask plus this removal closed the group: keep its strongest channel
        mask[order[-1]] = True
    return mask, size - int(mask.sum())


def layer_sensitivity(
    model: nn.Module,
    data_loader: Iterable[Any],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    *,
    bn_loader: Iterable[Any] | None = None,
    bn_batches: int | None = 8,
    max_batches: int | None = 4,
    ranking: str = "auto",
    task: str | None = None,
    example_input: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[float], None] | None = None,
) -> pd.DataFrame:
    """Prune each prunable group alone at each fraction and record the accuracy drop; no fine-tuning.

    Args:
        model: a trained network, gated (a :class:`~prunekit.augment.GatedModel` or a model holding one, as
            methods prepare it) or plain (it is gated with fixed masks on a copy). Not modified.
        data_loader: the evaluation data, ``(images, targets)``; its first ``max_batches`` batches are read once
            and reused for every point (the evaluation subset).
        fractions: shares of each group's channels to remove, each in (0, 1).
        bn_loader: training batches for re-estimating BatchNorm statistics (pass the training loader); None:
            the evaluation images are used and a warning is logged (transductive).
        bn_batches: batches for each re-estimation (>= 1, read once and reused; ``None``: the whole loader).
        max_batches: evaluation batches (>= 1; ``None``: the whole loader).
        ranking: ``"gate"`` (the run's gate values), ``"l2"`` (filter norms) or ``"auto"`` (gates when the
            model has gates, else L2).
        task: ``"classification"`` (accuracy) or ``"segmentation"`` (mIoU); default the model's ``pk_task``.
        example_input: ``[N, C, H, W]`` batch for gating a plain model (default: the first evaluation batch).
        device: where to evaluate.
        progress: called with the share of points done (0..1) after each point.

    Returns:
        One row per (group, fraction): ``group`` (root layer), ``size``, ``fraction``, ``removed`` (channels
        removed, the run's own removals included), ``accuracy``, ``drop`` (baseline − accuracy, in accuracy
        units). ``df.attrs``: ``baseline``, ``ranking``, ``bn_recalibrated``, ``samples``, ``seconds``.

    Raises:
        ConfigError: a bad argument (named in the message), an empty loader, or a model without prunable groups.
    """
    if ranking not in RANKINGS:
        raise ConfigError(f"ranking must be one of {', '.join(RANKINGS)}, got {ranking!r}")
    for name, value in (("bn_batches", bn_batches), ("max_batches", max_batches)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be an integer >= 1 or None, got {value!r}")
    fractions = _check_fractions(fractions)
    task = task or getattr(model, "pk_task", None) or "classification"
    if task not in ("classification", "segmentation"):
        raise ConfigError(f"task must be 'classification' or 'segmentation', got {task!r}")
    t0 = time.perf_counter()
    dev = resolve_device(device)
    batches = list(itertools.islice(data_loader, max_batches)) if max_batches else list(data_loader)
    if not batches:
        raise ConfigError("data_loader is empty; there is nothing to evaluate on")
    if bn_loader is None:
        logger.warning("layer_sensitivity: no bn_loader given, BatchNorm statistics are re-estimated on the "
                       "evaluation images (transductive); pass bn_loader=<training loader>")
        bn_data = batches
    else:
        bn_data = list(itertools.islice(bn_loader, bn_batches)) if bn_batches else list(bn_loader)

    work = copy.deepcopy(model).to(dev).eval()
    gated = find_gated(work)
    if ranking == "auto":
        ranking = "gate" if gated is not None else "l2"
    if gated is None:
        if ranking == "gate":
            raise ConfigError("ranking='gate' needs a gated model; this model has no gates (use 'l2' or 'auto')")
        remove_bridgeout_(work)
        x = (example_input if example_input is not None else batches[0][0][:1]).to(dev)
        work = gated = augment(work, x, gate=mask_gate_name(), inplace=True).eval()
    bns = batchnorm_layers(work)
    saved_stats = [{k: v.clone() for k, v in bn.state_dict().items()} for bn in bns]

    def measure() -> float:
        if bns:
            recalibrate_bn_(work, bn_data, None, dev)
        res = evaluate(work, batches, task, dev)
        for bn, st in zip(bns, saved_stats):  # every point starts from the trained statistics
            bn.load_state_dict(st)
        return float(res["acc"] if task == "classification" else res["miou"])

    baseline = measure()
    total = len(gated.groups) * len(fractions)
    rows: list[dict[str, Any]] = []
    for h in gated.groups:
        order = removal_order(h, ranking)
        keep = h.gate.keep.clone()
        try:
            for f in fractions:
                mask, removed = _keep_without(order, h.size, f, keep)
                h.set_mask(mask)
                acc = measure()
                rows.append({"group": h.name, "size": h.size, "fraction": f, "removed": removed,
                             "accuracy": acc, "drop": baseline - acc})
                if progress is not None:
                    progress(len(rows) / total)
        finally:
            h.gate.keep.copy_(keep)
        logger.info("sensitivity %s: drop %s", h.name,
                    ", ".join(f"{r['fraction']:.0%}→{r['drop']:+.3f}" for r in rows[-len(fractions):]))
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df.attrs.update(baseline=baseline, ranking=ranking, bn_recalibrated=bool(bns),
                    samples=int(sum(len(b[0]) for b in batches)), seconds=time.perf_counter() - t0)
    return df
