"""Re-estimating BatchNorm running statistics from data, with no weight change ("adaptive BN").

BatchNorm's running means and variances describe the network that produced them. They are stale after any
structural change made without training: Bridgeout's weight noise removed at the end of training, a DPP mask
frozen, filters pruned with no fine-tuning. Forwarding a few training batches with only the BatchNorm layers in
training mode and a cumulative average (``momentum=None``) re-estimates them for the network as it now is
(Li et al., "EagleEye", ECCV 2020). Nothing is trained, so a pruning protocol "without fine-tuning" stays one.

This module sits below ``prunekit.methods``, ``prunekit.curve`` and the training loop: it imports only torch and
prunekit's leaf modules (``errors``, ``_device``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from prunekit._device import model_device
from prunekit.errors import ConfigError

logger = logging.getLogger(__name__)

#: Batches forwarded by default. 50 batches of 64–128 images give means and variances within ~1–2 % of those
#: of a whole epoch for CIFAR-sized ResNets; a loader with fewer batches is used whole.
DEFAULT_BN_BATCHES = 50


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm (1d/2d/3d, SyncBatchNorm) of ``model`` that keeps running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _images(batch: Any) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, dict) and isinstance(batch.get("image"), torch.Tensor):
        return batch["image"]
    raise ConfigError(
        f"data_loader must yield tensors or (images, targets) pairs, got a batch of type {type(batch).__name__}"
    )


@torch.no_grad()
def recalibrate_bn_(
    model: nn.Module,
    data_loader: Iterable[Any],
    batches: int | None = DEFAULT_BN_BATCHES,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Re-estimate every BatchNorm's running mean and variance of ``model`` in place; weights are not changed.

    Every BatchNorm's statistics are reset and replaced by the cumulative average over the forwarded batches.
    Only the BatchNorm layers run in training mode: everything else runs in eval mode, so dropout and training
    noise (Bridgeout's parametrization, sampled gates) stay off and the statistics describe the deterministic
    network that will be evaluated. Afterwards every module is back in the mode it was in and every BatchNorm
    has its own ``momentum`` again.

    Args:
        model: the network; its BatchNorm buffers (``running_mean``, ``running_var``, ``num_batches_tracked``)
            are overwritten.
        data_loader: yields image tensors or ``(images, targets, ...)`` (only the images are used) from the
            training distribution.
        batches: how many batches to forward (>= 1); the loader is used whole if it has fewer. ``None``: the
            whole loader. Default ``DEFAULT_BN_BATCHES`` (50).
        device: where to run (default: the model's device).

    Returns:
        ``{"layers": BatchNorm layers re-estimated, "batches": batches forwarded, "samples": images forwarded}``
        (all 0 for a model without BatchNorm; the loader is then not read).

    Raises:
        ConfigError: ``batches`` < 1, an empty loader, or batches that are not tensors.
    """
    if batches is not None and (isinstance(batches, bool) or not isinstance(batches, int) or batches < 1):
        raise ConfigError(f"batches must be an integer >= 1 or None, got {batches!r}")
    bns = batchnorm_layers(model)
    if not bns:
        return {"layers": 0, "batches": 0, "samples": 0}
    dev = model_device(model, device)
    modes = [(m, m.training) for m in model.modules()]
    momenta = [m.momentum for m in bns]
    saved = [(m.running_mean.clone() if m.running_mean is not None else None,
              m.running_var.clone() if m.running_var is not None else None,
              m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in bns]
    seen = samples = 0
    try:
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the forwarded batches
            m.train()
        for batch in data_loader:
            if batches is not None and seen >= batches:
                break
            x = _images(batch).to(dev)
            model(x)
            seen += 1
            samples += int(x.shape[0])
        if seen == 0:
            raise ConfigError("data_loader is empty; BatchNorm statistics cannot be re-estimated")
    except BaseException:
        for m, (mean, var, count) in zip(bns, saved):  # leave the model as it was on failure
            if mean is not None:
                m.running_mean.copy_(mean)
            if var is not None:
                m.running_var.copy_(var)
            if count is not None:
                m.num_batches_tracked.copy_(count)
        raise
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        for m, mode in modes:
            m.training = mode
    logger.info("re-estimated %d BatchNorm layers from %d batches (%d samples)", len(bns), seen, samples)
    return {"layers": len(bns), "batches": seen, "samples": samples}
