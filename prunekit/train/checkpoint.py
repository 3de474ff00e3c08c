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


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, folder gone, no permission); the previous file is intact.

    Attributes:
        path: the checkpoint that was being written.
        step: the global step it was for.
        errno: the operating system's error number (``errno.ENOSPC`` when the disk is full), or None.
    """

    def __init__(self, path: Path, step: int, error: OSError) -> None:
        reason = error.strerror or str(error) or type(error).__name__
        super().__init__(f"cannot write checkpoint {str(path)!r} at step {step}: {reason}; "
                         "the previous checkpoint, if any, is unchanged")
        self.path, self.step, self.errno = path, step, error.errno


def _temp_files(path: Path) -> list[Path]:
    """Temporary files of ``path``'s writers (see :func:`save_checkpoint`)."""
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


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

    A reader never sees a half-written file: a crash leaves the previous checkpoint intact, and the temporary
    file a killed writer left behind is removed by the next save (one writer per checkpoint file).

    Raises:
        CheckpointWriteError: the file could not be written (e.g. disk full); nothing half-written is left.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in _temp_files(path):
            stale.unlink(missing_ok=True)
    except OSError as e:
        raise CheckpointWriteError(path, step, e) from e
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
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise CheckpointWriteError(path, step, e) from e
        # torch.save wraps the OSError of a failed write (disk full) in a RuntimeError
        cause = e.__cause__ or e.__context__
        if isinstance(e, RuntimeError) and isinstance(cause, OSError):
            raise CheckpointWriteError(path, step, cause) from e
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
    source = f"checkpoint {str(path)!r}"
    if method is not None:
        written_by = (ckpt.get("config") or {}).get("method")
        name = getattr(method, "name", None)
        if isinstance(written_by, str) and name is not None and written_by != name:
            raise CheckpointError(f"{source} was written by method {written_by!r}, the run uses {name!r}")
    if model is not None:
        check_state_dict(model, ckpt["model"], source=source)
    if optimizer is not None:
        check_optimizer_state(optimizer, ckpt.get("optimizer"), source=source)
    if scheduler is not None and ckpt.get("scheduler") is None:
        raise CheckpointError(f"{source} holds no scheduler state")
    if model is not None:
        model.load_state_dict(ckpt["model"])
    # what the checks above cannot see (per-parameter state of another optimizer kind, a method state of another
    # shape) still fails as a CheckpointError naming the part, never as a bare KeyError
    for part, load in (("optimizer", lambda: optimizer.load_state_dict(ckpt["optimizer"]) if optimizer else None),
                       ("scheduler", lambda: scheduler.load_state_dict(ckpt["scheduler"]) if scheduler else None),
                       ("method", lambda: method.load_state_dict(ckpt.get("method_state") or {}) if method else None)):
        try:
            load()
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            raise CheckpointError(f"{source}: its {part} state does not fit this run "
                                  f"({type(e).__name__}: {str(e)[:200]})") from e
    return ckpt


def _flat_groups(state: Any) -> list[dict[str, Any]] | None:
    """The parameter groups of an optimizer state dict (a split optimizer's: its inner ones, in order)."""
    if not isinstance(state, dict):
        return None
    groups = state.get("param_groups")
    if groups is None and isinstance(state.get("split"), list):  # split states written before "param_groups"
        groups = [g for s in state["split"] if isinstance(s, dict) for g in s.get("param_groups", [])]
    if not isinstance(groups, list) or not all(isinstance(g, dict) and "params" in g for g in groups):
        return None
    return groups


def _kind(state: Any, optimizer: torch.optim.Optimizer | None = None) -> str:
    inner = getattr(optimizer, "optimizers", None) if optimizer is not None else None
    if optimizer is not None:
        return f"a split optimizer of {len(inner)}" if inner is not None else f"a single {type(optimizer).__name__}"
    return f"a split optimizer of {len(state['split'])}" if "split" in state else "a single optimizer"


def check_optimizer_state(optimizer: torch.optim.Optimizer, state: Any, source: str = "checkpoint") -> None:
    """Raise CheckpointError unless ``state`` (an optimizer state dict) can be loaded into ``optimizer``.

    Compared: split (weights + gate logits, :class:`~prunekit.optim.SplitOptimizer`) or single, the number and
    sizes of the parameter groups, and each group's hyper-parameter names (SGD's ``momentum`` against Adam's
    ``betas``: another optimizer kind).
    """
    if state is None:
        raise CheckpointError(f"{source} holds no optimizer state")
    groups = _flat_groups(state)
    if groups is None:
        raise CheckpointError(f"{source} holds an optimizer state without parameter groups")
    inner = getattr(optimizer, "optimizers", None)
    split = state.get("split")
    if (inner is None) != (split is None) or (inner is not None and len(inner) != len(split)):
        raise CheckpointError(f"{source} holds the state of {_kind(state)} optimizer(s), "
                              f"the run has {_kind(state, optimizer)}")
    saved = [len(g["params"]) for g in groups]
    ours = [len(g["params"]) for g in optimizer.param_groups]
    if saved != ours:
        raise CheckpointError(f"{source} optimizer has parameter groups of sizes {saved}, the optimizer has {ours}")
    for i, (g, o) in enumerate(zip(groups, optimizer.param_groups)):
        theirs, mine = set(g) - {"params"}, set(o) - {"params"}
        if not {"lr"} <= theirs or (mine - theirs and theirs - mine):
            raise CheckpointError(
                f"{source} optimizer group {i} has the settings {', '.join(sorted(theirs))}; the run's optimizer "
                f"({type(optimizer).__name__}) has {', '.join(sorted(mine))}: another optimizer kind"
            )
