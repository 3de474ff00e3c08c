"""The callback that writes a training run into the run store.

Metrics go through the store's buffer: the training thread only appends to a list per step. A small daemon
thread flushes that buffer (one SQLite transaction) and writes the heartbeat and progress (on its own
connection) every ``heartbeat_interval`` seconds, so the step never waits for the disk, a run that spends a
minute in one evaluation still looks alive, and a killed one stops beating at once. The stop flag is polled at most every
``poll_interval`` seconds (one indexed SELECT).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

from prunekit.train.callbacks import Callback
from prunekit.train.loop import CHECKPOINT_NAME
from prunekit.train.store.runstore import RunStore

logger = logging.getLogger(__name__)


def _rank() -> int:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except Exception:  # noqa: BLE001 - no torch.distributed: single process
        pass
    return 0


class StoreCallback(Callback):
    """Logs scalars, per-layer rows, epoch metrics, checkpoints, progress and status of ``run_id``.

    Under DDP only rank 0 writes; every rank still answers :meth:`should_stop` (the DDP helper broadcasts
    rank 0's answer so all ranks stop on the same step).

    Args:
        store: the open run store.
        run_id: the run being trained (created with ``store.create_run``).
        poll_interval: minimum seconds between two reads of the stop flag.
        heartbeat_interval: seconds between heartbeats and background flushes (0: no thread; the training
            thread then flushes every ``store.flush_interval``).
        manage_status: set ``running`` at start and ``done``/``stopped``/``failed`` at the end. The background
            runner keeps this on and refines the final status with the full result.
        checkpoint_dir: where the loop writes ``last.pt``; new versions of it are recorded as checkpoint rows.
    """

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        *,
        poll_interval: float = 0.5,
        heartbeat_interval: float = 1.0,
        manage_status: bool = True,
        checkpoint_dir: str | Path | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.manage_status = manage_status
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.stop_seen = False
        self.diverged: tuple[int, float] | None = None
        self.progress = 0.0
        self._last_poll = 0.0
        self._ckpt_mtime: float | None = None
        self._pending_ckpt: tuple[int, int] | None = None
        self._beat_stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.is_writer = _rank() == 0

    # -- helpers -------------------------------------------------------------------------------
    def _total_steps(self, trainer: Any) -> int | None:
        total = getattr(trainer, "total_steps", None)
        if total:
            return int(total)
        spe, cfg = getattr(trainer, "steps_per_epoch", None), getattr(trainer, "config", None)
        if spe and cfg is not None and getattr(cfg, "epochs", 0):
            return int(spe) * int(cfg.epochs)
        return None

    def _update_progress(self, trainer: Any) -> None:
        total = self._total_steps(trainer)
        if total:
            self.progress = min(1.0, trainer.step / total)

    def _beat_loop(self) -> None:
        own = RunStore(self.store.workspace)  # own connection for the heartbeat
        try:
            while not self._beat_stop.wait(self.heartbeat_interval):
                try:
                    self.store.flush()
                    own.heartbeat(self.run_id, self.progress)
                except Exception as e:  # noqa: BLE001 - a missed beat must not kill training
                    logger.warning("heartbeat of run %s failed: %s", self.run_id, e)
        finally:
            own.close()

    def _ckpt_file(self) -> Path | None:
        if self.checkpoint_dir is None:
            return None
        return self.checkpoint_dir / CHECKPOINT_NAME

    def _sync_checkpoint(self, step: int, epoch: int) -> None:
        """Record the loop's checkpoint file as a row when it changed since we last looked."""
        path = self._ckpt_file()
        if path is None or not path.exists():
            return
        mtime = path.stat().st_mtime_ns
        if mtime != self._ckpt_mtime:
            self._ckpt_mtime = mtime
            self.store.add_checkpoint(self.run_id, step, epoch, path)

    # -- events --------------------------------------------------------------------------------
    def on_train_start(self, trainer: Any) -> None:
        if not self.is_writer:
            return
        path = self._ckpt_file()
        if path is not None and path.exists():  # resuming: the file we resumed from is not new
            self._ckpt_mtime = path.stat().st_mtime_ns
        self._update_progress(trainer)
        if self.manage_status:
            import os

            self.store.set_status(self.run_id, "running", pid=os.getpid())
        self.store.heartbeat(self.run_id, self.progress)
        if self.heartbeat_interval > 0 and self._beat is None:
            # the thread flushes; the training thread only does when the buffer grows past flush_rows
            self._saved_flush_interval = self.store.flush_interval
            self.store.flush_interval = float("inf")
            self._beat = threading.Thread(target=self._beat_loop, name=f"heartbeat-{self.run_id}", daemon=True)
            self._beat.start()

    def on_step_end(self, trainer: Any, logs: dict[str, float]) -> None:
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(loss) and self.diverged is None:
            self.diverged = (int(trainer.step), float(loss))
        if not self.is_writer:
            return
        if self._pending_ckpt is not None:  # the loop checkpoints right after on_epoch_end
            self._sync_checkpoint(*self._pending_ckpt)
            self._pending_ckpt = None
        self._update_progress(trainer)
        if logs:
            self.store.log_scalars(self.run_id, trainer.step, trainer.epoch, logs)

    def on_layer_metrics(self, trainer: Any, rows: list[dict[str, Any]]) -> None:
        if self.is_writer and rows:
            self.store.log_layers(self.run_id, trainer.step, trainer.epoch, rows)

    def on_epoch_end(self, trainer: Any, logs: dict[str, float]) -> None:
        if not self.is_writer:
            return
        epoch = int(logs["epoch"]) - 1 if "epoch" in logs else int(trainer.epoch)
        values = {k: v for k, v in logs.items() if k != "epoch"}
        self.store.log_scalars(self.run_id, trainer.step, epoch, values)
        self._update_progress(trainer)
        self.store.flush()
        self._pending_ckpt = (int(trainer.step), epoch + 1)  # the checkpoint counts finished epochs

    def on_checkpoint(self, trainer: Any, path: str | Path) -> None:
        """Record a checkpoint explicitly (for loops that announce theirs)."""
        if self.is_writer:
            self.store.add_checkpoint(self.run_id, trainer.step, trainer.epoch, path)

    def close(self) -> None:
        """Stop the heartbeat thread and flush (``on_train_end`` does it; call it when training raised)."""
        self._beat_stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
            self._beat = None
            self.store.flush_interval = self._saved_flush_interval
        self.store.flush()

    def on_train_end(self, trainer: Any, result: dict[str, Any]) -> None:
        if not self.is_writer:
            return
        self.close()
        status = result.get("status")
        if status != "diverged":
            self._sync_checkpoint(int(trainer.step), int(trainer.epoch))
        self._update_progress(trainer)
        self.store.flush()
        self.store.heartbeat(self.run_id, self.progress)
        if not self.manage_status:
            return
        if status == "diverged" or self.diverged is not None:
            err = result.get("error") or f"training diverged: loss is {self.diverged[1]} at step {self.diverged[0]}"
            self.store.set_status(self.run_id, "failed", error=err)
        elif status == "failed":  # the loop raised (e.g. a checkpoint that could not be written)
            self.store.set_status(self.run_id, "failed", error=result.get("error") or "training raised an error")
        elif status == "stopped" or self.stop_seen:
            self.store.set_status(self.run_id, "stopped")
        else:
            self.store.set_status(self.run_id, "done")

    def should_stop(self, trainer: Any) -> bool:
        if self.diverged is not None:
            return True
        if self.stop_seen:
            return True
        now = time.monotonic()
        if now - self._last_poll >= self.poll_interval:
            self._last_poll = now
            if self.is_writer:
                self.stop_seen = self.store.stop_requested(self.run_id)
        return self.stop_seen
