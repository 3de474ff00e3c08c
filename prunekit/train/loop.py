"""The training loop: one linear ``fit()`` that any method plugs into through its hooks.

Read ``Trainer.fit`` top to bottom: resolve the device, build the optimizer and the per-epoch lr
schedule, optionally resume, then for every epoch seed the data order from ``(seed, epoch)``, run the
steps (task loss + the method's regulariser terms), evaluate on validation and checkpoint. The Method
hooks run in the order documented in ``prunekit.methods.base`` (``prepare`` is the experiment
builder's job); callbacks see the events documented in ``prunekit.train.callbacks``.

Reproducibility: every epoch reseeds the global RNGs and the train loader's shuffle generator from
``(seed, epoch)``, so an epoch's data order, augmentation and noise do not depend on what happened
before it. A checkpoint written mid-epoch (on stop) also stores the RNG state and the number of steps
done; resuming replays the epoch's data order, skips those batches and restores the RNG state, so on
CPU a resumed run ends with the same weights as an uninterrupted one. The checkpoint also keeps what the
logs of the unfinished epoch have summed so far (training accuracy, the loss window), the last logs, and
the method's reporting memory (``Method.report_state``), so the resumed run logs the same values too.

Failures: a NaN/inf loss raises :class:`DivergedError` (callbacks see ``on_train_end`` with status
``"diverged"`` and the step), any other exception (e.g. a checkpoint that cannot be written because the disk
is full: :class:`~prunekit.train.checkpoint.CheckpointWriteError`) ``on_train_end`` with status ``"failed"``
and the error, then propagates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from prunekit._device import resolve_device
from prunekit.bn import DEFAULT_BN_BATCHES, recalibrate_bn_
from prunekit.data.batches import BatchLoader
from prunekit.errors import ConfigError, PrunekitError
from prunekit.methods.base import Method
from prunekit.optim import build_optimizer, model_optimizer
from prunekit.train.callbacks import Callback
from prunekit.train.checkpoint import load_checkpoint, save_checkpoint
from prunekit.train.config import TrainConfig
from prunekit.train.evaluate import TASKS, evaluate, task_loss
from prunekit.train.seed import epoch_seed, get_rng_state, seed_everything, set_rng_state

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"


class DivergedError(PrunekitError):
    """The training loss became NaN or infinite.

    Attributes:
        step: global step (0-based) whose loss was not finite.
        value: the loss value.
    """

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"training diverged: loss is {value} at step {step} (try a lower --lr)")
        self.step = step
        self.value = value


def lr_factor(schedule: str, epoch: int, epochs: int, milestones: Sequence[int] = (), gamma: float = 0.1) -> float:
    """Multiplier of the base lr during ``epoch`` (0-based) for a run of ``epochs`` epochs.

    cosine: ``0.5 (1 + cos(pi epoch / epochs))``; step: ``gamma ** #(milestones <= epoch)``; constant and
    linear (whose decay is per step, :func:`linear_decay`): 1.
    """
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))
    if schedule == "step":
        return gamma ** sum(1 for m in milestones if epoch >= m)
    return 1.0


def linear_decay(step: int, total: int, warmup: float = 0.0) -> float:
    """The ``linear`` schedule's factor at ``step`` (0-based) of ``total`` steps: 1 until the end of the warm-up
    (``warmup`` steps, which the warm-up ramp scales), then linearly down to ``1 / (total - warmup)`` at the last
    step (0 just after it)."""
    span = total - warmup
    if span <= 0:
        return 1.0
    return max(0.0, min(1.0, (total - step) / span))


def _constant_factor(epoch: int) -> float:
    """The lr factor of a param group that opted out of the schedule (``"lr_schedule": False``)."""
    return 1.0


def _split_loaders(loaders: Any) -> tuple[Iterable[Any], Iterable[Any] | None]:
    if hasattr(loaders, "train"):
        return loaders.train, getattr(loaders, "val", None)
    if isinstance(loaders, (tuple, list)) and len(loaders) in (1, 2):
        return loaders[0], (loaders[1] if len(loaders) == 2 else None)
    return loaders, None


class Trainer:
    """Trains ``model`` on ``loaders`` with ``config``, letting ``method`` shape the loss and the optimizer.

    Args:
        model: the (already prepared) network.
        loaders: an object with ``.train`` and ``.val`` (``prunekit.data.Loaders``) or a ``(train, val)``
            tuple; ``val`` may be None.
        config: the optimisation schedule.
        method: the pruning method; None trains densely.
        callbacks: observers (progress bars, run store, gates); see ``prunekit.train.callbacks``.
            ``on_step_end`` and ``on_layer_metrics`` fire every ``config.log_every`` steps (scalars averaged
            over those steps), ``should_stop`` is asked after every step.
        task: ``"classification"`` or ``"segmentation"``.
        checkpoint_dir: write ``last.pt`` here after every epoch and on stop.
        resume_from: a checkpoint to continue from (same step numbers, same data order).
        run_config: the experiment description stored in checkpoints (``RunConfig.to_dict()``).
    """

    def __init__(
        self,
        model: nn.Module,
        loaders: Any,
        config: TrainConfig,
        method: Method | None = None,
        callbacks: Sequence[Callback] = (),
        task: str = "classification",
        *,
        checkpoint_dir: str | Path | None = None,
        resume_from: str | Path | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        if task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        self.model = model
        self.train_loader, self.val_loader = _split_loaders(loaders)
        self.config = config
        self.method = method if method is not None else Method()
        self.callbacks = list(callbacks)
        self.task = task
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.resume_from = resume_from
        self.run_config = run_config
        self.device = resolve_device(config.device)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.step = 0
        self.epoch = 0
        try:
            batches = len(self.train_loader)
        except TypeError:
            batches = config.max_steps_per_epoch or 0
        self.steps_per_epoch = min(batches, config.max_steps_per_epoch or batches)
        self.metrics: dict[str, float] = {}
        self._last_logs: dict[str, float] = {}
        self._ended = False  # on_train_end was emitted

    def _warmup(self, opt: torch.optim.Optimizer) -> None:
        """Scale the scheduler's lr linearly over the warm-up steps, and by the ``linear`` schedule's per-step decay
        (a pure function of the step: resume-safe)."""
        cfg = self.config
        total = self.steps_per_epoch * min(cfg.warmup_epochs, cfg.epochs / 2)
        linear = cfg.schedule == "linear"
        if (self.step > total or total < 1) and not linear:
            return
        factor = min(1.0, (self.step + 1) / total) if total >= 1 else 1.0
        if linear:
            factor *= linear_decay(self.step, self.steps_per_epoch * cfg.epochs, total)
        for group, lr in zip(opt.param_groups, self.scheduler.get_last_lr()):
            if group.get("lr_schedule", True):
                group["lr"] = lr * factor

    def _log_final(self, model: nn.Module) -> None:
        """Re-log the last step after ``finalize``: the hard masks (and MACs) are the final ones only now.

        The last logged values are kept for what the finalized method no longer reports (e.g. DPP's
        temperature once its masks are baked into the weights).
        """
        try:
            final = {k: float(v) for k, v in self.method.step_metrics(model).items()}
            rows = self.method.layer_metrics(model)
        except Exception as e:  # noqa: BLE001 - reporting only: a method whose metrics need the pre-finalize model
            logger.warning("final metrics of method %s unavailable after finalize: %s", self.method.name, e)
            return
        logs = {**self._last_logs, **final, **self.metrics}
        self._emit("on_step_end", logs)
        if rows:
            self._emit("on_layer_metrics", rows)

    # -- set-up -------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.config
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        seed_everything(cfg.seed)
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.method.plan(self.steps_per_epoch, cfg.epochs)
        self.optimizer = self.method.make_optimizer(self.model, cfg)
        builder = model_optimizer(cfg.optimizer)
        if self.optimizer is None and builder is not None:
            # e.g. --optimizer sdprun with any method: an optimizer that needs the model (its module registered it)
            self.optimizer = builder(self.model, cfg, getattr(self.model, "example_input", None))
        if self.optimizer is None:
            self.optimizer = build_optimizer(self.method.param_groups(self.model, cfg), cfg)
        epochs, schedule, milestones, gamma = cfg.epochs, cfg.schedule, cfg.milestones, cfg.gamma
        # one factor per param group: a group with ``"lr_schedule": False`` keeps its lr (no warm-up, no decay),
        # e.g. sDprun's dual-averaging groups, whose threshold theory assumes a constant lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            [(lambda e: lr_factor(schedule, e, epochs, milestones, gamma)) if g.get("lr_schedule", True)
             else _constant_factor for g in self.optimizer.param_groups],
        )
        # bf16 needs no loss scaling; fp16 (older GPUs) does.
        self.amp_dtype: torch.dtype | None = None
        if cfg.amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def _resume(self) -> tuple[int, int, dict[str, Any] | None, dict[str, Any]]:
        """Load ``resume_from``; return (first epoch, steps already done in it, RNG state to restore, the
        unfinished epoch's log window)."""
        # CPU: RNG states must stay CPU tensors; load_state_dict copies weights and optimizer state to
        # the parameters' device.
        ckpt = load_checkpoint(self.resume_from, self.model, self.optimizer, self.scheduler, self.method,
                               map_location="cpu")
        extra = ckpt.get("extra") or {}
        if extra.get("scaler"):
            self.scaler.load_state_dict(extra["scaler"])
        self.method.load_report_state(extra.get("report_state") or {})
        self.metrics = dict(extra.get("metrics") or {})
        self._last_logs = dict(extra.get("last_logs") or {})
        self.step, self.epoch = ckpt["step"], ckpt["epoch"]
        skip = int(extra.get("step_in_epoch", 0))
        logger.info("resumed from %s at epoch %d, step %d", self.resume_from, self.epoch, self.step)
        return self.epoch, skip, (extra.get("rng") if skip else None), (extra.get("window") or {} if skip else {})

    def _seed_epoch(self, epoch: int) -> None:
        s = epoch_seed(self.config.seed, epoch)
        seed_everything(s)
        loader = self.train_loader
        if isinstance(loader, DataLoader):
            if isinstance(loader.sampler, RandomSampler):
                loader.sampler.generator = torch.Generator().manual_seed(s)
            loader.generator = torch.Generator().manual_seed(s + 1)  # workers' base seed
        elif isinstance(loader, BatchLoader):
            loader.reseed(s)  # its shuffle and augmentation; the global RNGs stay the model's

    def _checkpoint(self, step_in_epoch: int, status: str, window: dict[str, Any] | None = None) -> None:
        if self.checkpoint_dir is None:
            return
        extra = {"step_in_epoch": step_in_epoch, "rng": get_rng_state(), "status": status,
                 "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                 "metrics": dict(self.metrics), "task": self.task, "last_logs": dict(self._last_logs),
                 "report_state": self.method.report_state(), "window": dict(window or {})}
        config = self.run_config if self.run_config is not None else {"train": dataclasses.asdict(self.config)}
        save_checkpoint(self.checkpoint_dir / CHECKPOINT_NAME, model=self.model, optimizer=self.optimizer,
                        scheduler=self.scheduler, method_state=self.method.state_dict(), step=self.step,
                        epoch=self.epoch, config=config, extra=extra)

    def _emit(self, event: str, *args: Any) -> None:
        if event == "on_train_end":
            self._ended = True
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True)
        if self.config.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def _evaluate(self) -> dict[str, float]:
        if self.val_loader is None:
            return {}
        r = evaluate(self.model, self.val_loader, self.task, self.device, channels_last=self.config.channels_last)
        if self.task == "classification":
            return {"acc/val": r["acc"], "loss/val": r["loss"]}
        return {"miou/val": r["miou"], "pixel_acc/val": r["pixel_acc"], "loss/val": r["loss"]}

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train for ``config.epochs`` epochs (or until a callback stops it).

        Returns:
            ``{"status": "completed" | "stopped", "epochs": finished epochs, "steps": global steps,
            "metrics": last validation metrics (``acc/val``/``miou/val``, ``loss/val``), "train_time_s",
            "throughput": mean training img/s, "finalized": whether ``method.finalize`` ran}``.

        Raises:
            DivergedError: the loss became NaN/inf (callbacks get ``on_train_end`` with status "diverged").
            CheckpointWriteError: a checkpoint could not be written (callbacks get status "failed"); any other
                exception likewise.
        """
        try:
            return self._fit()
        except Exception as e:
            if not self._ended:
                try:
                    self._emit("on_train_end", {"status": "failed", "error": f"{type(e).__name__}: {e}",
                                                "steps": self.step, "epochs": self.epoch})
                except Exception:  # noqa: BLE001 - the original error is the one to report
                    logger.exception("a callback failed while the run was ending on %s", type(e).__name__)
            raise

    def _fit(self) -> dict[str, Any]:
        cfg, model, method = self.config, self.model, self.method
        self._setup()
        start_epoch, skip, rng, window = (0, 0, None, {})
        if self.resume_from is not None:
            start_epoch, skip, rng, window = self._resume()
        opt, scaler = self.optimizer, self.scaler
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        self._emit("on_train_start")
        status, images, train_time = "completed", 0, 0.0
        for epoch in range(start_epoch, cfg.epochs):
            self.epoch = epoch
            self._seed_epoch(epoch)
            method.on_epoch_start(model, epoch, cfg.epochs)
            model.train()
            t0 = time.perf_counter()
            # a resumed, partly done epoch starts from the sums its checkpoint kept
            win_t, win_images, win_steps = t0, 0, int(window.get("steps", 0))
            win_losses: dict[str, float] = dict(window.get("losses") or {})
            correct, seen = int(window.get("correct", 0)), int(window.get("seen", 0))
            i = -1
            for i, (x, y) in enumerate(self.train_loader):
                if i >= self.steps_per_epoch:
                    break
                if i < skip:  # replaying a partly done epoch: same batches, not trained on again
                    if i == skip - 1 and rng is not None:
                        set_rng_state(rng)
                    continue
                x, y = self._to_device(x, y)
                with autocast:
                    out = model(x)
                    loss_task = task_loss(out.float(), y, self.task, label_smoothing=cfg.label_smoothing)
                terms = method.regularizer(model, self.step, epoch)
                loss = loss_task + sum(terms.values()) if terms else loss_task
                value = loss.item()
                if not math.isfinite(value):
                    err = DivergedError(self.step, value)
                    self._emit("on_train_end", {"status": "diverged", "error": str(err), "steps": self.step,
                                                "epochs": epoch})
                    raise err
                self._warmup(opt)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                method.after_step(model, self.step, epoch)
                self.step += 1

                n = x.shape[0]
                images += n
                win_images += n
                win_steps += 1
                for k, v in [("loss", value), ("loss/task", loss_task.item())] + [
                    (f"loss/{name}", t.item()) for name, t in terms.items()
                ]:
                    win_losses[k] = win_losses.get(k, 0.0) + v
                with torch.no_grad():
                    pred = out.argmax(1)
                    keep = y != 255 if self.task == "segmentation" else torch.ones_like(y, dtype=torch.bool)
                    correct += (pred[keep] == y[keep]).sum().item()
                    seen += keep.sum().item()

                if self.step % cfg.log_every == 0:
                    now = time.perf_counter()
                    logs = {k: v / win_steps for k, v in win_losses.items()}
                    logs["lr"] = opt.param_groups[0]["lr"]
                    logs["acc/train"] = correct / max(seen, 1)
                    logs["throughput"] = win_images / max(now - win_t, 1e-9)
                    logs.update(method.step_metrics(model))
                    self._last_logs = logs
                    self._emit("on_step_end", logs)
                    rows = method.layer_metrics(model)
                    if rows:
                        self._emit("on_layer_metrics", rows)
                    win_t, win_images, win_steps, win_losses = now, 0, 0, {}
                if any(cb.should_stop(self) for cb in self.callbacks):
                    status = "stopped"
                    break
            train_time += time.perf_counter() - t0
            if status == "stopped" and i + 1 < self.steps_per_epoch:
                self._checkpoint(step_in_epoch=i + 1, status=status, window={
                    "steps": win_steps, "losses": win_losses, "correct": correct, "seen": seen})
                break
            skip, rng, window = 0, None, {}
            method.on_epoch_end(model, epoch, cfg.epochs)
            self.scheduler.step()
            if cfg.schedule == "linear":
                self._warmup(opt)  # the lr logged below is the next step's, not the reset per-epoch one
            self.epoch = epoch + 1
            self.metrics = self._evaluate()
            logs = dict(self.metrics)
            logs["acc/train" if self.task == "classification" else "pixel_acc/train"] = correct / max(seen, 1)
            logs["lr"] = opt.param_groups[0]["lr"]
            logs["epoch"] = epoch + 1
            logger.info("epoch %d/%d: %s", epoch + 1, cfg.epochs,
                        ", ".join(f"{k}={v:.4g}" for k, v in logs.items()))
            self._emit("on_epoch_end", logs)
            done = status == "stopped" or epoch + 1 == cfg.epochs
            self._checkpoint(step_in_epoch=0, status=status if done else "running")
            if status == "stopped":
                break
        finalized = False
        if status == "completed":
            if type(method).finalize is not Method.finalize:
                self.model = model = method.finalize(model)
                finalized = True
                if method.recalibrate_bn_after_finalize:
                    # The running statistics were gathered on the network as trained (noise on, sampled masks):
                    # re-estimate them for the finalized one on training batches, weights untouched, before
                    # the final evaluation. 50 batches, or one epoch's worth if an epoch is shorter; the
                    # batches are seeded like an extra epoch, so a resumed run sees the same ones.
                    self._seed_epoch(cfg.epochs)
                    bn = recalibrate_bn_(model, self.train_loader, min(DEFAULT_BN_BATCHES, self.steps_per_epoch
                                                                       or DEFAULT_BN_BATCHES), self.device)
                    logger.info("method %s: BatchNorm statistics of %d layers re-estimated after finalize on "
                                "%d training batches (%d images)", method.name, bn["layers"], bn["batches"],
                                bn["samples"])
                    if isinstance(getattr(method, "report", None), dict):
                        method.report.update(bn_recalibrated=bn["layers"] > 0, bn_batches=bn["batches"])
                self.metrics = self._evaluate() or self.metrics
                self._log_final(model)
        result = {
            "status": status,
            "epochs": self.epoch,
            "steps": self.step,
            "metrics": dict(self.metrics),
            "train_time_s": train_time,
            "throughput": images / train_time if train_time > 0 else 0.0,
            "finalized": finalized,
        }
        self._emit("on_train_end", result)
        return result
