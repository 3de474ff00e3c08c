"""Training checkpoints: tensors and plain Python types only, written atomically, read with ``weights_only=True``.

Layout of the saved dict::

    {"format": "prunekit-checkpoint", "version": 1,
     "model": state_dict, "optimizer": state_dict | None, "scheduler": state_dict | None,
     "method_state": dict, "step": int, "epoch": int, "config": dict, "extra": dict}

``epoch`` counts finished epochs; ``extra`` holds the loop's resume data (RNG states, steps already done
in an unfinished epoch, the AMP scaler) and whatever the caller adds (e.g. ``status``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import CheckpointError

FORMAT = "prunekit-checkpoint"
VERSION = 1
_MAX_LISTED = 5  # mismatching keys named in an error message


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    method_state: dict[str, Any] | None = None,
    step: int = 0,
    epoch: int = 0,
    config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint to ``path`` atomically (a temporary file in the same folder, then ``os.replace``).

    A reader never sees a half-written file: a crash leaves the previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "method_state": dict(method_state or {}),
        "step": int(step),
        "epoch": int(epoch),
        "config": dict(config or {}),
        "extra": dict(extra or {}),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint without loading it into anything.

    Raises:
        CheckpointError: the file is missing, corrupt, not a prunekit checkpoint, or from a newer version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r}: corrupt, truncated or not a safe torch file ({first[:200]})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a prunekit checkpoint (no format={FORMAT!r} key)")
    version = ckpt.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint version {version!r}; this prunekit reads version {VERSION}"
        )
    missing = [k for k in ("model", "step", "epoch") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{str(path)!r} lacks the key(s) {', '.join(missing)}")
    return ckpt


def check_state_dict(model: nn.Module, state: dict[str, Any], source: str = "checkpoint") -> None:
    """Raise CheckpointError naming the first missing/unexpected keys and shape mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and isinstance(state[k], torch.Tensor) and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {', '.join(missing[:_MAX_LISTED])}" + (" ..." if len(missing) > _MAX_LISTED else ""))
    if unexpected:
        problems.append(
            f"unexpected keys {', '.join(unexpected[:_MAX_LISTED])}" + (" ..." if len(unexpected) > _MAX_LISTED else "")
        )
    if shapes:
        problems.append(f"shape mismatch {'; '.join(shapes[:_MAX_LISTED])}" + (" ..." if len(shapes) > _MAX_LISTED else ""))
    if problems:
        raise CheckpointError(f"{source} does not match the model: {'; '.join(problems)}")


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    method: Any = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Read a checkpoint and load it into the objects given; all-or-nothing.

    Every check (format, model keys and shapes, optimizer group count) runs before anything is loaded,
    so on failure the model and optimizer are unchanged.

    Returns:
        the checkpoint dict (see the module docstring).

    Raises:
        CheckpointError: corrupt, foreign or mismatching file.
    """
    ckpt = read_checkpoint(path, map_location=map_location)
    if model is not None:
        check_state_dict(model, ckpt["model"], source=f"checkpoint {str(path)!r}")
    if optimizer is not None:
        opt_state = ckpt.get("optimizer")
        if opt_state is None:
            raise CheckpointError(f"checkpoint {str(path)!r} holds no optimizer state")
        groups = opt_state.get("param_groups") if isinstance(opt_state, dict) else None
        if not isinstance(groups, list) or not all(isinstance(g, dict) and "params" in g for g in groups):
            raise CheckpointError(f"checkpoint {str(path)!r} holds an optimizer state without parameter groups")
        saved = [len(g["params"]) for g in groups]
        ours = [len(g["params"]) for g in optimizer.param_groups]
        if saved != ours:
            raise CheckpointError(
                f"checkpoint {str(path)!r} optimizer has parameter groups of sizes {saved}, the optimizer has {ours}"
            )
    if scheduler is not None and ckpt.get("scheduler") is None:
        raise CheckpointError(f"checkpoint {str(path)!r} holds no scheduler state")
    if model is not None:
        model.load_state_dict(ckpt["model"])
    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if method is not None:
        method.load_state_dict(ckpt.get("method_state") or {})
    return ckpt
