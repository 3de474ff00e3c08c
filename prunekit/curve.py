"""Post-training pruning curves: accuracy vs fraction of filters removed, with no fine-tuning.

The natural read-out of methods that make a network prunable *without retraining* (Batch Bridgeout, sDprun,
also Dropout or plain SGD as baselines): for each fraction f, remove ``floor(f · size)`` channels of every
prunable coupled-channel group, those whose output filters have the smallest norm, **collapse** the network
(the BN channel goes with its filter, so no constant β output survives, unlike zeroing the filter alone), and
evaluate the slim network as it is. Every point is measured on the real, smaller network: MACs, parameters,
accuracy, batch-1 latency, and the collapse's max output difference to the masked network.
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

from prunekit._device import model_device, resolve_device
from prunekit.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_FRACTIONS = tuple(round(0.1 * i, 1) for i in range(10))
CRITERIA = ("l2", "l1")
COLUMNS = ("fraction", "macs", "params", "accuracy", "latency_ms_b1", "max_diff", "macs_ratio", "params_ratio",
           "loss", "channels")
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


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
    from prunekit.latency import measure_latency

    return float(measure_latency(model, x[:1], batch_sizes=(1,), repeats=max(1, repeats))[1])


def _evaluate(model: nn.Module, loader: Iterable[Any], task: str, device: torch.device,
              max_batches: int | None) -> tuple[float, float]:
    from prunekit.train.evaluate import evaluate

    m = evaluate(model, loader, task, device, max_batches=max_batches)
    return (m["acc"] if task == "classification" else m["miou"]), m["loss"]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data_loader: Iterable[Any], batches: int = 20,
                   device: str | torch.device | None = None) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics of a pruned network from training data; no weight changes.

    Removing filters changes what every later layer receives, so the running means and variances stored for
    the unpruned network no longer match and accuracy collapses even where the weights are still good.
    Forwarding a few training batches with BatchNorm in training mode (cumulative average: ``momentum=None``)
    restores them ("adaptive BN", Li et al., EagleEye, ECCV 2020). Nothing is trained: it is still pruning
    without fine-tuning.

    Args:
        model: the (collapsed) network; modified in place and left in eval mode.
        data_loader: yields ``(images [N, C, H, W], targets)`` from the training distribution.
        batches: how many batches to forward; >= 1.
        device: where to run (default: the model's device).

    Returns:
        ``model``.
    """
    if batches < 1:
        raise ConfigError(f"batches must be >= 1, got {batches}")
    dev = model_device(model, device)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    model.eval()
    if not bns:
        return model
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        seen = 0
        for i, batch in enumerate(data_loader):
            if i >= batches:
                break
            model(batch[0].to(dev))
            seen += 1
        if seen == 0:
            raise ConfigError("data_loader is empty; BatchNorm statistics cannot be re-estimated")
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.eval()
    return model


def _plain_copy(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """A plain copy: Bridgeout noise removed (its parametrization holds the clean weight), a gated model
    (e.g. sDprun's finalized one) collapsed to the slim network its masks define."""
    from prunekit.augment import GatedModel
    from prunekit.collapse import collapse
    from prunekit.methods.bridgeout import remove_bridgeout_

    if isinstance(model, GatedModel):
        return collapse(model, example_input.to(model.example_input.device))
    twin = copy.deepcopy(model)
    remove_bridgeout_(twin)
    return twin


def _mask_gate() -> str:
    # A gate whose eval value is exactly 1 × keep: the curve must not rescale the kept channels.
    from prunekit.gates import list_gates

    return "mask" if "mask" in list_gates() else "bernoulli"


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
    bn_loader: Iterable[Any] | None = None,
    bn_batches: int = 20,
) -> pd.DataFrame:
    """Prune a trained model to each fraction of filters per group, collapse, and evaluate with no fine-tuning.

    Args:
        model: a trained network; not modified. Bridgeout noise, if still installed, is ignored; a gated model
            (``prunekit.augment``, e.g. sDprun's finalized one) is first collapsed with its current masks, so the
            fractions then apply to the channels it kept.
        data_loader: yields ``(images [N, C, H, W], targets)``; evaluated in full unless ``max_batches``.
        fractions: shares of channels to remove from every prunable group, each in [0, 1).
        criterion: ``"l2"`` (default) or ``"l1"`` norm of the group's output filters.
        example_input: ``[N, C, H, W]`` batch for the graph analysis and MACs (default: the loader's first
            image).
        device: where to evaluate and time.
        task: ``"classification"`` (accuracy) or ``"segmentation"`` (mIoU); default ``model.pk_task``.
        max_batches: evaluate on this many batches only.
        latency_repeats: timed batch-1 forwards per point (median reported).
        filter_fn: ``filter_fn(root_module, name)``: groups whose root fails it are never pruned.
        bn_loader: training batches: when given, every pruned network's BatchNorm statistics are re-estimated
            from ``bn_batches`` of them (``recalibrate_bn``) before it is evaluated; weights stay untouched.
        bn_batches: batches for that re-estimation.

    Returns:
        One row per fraction: ``fraction``, ``macs`` (per sample, of the collapsed network), ``params``,
        ``accuracy`` (fraction in [0, 1]; mIoU for segmentation), ``latency_ms_b1``, ``max_diff`` (collapsed
        vs masked network), ``macs_ratio`` and ``params_ratio`` (vs the unpruned network), ``loss``,
        ``channels`` (kept channels summed over groups).
    """
    from prunekit.augment import augment
    from prunekit.collapse import collapse
    from prunekit.cost import count_macs, count_params

    if criterion not in CRITERIA:
        raise ConfigError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
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

    base = _plain_copy(model, x).to(dev).eval()
    dense_macs, dense_params = count_macs(base, x), count_params(base)
    gated = augment(base, x, gate=_mask_gate(), filter_fn=filter_fn, inplace=True).eval()
    scores = [group_filter_scores(g, criterion) for g in gated.groups]
    rows = []
    for f in fractions:
        keep = [keep_mask_for_fraction(s, f) for s in scores]
        for g, k in zip(gated.groups, keep):
            g.set_mask(k)
        slim = collapse(gated, x).to(dev).eval()
        if bn_loader is not None:
            recalibrate_bn(slim, bn_loader, bn_batches, dev)
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
        logger.info("prune_curve %.2f: acc %.4f, MACs %.3g (%.1f%%)", f, acc, macs, 100 * rows[-1]["macs_ratio"])
    return pd.DataFrame(rows, columns=list(COLUMNS))
