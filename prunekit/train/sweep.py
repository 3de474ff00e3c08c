"""Sweeps: one base config, one or more options varied over a grid, the runs recorded as one sweep.

``create_sweep`` validates every grid point and queues the runs (nothing trains yet); ``run_sweep`` is the
scheduler: it launches queued runs of the sweep as background processes, at most ``concurrency`` at once,
and returns when none is left queued or running. It runs in the foreground of whoever calls it (the CLI
``prunekit sweep``, a notebook cell); ``start_sweep_scheduler`` runs the same scheduler as a detached
process (``prunekit sweep --background``). Runs are claimed atomically in the store, so two schedulers on
one sweep never launch the same run twice, and a scheduler that dies can simply be started again.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from prunekit._device import run_threads
from prunekit.errors import ConfigError
from prunekit.train.config import RunConfig
from prunekit.train.runner import DEFAULT_EXPERIMENT, spawn_run
from prunekit.train.store import RunStore

logger = logging.getLogger(__name__)


def _set_path(d: dict[str, Any], key: str, value: Any) -> None:
    """Set ``d["a"]["b"] = value`` for ``key = "a.b"``; the first part must be a RunConfig field."""
    parts = key.split(".")
    node = d
    for p in parts[:-1]:
        if not isinstance(node.get(p, {}), dict):
            raise ConfigError(f"sweep key {key!r}: {p!r} is not a group of options")
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def expand_grid(base: RunConfig | dict[str, Any], grid: dict[str, list[Any]]) -> list[RunConfig]:
    """Every combination of ``grid`` applied to ``base``.

    Args:
        base: the shared configuration.
        grid: dotted config paths to value lists, e.g. ``{"method_options.target_macs": [0.3, 0.5]}`` or
            ``{"train.lr": [0.1, 0.05]}``.

    Returns:
        one validated RunConfig per grid point, named ``"<base name> key=value ..."``.

    Raises:
        ConfigError: an empty grid, an empty value list, or a grid point that fails validation.
    """
    base_d = base.to_dict() if isinstance(base, RunConfig) else RunConfig.from_dict(dict(base)).to_dict()
    if not grid:
        raise ConfigError("grid must name at least one option to sweep, got {}")
    for k, v in grid.items():
        if not isinstance(v, (list, tuple)) or not v:
            raise ConfigError(f"sweep values of {k!r} must be a non-empty list, got {v!r}")
    out = []
    keys = list(grid)
    for combo in itertools.product(*(grid[k] for k in keys)):
        d = {**base_d, "train": dict(base_d["train"]), "method_options": dict(base_d["method_options"]),
             "data_options": dict(base_d["data_options"])}
        for k, v in zip(keys, combo):
            _set_path(d, k, v)
        label = " ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, combo))
        d["name"] = f"{base_d.get('name') or base_d['method']} {label}"
        try:
            out.append(RunConfig.from_dict(d))
        except TypeError as e:  # e.g. a misspelt train option reaching the dataclass
            raise ConfigError(f"sweep point {label}: {e}") from None
    return out


def create_sweep(
    base: RunConfig | dict[str, Any], grid: dict[str, list[Any]], *, name: str | None = None,
    workspace: str | Path | None = None,
) -> tuple[str, list[str]]:
    """Validate the grid and queue one run per point, recorded as one sweep; returns ``(sweep_id, run_ids)``."""
    configs = expand_grid(base, grid)
    store = RunStore(workspace)
    base_d = base.to_dict() if isinstance(base, RunConfig) else dict(base)
    sweep_id = store.create_sweep(name or f"{base_d.get('method')} sweep over {', '.join(grid)}",
                                  {"base": base_d, "grid": {k: list(v) for k, v in grid.items()}})
    run_ids = [store.create_run(c.to_dict(), sweep_id=sweep_id) for c in configs]
    store.close()
    return sweep_id, run_ids


def run_sweep(
    sweep_id: str, *, workspace: str | Path | None = None, concurrency: int = 1, threads: int | None = None,
    experiment: str = DEFAULT_EXPERIMENT, poll: float = 1.0, timeout: float | None = None,
) -> pd.DataFrame:
    """Launch the sweep's queued runs, at most ``concurrency`` at a time, until none is queued or running.

    Args:
        threads: torch threads per run; default: the cores minus one, shared among ``concurrency`` runs.
        timeout: give up (leaving the rest queued) after this many seconds.

    Returns:
        ``store.list_runs(sweep_id=...)``: the final state of every run of the sweep.
    """
    if concurrency < 1:
        raise ConfigError(f"concurrency must be >= 1, got {concurrency}")
    store = RunStore(workspace)
    store.get_sweep(sweep_id)
    threads = run_threads(threads, concurrency)
    deadline = None if timeout is None else time.monotonic() + timeout
    procs: list[subprocess.Popen] = []
    while True:
        for p in procs:
            p.poll()  # reap finished children so their pids read as dead
        runs = store.list_runs(sweep_id=sweep_id)
        launched = runs.status.eq("queued") & runs.pid.notna()  # started, not yet marked running
        busy = int(runs.status.eq("running").sum() + launched.sum())
        queued = runs[runs.status.eq("queued") & runs.pid.isna()].sort_values("created")
        if busy == 0 and queued.empty:
            break
        if deadline is not None and time.monotonic() > deadline:
            logger.warning("sweep %s: timeout after %s s with %d runs left", sweep_id, timeout, len(queued) + busy)
            break
        for run_id in list(queued.id)[: max(0, concurrency - busy)]:
            try:
                procs.append(spawn_run(store, run_id, resume=False, threads=threads, experiment=experiment))
            except ConfigError as e:  # claimed by another scheduler meanwhile
                logger.info("sweep %s: %s", sweep_id, e)
        time.sleep(poll)
    out = store.list_runs(sweep_id=sweep_id)
    store.close()
    return out


def start_sweep_scheduler(
    sweep_id: str, *, workspace: str | Path | None = None, concurrency: int = 1, threads: int | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
) -> int:
    """Run :func:`run_sweep` in a detached process (it outlives the caller); returns its pid."""
    store = RunStore(workspace)
    store.get_sweep(sweep_id)
    cmd = [sys.executable, "-m", "prunekit.train.sweep", "--workspace", str(store.workspace.resolve()),
           "--sweep", sweep_id, "--concurrency", str(concurrency), "--experiment", experiment]
    if threads:
        cmd += ["--threads", str(threads)]
    with open(store.workspace / f"sweep-{sweep_id}.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=dict(os.environ))
    return proc.pid


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m prunekit.train.sweep", description="sweep scheduler")
    p.add_argument("--workspace", required=True)
    p.add_argument("--sweep", required=True)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_sweep(a.sweep, workspace=a.workspace, concurrency=a.concurrency, threads=a.threads, experiment=a.experiment)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
