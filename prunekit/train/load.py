"""A trained run, loaded back: ``pk.load_run(run)`` gives its model, method, config and data.

What a notebook or a script needs after training to collapse, compare, evaluate or inspect a run, through the
public API. Everything is read safely: the checkpoint with ``torch.load(weights_only=True)``
(:func:`~prunekit.train.checkpoint.read_checkpoint`), the architecture rebuilt from the run's config.

The last checkpoint of a run is written at the end of its last epoch, *before* the loop lets the method fix
its masks (``finalize``) and, for methods that ask, re-estimates the BatchNorm statistics on seeded training
batches. Loading a completed run therefore resumes it at its end with the training loop itself: no epoch is
left, so the loop only finalizes exactly as it did when the run ended, and the model gives the outputs the run
reported on.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.augment import GatedModel
from prunekit.bn import recalibrate_bn_
from prunekit.errors import CheckpointError, ConfigError
from prunekit.methods.base import Method
from prunekit.train.checkpoint import load_checkpoint, read_checkpoint
from prunekit.train.config import RunConfig
from prunekit.train.evaluate import evaluate
from prunekit.train.experiment import build_experiment
from prunekit.train.loop import CHECKPOINT_NAME, Trainer
from prunekit.train.runner import RunHandle
from prunekit.train.store import DB_NAME, RunStore, default_workspace

logger = logging.getLogger(__name__)

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


@dataclass
class LoadedRun:
    """A trained run rebuilt from its checkpoint, on CPU.

    Attributes:
        model: the trained model as the method prepared it (a :class:`~prunekit.augment.GatedModel` for the
            gating methods), in eval mode. For a completed run it is the finalized model the run reported on
            (unless loaded with ``finalize=False``); otherwise the model as last checkpointed (call
            :meth:`finalize` to fix its masks now).
        method: the run's method with its state restored (temperatures, masks, ``report``).
        config: the run's :class:`~prunekit.train.config.RunConfig`, as recorded.
        loaders: the run's ``train``/``val``/``test`` loaders and ``info`` (same splits, same order).
        task: ``"classification"`` or ``"segmentation"``.
        example_input: one input batch ``[2, C, H, W]`` of the run's data.
        checkpoint: the file the weights came from.
        run_id: the run store id, when the run was given by id (else None).
        status: the checkpoint's status: ``"completed"``, ``"stopped"`` or ``"running"`` (a run still training).
        step: global training steps done.
        epoch: finished epochs.
        finalized: whether the method's final masks are fixed (``method.finalize`` ran).
    """

    model: nn.Module
    method: Method
    config: RunConfig
    loaders: Any
    task: str
    example_input: torch.Tensor
    checkpoint: Path
    run_id: str | None
    status: str
    step: int
    epoch: int
    finalized: bool

    @property
    def gated(self) -> GatedModel | None:
        """The model as a GatedModel (what :func:`prunekit.collapse` takes); None for a method without gates."""
        return self.model if isinstance(self.model, GatedModel) else None

    def finalize(self) -> nn.Module:
        """Fix the method's final masks (once; a completed run's already are) and return the model in eval mode.

        For a run that did not complete this does what the loop does at the end of a run: ``method.finalize``,
        then, for methods that ask (``recalibrate_bn_after_finalize``), re-estimate the BatchNorm statistics
        on training batches.
        """
        if not self.finalized:
            self.model = self.method.finalize(self.model)
            if self.method.recalibrate_bn_after_finalize:
                recalibrate_bn_(self.model, self.loaders.train)
            self.finalized = True
        return self.model.eval()

    def evaluate(self, split: str = "test", device: str | torch.device | None = None) -> dict[str, float]:
        """The model's metrics on ``split`` (``"test"`` or ``"val"``): ``acc`` (classification) or ``miou``
        (segmentation), the loss, and ``samples``."""
        if split not in ("test", "val"):
            raise ConfigError(f"split must be 'test' or 'val', got {split!r}")
        loader = self.loaders.test if split == "test" else self.loaders.val
        return evaluate(self.model, loader, self.task, device)


def _checkpoint_in(folder: Path) -> Path | None:
    """``last.pt`` of a folder written by ``prunekit train --out`` or of a run store run folder."""
    for path in (folder / CHECKPOINT_NAME, folder / "checkpoints" / CHECKPOINT_NAME):
        if path.is_file():
            return path
    return None


def _resolve(run: str | os.PathLike | RunHandle, workspace: str | os.PathLike | None
             ) -> tuple[Path, str | None, dict[str, Any] | None]:
    """(checkpoint file, run id or None, the run store's config or None) for what ``load_run`` was given."""
    if isinstance(run, RunHandle):
        run, workspace = run.id, run.workspace
    if not isinstance(run, (str, os.PathLike)):
        raise ConfigError(f"run must be a run id, a run folder or a checkpoint file, got {run!r}")
    path = Path(run).expanduser()
    if path.is_file():
        return path, None, None
    if path.is_dir():
        found = _checkpoint_in(path)
        if found is None:
            raise CheckpointError(f"run folder {str(path)!r} holds no checkpoint ({CHECKPOINT_NAME}); "
                                  "a run writes one after every epoch")
        return found, None, None
    if isinstance(run, os.PathLike) or os.sep in str(run) or path.suffix in _CHECKPOINT_SUFFIXES:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    ws = Path(workspace).expanduser() if workspace is not None else default_workspace()
    if not (ws / DB_NAME).is_file():
        raise ConfigError(f"run must be a run id, a run folder or a checkpoint file, got {str(run)!r}: no such file "
                          f"or folder, and workspace {str(ws)!r} has no run store (pass workspace=...)")
    with RunStore(ws) as store:
        try:
            info = store.get_run(str(run))
        except ConfigError:
            raise ConfigError(f"run must be a run id, a run folder or a checkpoint file, got {str(run)!r}: no such "
                              f"file or folder, and no run with that id in {str(store.path)!r}") from None
        ckpt = store.latest_checkpoint(info.id)
    if ckpt is None:
        raise ConfigError(f"run {info.id!r} has no checkpoint yet (status {info.status}; one is written after "
                          "every epoch)")
    return ckpt, info.id, info.config


def load_run(run: str | os.PathLike | RunHandle, workspace: str | os.PathLike | None = None, *,
             data_root: str | os.PathLike | None = None, finalize: bool = True) -> LoadedRun:
    """Load a trained run: its model with the trained weights, its method, config and data loaders.

    Args:
        run: a run id of the run store (``pk.start_run(...).id``, ``prunekit runs list``) or the
            :class:`~prunekit.train.runner.RunHandle` itself; or a run folder (``prunekit train --out DIR``, or a
            run store's ``runs/<id>``); or a checkpoint file (``last.pt``).
        workspace: the run store folder for a run id (default: ``$PRUNEKIT_HOME`` or ``./prunekit-runs``).
        data_root: where the run's dataset files are on this machine (default: the run's own ``data_root``).
        finalize: False loads a completed run as last checkpointed too, before its method fixed the final masks:
            to look at the training-time relaxation (e.g. DPP's inclusion probabilities, which finalize bakes
            into the weights). :meth:`LoadedRun.finalize` fixes them later, then without the loop's seeding of
            the BatchNorm re-estimate.

    Returns:
        A :class:`LoadedRun` on CPU; a completed run's model is finalized exactly as the run's was (see the
        module docstring), so its outputs are those the run reported on.

    Raises:
        ConfigError: ``run`` is neither a file, a folder nor a run id of the workspace; the run has no
            checkpoint yet.
        CheckpointError: a corrupt or foreign checkpoint, or one that does not match the rebuilt model.
        DataNotFoundError: the run's dataset is not on this machine.
    """
    path, run_id, store_config = _resolve(run, workspace)
    ckpt = read_checkpoint(path)
    cfg_dict = ckpt.get("config") or store_config or {}
    if "model" not in cfg_dict:
        raise CheckpointError(f"checkpoint {str(path)!r} holds no run config; it was not written by a prunekit run")
    cfg = RunConfig.from_dict(cfg_dict)
    # rebuilt on CPU whatever the run trained on, and without changing this process's torch threads
    train = dataclasses.replace(cfg.train, device="cpu", num_threads=None)
    build = cfg.replace(train=train, data_root=str(data_root) if data_root is not None else cfg.data_root)
    exp = build_experiment(build)
    extra = ckpt.get("extra") or {}
    status = str(extra.get("status") or "unknown")
    model, finalized = exp.model, False
    if status == "completed" and finalize:
        # resume at the end: no epoch left, the loop finalizes (and re-estimates BN) as it did when the run ended
        trainer = Trainer(exp.model, exp.loaders, train, exp.method, task=exp.task, resume_from=path,
                          run_config=cfg.to_dict())
        finalized = trainer.fit()["finalized"] or type(exp.method).finalize is Method.finalize
        model = trainer.model
    else:
        load_checkpoint(path, model=exp.model, method=exp.method)
    model.eval()
    logger.info("loaded %s (%s on %s, method %s): %s after %d steps", path, cfg.model, cfg.dataset, cfg.method,
                status, int(ckpt["step"]))
    return LoadedRun(model=model, method=exp.method, config=cfg, loaders=exp.loaders, task=exp.task,
                     example_input=exp.example_input, checkpoint=path, run_id=run_id, status=status,
                     step=int(ckpt["step"]), epoch=int(ckpt["epoch"]), finalized=finalized)


__all__ = ["LoadedRun", "load_run"]
