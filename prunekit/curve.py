"""Post-training pruning curves: accuracy vs fraction of filters removed, with no fine-tuning.

The natural read-out of methods that make a network prunable *without retraining* (Batch Bridgeout, sDprun,
also Dropout or plain SGD as baselines): for each fraction f, remove ``floor(f · size)`` channels of every
prunable group, those whose output filters have the smallest norm (``rule="group"``: per coupled-channel
group; ``rule="per_layer"``: the Bridgeout paper's per-conv-layer rule, see :func:`prune_curve`), **collapse**
the network (the BN channel goes with its filter, so no constant β output survives, unlike zeroing the filter
alone), re-estimate the BatchNorm statistics on training batches (on by default: the stored ones describe the
unpruned network; no weight changes) and evaluate the slim network as it is. Every point is measured on the
real, smaller network: MACs, parameters, accuracy, batch-1 latency, and the collapse's max output difference
to the masked network.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from prunekit._device import resolve_device
from prunekit.augment import GatedModel, augment
from prunekit.bn import DEFAULT_BN_BATCHES, recalibrate_bn_
from prunekit.collapse import collapse
from prunekit.cost import count_macs, count_params
from prunekit.errors import ConfigError
from prunekit.gates import mask_gate_name
from prunekit.graph import CONV_TYPES, is_depthwise
from prunekit.latency import measure_latency
from prunekit.methods.bridgeout import remove_bridgeout_
from prunekit.train.evaluate import evaluate

logger = logging.getLogger(__name__)

DEFAULT_FRACTIONS = tuple(round(0.1 * i, 1) for i in range(10))
CRITERIA = ("l2", "l1")
RULES = ("group", "per_layer")
COLUMNS = ("fraction", "macs", "params", "accuracy", "latency_ms_b1", "max_diff", "macs_ratio", "params_ratio",
           "loss", "channels")
_WEIGHTED = CONV_TYPES + (nn.Linear,)


def _member_dim(member: Any) -> str:
    return getattr(member, "kind", None) or member.dim


def group_filter_scores(group: Any, criterion: str = "l2") -> torch.Tensor:
    """Importance of every channel of a coupled group: the norm of its output filters.

    The rows of every Conv/Linear "out" member that write into channel ``j`` are concatenated (coupled
    residual channels are one structure), BN parameters excluded (the reference's rule also caught BN
    weights, which is a different criterion).

    Args:
        group: an engine group (``.size``, ``.members`` with ``.module``, ``.dim``/``.kind``, ``.idxs``,
            ``.root_idxs``).
        criterion: ``"l2"`` (Euclidean norm) or ``"l1"`` (sum of absolute values).

    Returns:
        ``[group.size]`` float scores (0 for a group without Conv/Linear producers).
    """
    if criterion not in CRITERIA:
        raise ConfigError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    score = torch.zeros(int(group.size), dtype=torch.float64)
    for mem in group.members:
        if _member_dim(mem) != "out" or not isinstance(mem.module, _WEIGHTED):
            continue
        w = mem.module.weight.detach()
        rows = w.reshape(w.shape[0], -1)[mem.idxs.to(w.device)].double().cpu()
        part = rows.pow(2).sum(1) if criterion == "l2" else rows.abs().sum(1)
        score.index_add_(0, mem.root_idxs.cpu().long(), part)
    return score.sqrt() if criterion == "l2" else score


def _row_norms(w: torch.Tensor, idxs: torch.Tensor, criterion: str) -> torch.Tensor:
    rows = w.detach().reshape(w.shape[0], -1)[idxs.to(w.device)].double().cpu()
    return rows.pow(2).sum(1).sqrt() if criterion == "l2" else rows.abs().sum(1)


def layer_filter_scores(group: Any, criterion: str = "l2") -> torch.Tensor | None:
    """Importance of every channel under the paper's per-layer rule: each conv's own filter norms.

    For a group with one producing conv (every conv whose output is not coupled to another's: the inner convs
    of residual blocks, every conv of a VGG) this is that filter's L2 (or L1) norm, so ranking it prunes the
    layer on its own, as Batch Bridgeout's paper does. Channels coupled through a residual sum (the stem, every
    block's last conv and the shortcut projections of one stage) cannot leave one layer alone; such a group is
    scored by the **mean over its member convs of each conv's own filter norm** (not the norm of the
    concatenated rows, which :func:`group_filter_scores` uses and where the largest layer dominates).

    Args:
        group: an engine group (see :func:`group_filter_scores`).
        criterion: ``"l2"`` or ``"l1"``.

    Returns:
        ``[group.size]`` float scores, or None when no conv produces the group's channels (linear neurons,
        for instance): the per-layer rule prunes conv layers only.
    """
    if criterion not in CRITERIA:
        raise ConfigError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")

    total = torch.zeros(int(group.size), dtype=torch.float64)
    count = torch.zeros(int(group.size), dtype=torch.float64)
    for mem in group.members:
        # a depthwise conv only carries each channel through (its producer is the conv before it)
        if _member_dim(mem) != "out" or not isinstance(mem.module, CONV_TYPES) or is_depthwise(mem.module):
            continue
        root = mem.root_idxs.cpu().long()
        total.index_add_(0, root, _row_norms(mem.module.weight, mem.idxs, criterion))
        count.index_add_(0, root, torch.ones(len(root), dtype=torch.float64))
    if not bool((count > 0).any()):
        return None
    return total / count.clamp_min(1)


def keep_mask_for_fraction(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Bool keep mask removing the ``floor(fraction · n)`` lowest scores, always keeping ≥ 1 (ties: lower index first)."""
    n = scores.numel()
    k = min(int(math.floor(fraction * n + 1e-9)), n - 1)
    keep = torch.ones(n, dtype=torch.bool)
    if k > 0:
        order = torch.sort(scores, stable=True).indices
        keep[order[:k]] = False
    return keep


def _latency_ms_b1(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    return float(measure_latency(model, x[:1], batch_sizes=(1,), repeats=max(1, repeats))[1])


def _evaluate(model: nn.Module, loader: Iterable[Any], task: str, device: torch.device,
              max_batches: int | None) -> tuple[float, float]:
    m = evaluate(model, loader, task, device, max_batches=max_batches)
    return (m["acc"] if task == "classification" else m["miou"]), m["loss"]


def _plain_copy(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """A plain copy: Bridgeout noise removed (its parametrization holds the clean weight), a gated model
    (e.g. sDprun's finalized one) collapsed to the slim network its masks define."""
    if isinstance(model, GatedModel):
        return collapse(model, example_input.to(model.example_input.device))
    twin = copy.deepcopy(model)
    remove_bridgeout_(twin)
    return twin


def prune_curve(
    model: nn.Module,
    data_loader: Iterable[Any],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    criterion: str = "l2",
    example_input: torch.Tensor | None = None,
    device: str | torch.device = "cpu",
    *,
    task: str | None = None,
    max_batches: int | None = None,
    latency_repeats: int = 20,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    rule: str = "group",
    recalibrate_bn: bool = True,
    bn_loader: Iterable[Any] | None = None,
    bn_batches: int | None = DEFAULT_BN_BATCHES,
) -> pd.DataFrame:
    """Prune a trained model to each fraction of filters, collapse, re-estimate BN, and evaluate; no fine-tuning.

    Two rules choose the filters (both remove ``floor(f · n)`` of the ``n`` channels of every prunable group,
    always keeping one, and remove each channel's BatchNorm entry and its consumers' input slices with it):

    - ``rule="group"`` (default): every prunable coupled-channel group, ranked by the norm of all its output
      filters' rows concatenated (:func:`group_filter_scores`); linear layers' neurons included.
    - ``rule="per_layer"``: the Batch Bridgeout paper's rule, every **conv** layer separately, ranked by its own
      filter norms (:func:`layer_filter_scores`). A channel coupled through a residual sum cannot be removed
      from one conv alone, so each residual group (the stem or a stage's first shortcut projection, plus every
      block's last conv writing into that sum) loses the same fraction of its channels, ranked by the mean of
      its member convs' own filter norms; every other conv (the inner convs of the blocks) is pruned on its
      own. Groups with no conv producer (linear neurons) are left whole.

    BatchNorm statistics are stale after removing filters (and after training noise is removed): by default
    every pruned network's statistics are re-estimated on ``bn_batches`` batches (:func:`prunekit.bn.recalibrate_bn_`,
    "adaptive BN"; no weight changes, so this is still pruning without fine-tuning) before it is evaluated.

    Args:
        model: a trained network; not modified. Bridgeout noise, if still installed, is ignored; a gated model
            (``prunekit.augment``, e.g. sDprun's finalized one) is first collapsed with its current masks, so the
            fractions then apply to the channels it kept.
        data_loader: yields ``(images [N, C, H, W], targets)``; evaluated in full unless ``max_batches``.
        fractions: shares of channels to remove from every prunable group, each in [0, 1).
        criterion: ``"l2"`` (default) or ``"l1"`` norm of the output filters.
        example_input: ``[N, C, H, W]`` batch for the graph analysis and MACs (default: the loader's first
            image).
        device: where to evaluate and time.
        task: ``"classification"`` (accuracy) or ``"segmentation"`` (mIoU); default ``model.pk_task``.
        max_batches: evaluate on this many batches only.
        latency_repeats: timed batch-1 forwards per point (median reported).
        filter_fn: ``filter_fn(root_module, name)``: groups whose root fails it are never pruned.
        rule: ``"group"`` or ``"per_layer"`` (see above).
        recalibrate_bn: re-estimate BatchNorm statistics of every pruned network (default True); False
            evaluates with the statistics the trained model carries.
        bn_loader: the batches for that re-estimation: pass the **training** loader. When None, the images (not
            the labels) of ``data_loader`` are used and a warning is logged: statistics then come from the
            evaluation data, which is transductive.
        bn_batches: batches for the re-estimation (>= 1; ``None``: the whole loader; default 50, or the whole
            loader if it is shorter).

    Returns:
        One row per fraction: ``fraction``, ``macs`` (per sample, of the collapsed network), ``params``,
        ``accuracy`` (fraction in [0, 1]; mIoU for segmentation), ``latency_ms_b1``, ``max_diff`` (collapsed
        vs masked network, both with the trained model's statistics), ``macs_ratio`` and ``params_ratio`` (vs
        the unpruned network), ``loss``, ``channels`` (kept channels summed over groups). ``df.attrs`` holds
        ``rule``, ``criterion``, ``bn_recalibrated`` (bool) and ``bn_source`` (``"bn_loader"``,
        ``"data_loader"`` or None).
    """
    if criterion not in CRITERIA:
        raise ConfigError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    if rule not in RULES:
        raise ConfigError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    if bn_batches is not None and (isinstance(bn_batches, bool) or not isinstance(bn_batches, int) or bn_batches < 1):
        raise ConfigError(f"bn_batches must be an integer >= 1 or None, got {bn_batches!r}")
    fractions = [float(f) for f in fractions]
    if not fractions:
        raise ConfigError("fractions must not be empty, got []")
    for f in fractions:
        if not 0 <= f < 1:
            raise ConfigError(f"fractions must be in [0, 1), got {f}")
    task = task or getattr(model, "pk_task", "classification")
    if task not in ("classification", "segmentation"):
        raise ConfigError(f"task must be 'classification' or 'segmentation', got {task!r}")
    dev = resolve_device(device)
    if example_input is None:
        first = next(iter(data_loader), None)
        if first is None:
            raise ConfigError("data_loader is empty; pass example_input or a non-empty loader")
        example_input = first[0][:1]
    x = example_input.to(dev)
    bn_source = None
    if recalibrate_bn:
        bn_source = "bn_loader" if bn_loader is not None else "data_loader"
        if bn_loader is None:
            logger.warning("prune_curve: no bn_loader given, BatchNorm statistics are re-estimated on the "
                           "evaluation images (transductive); pass bn_loader=<training loader>")
            bn_loader = data_loader

    base = _plain_copy(model, x).to(dev).eval()
    dense_macs, dense_params = count_macs(base, x), count_params(base)
    gated = augment(base, x, gate=mask_gate_name(), filter_fn=filter_fn, inplace=True).eval()
    if rule == "group":
        scores: list[torch.Tensor | None] = [group_filter_scores(g, criterion) for g in gated.groups]
    else:
        scores = [layer_filter_scores(g, criterion) for g in gated.groups]
    rows = []
    for f in fractions:
        keep = [keep_mask_for_fraction(s, f) if s is not None else torch.ones(int(g.size), dtype=torch.bool)
                for g, s in zip(gated.groups, scores)]
        for g, k in zip(gated.groups, keep):
            g.set_mask(k)
        slim = collapse(gated, x).to(dev).eval()
        if recalibrate_bn:
            recalibrate_bn_(slim, bn_loader, bn_batches, dev)
        acc, loss = _evaluate(slim, data_loader, task, dev, max_batches)
        macs, params = count_macs(slim, x), count_params(slim)
        rows.append({
            "fraction": f,
            "macs": macs,
            "params": params,
            "accuracy": acc,
            "latency_ms_b1": _latency_ms_b1(slim, x, latency_repeats),
            "max_diff": float(slim.pk_collapse["max_diff"]),
            "macs_ratio": macs / dense_macs if dense_macs else float("nan"),
            "params_ratio": params / dense_params if dense_params else float("nan"),
            "loss": loss,
            "channels": int(sum(int(k.sum()) for k in keep)),
        })
        logger.info("prune_curve %.2f (%s rule, BN %s): acc %.4f, MACs %.3g (%.1f%%)", f, rule,
                    "re-estimated" if recalibrate_bn else "as trained", acc, macs, 100 * rows[-1]["macs_ratio"])
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    df.attrs.update(rule=rule, criterion=criterion, bn_recalibrated=bool(recalibrate_bn), bn_source=bn_source)
    return df
