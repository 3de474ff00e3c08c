"""Evaluation: top-1 accuracy for classification, mIoU and pixel accuracy for segmentation."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit._device import resolve_device
from prunekit.errors import ConfigError

TASKS = ("classification", "segmentation")
IGNORE_INDEX = 255  # label value excluded from segmentation loss and metrics


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Confusion matrix ``[num_classes, num_classes]`` (rows: true class, columns: predicted class).

    Args:
        pred: predicted labels, any shape, integer.
        target: true labels, same shape; pixels equal to ``IGNORE_INDEX`` are skipped.
        num_classes: number of classes.
    """
    keep = target != IGNORE_INDEX
    idx = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def miou_from_confusion(cm: torch.Tensor) -> tuple[float, float]:
    """Mean IoU over the classes present (non-empty union of truth and prediction), and pixel accuracy."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    present = union > 0
    miou = (tp[present] / union[present]).mean().item() if present.any() else 0.0
    total = cm.sum().item()
    pixel_acc = tp.sum().item() / total if total else 0.0
    return miou, pixel_acc


def task_loss(output: torch.Tensor, target: torch.Tensor, task: str, *, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy for both tasks: logits ``[N, C]`` vs ``[N]``, or ``[N, C, H, W]`` vs ``[N, H, W]``.

    ``label_smoothing`` (training, classification): the target puts ``1 - ε + ε/C`` on the true class and ``ε/C``
    on every other.
    """
    if task == "segmentation":
        return F.cross_entropy(output, target.long(), ignore_index=IGNORE_INDEX)
    if label_smoothing:
        return F.cross_entropy(output, target, label_smoothing=label_smoothing)
    return F.cross_entropy(output, target)


def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    task: str = "classification",
    device: str | torch.device | None = None,
    *,
    max_batches: int | None = None,
    channels_last: bool = False,
) -> dict[str, float]:
    """Evaluate ``model`` on every batch of ``loader`` in eval mode under ``torch.inference_mode``.

    Args:
        model: maps images ``[N, C, H, W]`` to logits ``[N, K]`` (classification) or ``[N, K, H, W]``
            (segmentation).
        loader: yields ``(images, targets)``; targets ``[N]`` class indices or ``[N, H, W]`` masks.
        task: ``"classification"`` or ``"segmentation"``.
        device: where to run; ``None`` uses the device of the model's first parameter.
        max_batches: stop after this many batches (quick looks).
        channels_last: move inputs to channels-last memory format.

    Returns:
        classification: ``{"acc", "loss", "samples"}``; segmentation: ``{"miou", "pixel_acc", "loss", "samples"}``.
        Accuracies are fractions in [0, 1]; the loss is the mean per-sample cross-entropy.
    """
    if task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if device is None:
        first = next(model.parameters(), None)
        dev = first.device if first is not None else torch.device("cpu")
    else:
        dev = resolve_device(device)
    was_training = model.training
    model.eval()
    loss_sum, correct, samples = 0.0, 0, 0
    cm: torch.Tensor | None = None
    try:
        with torch.inference_mode():
            for i, (x, y) in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                x = x.to(dev, non_blocking=True)
                if channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = y.to(dev, non_blocking=True)
                out = model(x).float()
                n = x.shape[0]
                loss_sum += task_loss(out, y, task).item() * n
                samples += n
                if task == "classification":
                    correct += (out.argmax(1) == y).sum().item()
                else:
                    batch_cm = confusion_matrix(out.argmax(1), y, out.shape[1])
                    cm = batch_cm if cm is None else cm + batch_cm
    finally:
        model.train(was_training)
    if samples == 0:
        raise ConfigError("evaluate got an empty loader (0 samples)")
    if task == "classification":
        return {"acc": correct / samples, "loss": loss_sum / samples, "samples": samples}
    miou, pixel_acc = miou_from_confusion(cm)
    return {"miou": miou, "pixel_acc": pixel_acc, "loss": loss_sum / samples, "samples": samples}
