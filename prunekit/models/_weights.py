"""Loading a local state-dict file into a freshly built model, never executing code from the file.

A classifier whose shape does not match (e.g. ImageNet weights, 1000 classes, into a 10-class model) is
left freshly initialised with a warning; every other mismatch is a :class:`CheckpointError`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from prunekit.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file (``weights_only=True``).

    A torch file holding ``{"state_dict": ...}`` or ``{"model": ...}`` (common checkpoint layouts) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights must be an existing file, got {str(path)!r}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any parse failure means a corrupt or foreign file
        raise CheckpointError(f"cannot read weights file {str(path)!r}: {e}") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"weights file {str(path)!r} does not hold a state dict of tensors")
    return sd


def _head_prefix(model: nn.Module, num_classes: int) -> str | None:
    """Name of the classifier: the last Linear, or else the last Conv2d, with ``num_classes`` outputs."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.out_features == num_classes:
            last = name
    if last is None:
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d) and m.out_channels == num_classes:
                last = name
    return last


def load_weights_(model: nn.Module, path: str | Path, num_classes: int) -> nn.Module:
    """Copy the tensors of ``path`` into ``model`` in place.

    Raises:
        CheckpointError: missing/unexpected keys, or shape mismatches outside the classifier.
    """
    sd = read_state_dict(path)
    own = model.state_dict()
    head = _head_prefix(model, num_classes)
    skipped, bad = [], []
    for k, v in own.items():
        if k in sd and sd[k].shape != v.shape:
            if head is not None and k.startswith(head + "."):
                skipped.append(k)
            else:
                bad.append(f"{k} {tuple(sd[k].shape)} vs model {tuple(v.shape)}")
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if bad or missing or unexpected:
        parts = []
        if bad:
            parts.append("shape mismatch: " + "; ".join(bad[:10]))
        if missing:
            parts.append("missing: " + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
        if unexpected:
            parts.append("unexpected: " + ", ".join(unexpected[:10]) + (" ..." if len(unexpected) > 10 else ""))
        raise CheckpointError(f"weights file {str(path)!r} does not match the model: " + " | ".join(parts))
    if skipped:
        log.warning(
            "classifier %s does not match %d classes; left freshly initialised (%s)",
            head,
            num_classes,
            ", ".join(skipped),
        )
        sd = {k: v for k, v in sd.items() if k not in skipped}
    model.load_state_dict(sd, strict=False)
    return model
