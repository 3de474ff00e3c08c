"""Background runs: one training per child process, watched and steered through the run store.

``start_run(cfg)`` records the run as ``queued`` and launches ``python -m prunekit.train.runner`` in a new
session (a fresh interpreter, i.e. the *spawn* start method, but not a ``multiprocessing`` child: those
are joined or killed when the parent exits, and a background run must outlive the CLI command or the app
rerun that started it). The child sets its thread budget before torch is imported, marks itself
``running``, trains through the experiment callable with a :class:`StoreCallback`, and ends ``done``,
``stopped`` or ``failed`` (with the reason, e.g. the step where the loss became NaN). A child that is killed
leaves ``running`` behind; the next reader sees its pid gone and marks it ``interrupted``;
:func:`resume_run` continues it from its last checkpoint, deleting the metric rows logged after that
checkpoint first so the history has no gaps and no duplicated steps.

Threads: OpenMP spins waiting threads for ~100 ms by default, which steals a 2-core machine from the UI;
the child runs with ``OMP_WAIT_POLICY=PASSIVE`` and ``max(1, cores - 1)`` intra-op threads unless told
otherwise (``threads=``, ``TrainConfig.num_threads``), and may be ``nice``d.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prunekit._device import run_threads, thread_env
from prunekit.errors import ConfigError
from prunekit.train.checkpoint import read_checkpoint
from prunekit.train.config import RunConfig
from prunekit.train.loop import CHECKPOINT_NAME
from prunekit.train.store import TERMINAL, RunInfo, RunStore, StoreCallback

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "prunekit.train.experiment:run_experiment"


def resolve_experiment(path: str) -> Callable[..., dict[str, Any]]:
    """Import ``"package.module:function"``."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise ConfigError(f"experiment must be 'module:function', got {path!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"experiment {path!r} cannot be imported: {e}") from None


class RunHandle:
    """A background run, as seen from any process.

    Attributes:
        id: the run id.
        workspace: the run store folder.
        process: the ``Popen`` when this process launched it, else None.
    """

    def __init__(self, run_id: str, workspace: str | Path | None = None,
                 process: subprocess.Popen | None = None) -> None:
        self._store = RunStore(workspace)
        self._store.get_run(run_id)  # unknown ids fail here
        self.id = run_id
        self.workspace = self._store.workspace
        self.process = process

    @property
    def info(self) -> RunInfo:
        return self._store.get_run(self.id)

    @property
    def status(self) -> str:
        return self.info.status

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else self.info.pid

    @property
    def store(self) -> RunStore:
        return self._store

    def metrics(self, names: list[str] | None = None) -> Any:
        return self._store.metrics(self.id, names)

    def stop(self) -> None:
        """Ask the run to stop after its current step (it checkpoints and ends ``stopped``)."""
        stop_run(self.id, self._store)

    def wait(self, timeout: float | None = None, poll: float = 0.2) -> RunInfo:
        """Block until the run reaches a terminal status and return its info.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.process is not None:
                self.process.poll()  # reap our child so a killed one reads as dead at once
            info = self.info
            if info.status in TERMINAL:
                if self.process is not None:
                    try:
                        self.process.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        pass
                return self.info
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {self.id} still {info.status} after {timeout} s")
            time.sleep(poll)

    def __repr__(self) -> str:
        return f"RunHandle({self.id!r}, status={self.status!r})"


def _open(workspace: str | Path | RunStore | None) -> RunStore:
    return workspace if isinstance(workspace, RunStore) else RunStore(workspace)


def spawn_run(store: RunStore, run_id: str, *, resume: bool, threads: int | None, experiment: str,
              nice: int = 0) -> subprocess.Popen:
    """Start the child process that trains the stored run ``run_id`` (its log goes to the run's folder)."""
    info = store.get_run(run_id)
    threads = run_threads(threads or (info.config.get("train") or {}).get("num_threads"))
    run_dir = store.run_dir(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **thread_env(threads)}
    # the child must import the same prunekit, also when the caller runs from a checkout without installing
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([p for p in (pkg_root, env.get("PYTHONPATH")) if p])
    cmd = [sys.executable, "-m", "prunekit.train.runner", "--workspace", str(store.workspace.resolve()),
           "--run", run_id, "--experiment", experiment, "--threads", str(threads), "--nice", str(nice)]
    if resume:
        cmd.append("--resume")
    runner = {"experiment": experiment, "threads": threads, "nice": nice}
    if not store.claim(run_id, os.getpid(), runner):
        raise ConfigError(f"run {run_id} is not queued or is already being launched")
    with open(run_dir / "log.txt", "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, close_fds=True)
    store.set_pid(run_id, proc.pid)
    logger.info("run %s launched as pid %d (%d threads)", run_id, proc.pid, threads)
    return proc


def start_run(
    config: RunConfig | dict[str, Any],
    *,
    workspace: str | Path | None = None,
    sweep_id: str | None = None,
    threads: int | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    nice: int = 0,
) -> RunHandle:
    """Record ``config`` as a new run and train it in a background process.

    Args:
        config: the experiment; validated here, so a bad config raises before anything is stored.
        workspace: run store folder (default ``$PRUNEKIT_HOME`` or ``./prunekit-runs``).
        sweep_id: the sweep this run belongs to.
        threads: torch intra-op threads of the child; default ``TrainConfig.num_threads`` or cores - 1.
        experiment: ``"module:function"`` called as ``fn(cfg, callbacks=..., checkpoint_dir=..., resume_from=...)``.
        nice: niceness increment of the child (e.g. 5 keeps an interactive UI snappy on a small machine).
    """
    cfg = config if isinstance(config, RunConfig) else RunConfig.from_dict(dict(config))
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    if ":" not in experiment:
        raise ConfigError(f"experiment must be 'module:function', got {experiment!r}")
    store = RunStore(workspace)
    run_id = store.create_run(cfg.to_dict(), sweep_id=sweep_id)
    proc = spawn_run(store, run_id, resume=False, threads=threads, experiment=experiment, nice=nice)
    return RunHandle(run_id, store.workspace, proc)


def stop_run(run_id: str, workspace: str | Path | RunStore | None = None) -> None:
    """Ask a run to stop gracefully; a queued run that never started is marked ``stopped`` at once."""
    store = _open(workspace)
    info = store.get_run(run_id)
    if info.status in TERMINAL:
        return
    store.request_stop(run_id)
    if info.status == "queued" and not info.pid:
        store.set_status(run_id, "stopped", error="stopped before it started")


def get_handle(run_id: str, workspace: str | Path | None = None) -> RunHandle:
    return RunHandle(run_id, workspace)


def _checkpoint_step(path: Path) -> int:
    return int(read_checkpoint(path)["step"])


def resume_run(
    run_id: str, workspace: str | Path | None = None, *, threads: int | None = None, experiment: str | None = None
) -> RunHandle:
    """Continue an interrupted, stopped or failed run from its latest checkpoint in a new background process.

    Metric rows after the checkpoint's step are deleted first: the resumed process logs those steps again.
    Without a checkpoint the run starts over (its old metrics are deleted).

    Raises:
        ConfigError: unknown id, or the run is queued/running/done.
    """
    store = RunStore(workspace)
    info = store.get_run(run_id)
    if info.status not in ("interrupted", "stopped", "failed"):
        raise ConfigError(f"run {run_id} is {info.status}; only interrupted, stopped or failed runs can be resumed")
    ckpt = store.latest_checkpoint(run_id)
    if ckpt is None:
        fallback = store.run_dir(run_id) / "checkpoints" / CHECKPOINT_NAME
        ckpt = fallback if fallback.exists() else None
    step = _checkpoint_step(ckpt) if ckpt is not None else -1
    store.truncate_after(run_id, step)
    runner = info.runner or {}
    experiment = experiment or runner.get("experiment") or DEFAULT_EXPERIMENT
    threads = threads or runner.get("threads")
    store.set_status(run_id, "queued")
    logger.info("resuming run %s from %s", run_id, ckpt or "scratch")
    proc = spawn_run(store, run_id, resume=ckpt is not None, threads=threads, experiment=experiment,
                   nice=int(runner.get("nice", 0)))
    return RunHandle(run_id, store.workspace, proc)


# -- the child process ---------------------------------------------------------------------------
def _summary(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON part of an experiment result (drops the model object and other non-data values)."""
    return {k: v for k, v in result.items() if k != "model"}


def _child_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m prunekit.train.runner")
    p.add_argument("--workspace", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--nice", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    threads = run_threads(args.threads)
    for k, v in thread_env(threads).items():
        os.environ.setdefault(k, v)
    if args.nice:
        os.nice(args.nice)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (torch imported and used earlier in this interpreter)
        pass

    store = RunStore(args.workspace)
    run_id = args.run
    info = store.get_run(run_id)
    ckpt_dir = store.run_dir(run_id) / "checkpoints"
    # the final status is set below, with the experiment's full result (test metrics included)
    cb = StoreCallback(store, run_id, checkpoint_dir=ckpt_dir, manage_status=False)
    store.set_status(run_id, "running", pid=os.getpid())
    # SIGTERM/SIGINT (e.g. `kill PID`, a container stop) become a graceful stop
    signal.signal(signal.SIGTERM, lambda *_: setattr(cb, "stop_seen", True))
    signal.signal(signal.SIGINT, lambda *_: setattr(cb, "stop_seen", True))
    try:
        cfg = RunConfig.from_dict(info.config)
        fn = resolve_experiment(args.experiment)
        resume_from = None
        if args.resume:
            resume_from = store.latest_checkpoint(run_id)
            if resume_from is None:
                resume_from = ckpt_dir / CHECKPOINT_NAME
        logger.info("run %s: %s on %s with %s, %d threads%s", run_id, cfg.model, cfg.dataset, cfg.method, threads,
                    f", resuming from {resume_from}" if resume_from else "")
        result = fn(cfg, callbacks=[cb], checkpoint_dir=ckpt_dir, resume_from=resume_from)
    except BaseException as e:  # noqa: BLE001 - every failure must reach the store
        cb.close()
        step = getattr(e, "step", None)
        msg = f"{type(e).__name__}: {e}"
        if step is not None and f"step {step}" not in msg:
            msg += f" (at step {step})"
        logger.error("run %s failed: %s\n%s", run_id, msg, traceback.format_exc())
        store.set_status(run_id, "failed", error=msg)
        store.close()
        return 1
    summary = _summary(result)
    final = {k: v for k, v in (summary.get("metrics") or {}).items() if k.endswith("/test")}
    if final:
        store.log_scalars(run_id, int(summary.get("steps", 0) or 0), int(summary.get("epochs", 0) or 0), final)
    if cb.diverged is not None:
        status, err = "failed", f"training diverged: loss is {cb.diverged[1]} at step {cb.diverged[0]}"
    else:
        status = "stopped" if summary.get("status") == "stopped" or cb.stop_seen else "done"
        err = None
    store.set_status(run_id, status, error=err, result=summary)
    store.close()
    logger.info("run %s %s", run_id, status)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
