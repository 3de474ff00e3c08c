"""Benchmark of background training: what the run store costs a step, and how threads share a small machine.

Three parts, each a few seconds to a minute on a 2-core CPU:

* ``logging``: a small CNN (3 convs, 16×16 inputs, batch 32) trains ``steps`` steps (1 torch thread) three ways: without the
  store, with a :class:`~prunekit.train.store.StoreCallback` (every step's scalars plus 4 per-layer rows for
  each of 12 layers every 10 steps, as a gated model logs), and with that plus a UI-like reader process
  polling the store every 200 ms. Reported: median step time of each, and the time spent inside the
  callback per step (the direct cost of logging; the wall-time difference is mostly noise on a shared machine).
* ``threads``: a training child process (the runner's thread settings: ``OMP_NUM_THREADS``,
  ``OMP_WAIT_POLICY=PASSIVE``) with torch threads 1 and 2, alone and beside a busy process holding one core
  (a stand-in for the app). Reported: training img/s, and the latency of a UI-like task (a store read plus
  ~10 ms of Python) run every 200 ms next to the training, as p50/p95.
* ``load``: ``runs`` background runs at once (the real runner: ``start_run``, one process each, a gated tiny CNN that
  logs every step's scalars and per-layer rows and checkpoints every epoch) while an app-like thread polls the store
  every 200 ms through one shared store (runs list, each run's scalars, last layer rows). Reported: runs per minute,
  the runs' store write latency (every flush of buffered rows and every checkpoint record, timed inside the runs:
  p50/p95/max), the poller's read latency, and lock errors (``database is locked`` anywhere: runs' flushes, their logs,
  their final status, the poller; the goal is 0).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from prunekit._device import thread_env
from prunekit.train.store import RunStore, StoreCallback

logger = logging.getLogger(__name__)

_TRAIN_SNIPPET = textwrap.dedent("""
    import sys, time, torch
    from torch import nn
    torch.set_num_threads(int(sys.argv[1]))
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.ReLU(),
                      nn.Conv2d(64, 64, 3, padding=1, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(64, 10))
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    x, y = torch.randn(32, 3, 16, 16), torch.randint(0, 10, (32,))
    for _ in range(3):
        opt.zero_grad(); nn.functional.cross_entropy(m(x), y).backward(); opt.step()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < float(sys.argv[2]):
        opt.zero_grad(); nn.functional.cross_entropy(m(x), y).backward(); opt.step(); n += 1
    print(n * 32 / (time.perf_counter() - t0))
""")

_READER_SNIPPET = textwrap.dedent("""
    import sys, time
    from prunekit.train.store import RunStore
    s = RunStore(sys.argv[1])
    end = time.monotonic() + float(sys.argv[3])
    while time.monotonic() < end:
        s.metrics(sys.argv[2]); s.layer_metrics(sys.argv[2], step="last"); s.list_runs()
        time.sleep(0.2)
""")

_BUSY_SNIPPET = "import time\nend = time.monotonic() + float(__import__('sys').argv[1])\nwhile time.monotonic() < end: pass\n"


def _model() -> Any:
    from torch import nn

    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1, stride=2),
                         nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(64, 10))


class _Trainer:
    def __init__(self) -> None:
        self.step, self.epoch, self.steps_per_epoch = 0, 0, 10_000
        self.config = type("C", (), {"epochs": 1})()


def _train_steps(steps: int, callback: Any = None) -> tuple[list[float], float]:
    """Per-step wall times and the total seconds spent inside the callback."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    x, y = torch.randn(32, 3, 16, 16), torch.randint(0, 10, (32,))
    tr = _Trainer()
    layer_rows = [{"layer": f"layer{i}", "name": n, "value": 0.5, "data": [0.5] * 16 if n == "gate_values" else None}
                  for i in range(12) for n in ("gate_mean", "keep_ratio", "confidence", "gate_values")]
    times, in_cb = [], 0.0
    if callback is not None:
        callback.on_train_start(tr)
    for i in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        tr.step = i + 1
        if callback is not None:
            c0 = time.perf_counter()
            callback.on_step_end(tr, {"loss": loss.item(), "loss/task": loss.item(), "acc/train": 0.5, "lr": 0.01,
                                      "temperature": 1.0, "macs_ratio/expected": 0.6, "throughput": 1000.0})
            if tr.step % 10 == 0:
                callback.on_layer_metrics(tr, layer_rows)
            callback.should_stop(tr)
            in_cb += time.perf_counter() - c0
        times.append(time.perf_counter() - t0)
    if callback is not None:
        c0 = time.perf_counter()
        callback.store.flush()
        in_cb += time.perf_counter() - c0
        callback.on_train_end(tr, {"status": "completed"})
    return times, in_cb


def bench_logging(workspace: Path, steps: int = 60) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)  # what a background run gets on a 2-core machine (_device.run_threads)
    store = RunStore(workspace)
    res: dict[str, Any] = {"steps": steps}
    _train_steps(5)  # warm-up
    base, _ = _train_steps(steps)
    res["no_store_ms"] = statistics.median(base) * 1e3

    rid = store.create_run({"model": "bench", "dataset": "random", "method": "dense"})
    cb = StoreCallback(store, rid, heartbeat_interval=2.0)
    with_store, in_cb = _train_steps(steps, cb)
    res["store_ms"] = statistics.median(with_store) * 1e3
    res["callback_ms_per_step"] = in_cb / steps * 1e3
    res["callback_share"] = in_cb / sum(with_store)

    rid2 = store.create_run({"model": "bench", "dataset": "random", "method": "dense"})
    cb2 = StoreCallback(store, rid2, heartbeat_interval=2.0)
    duration = max(5.0, 3 * sum(with_store))
    reader = subprocess.Popen([sys.executable, "-c", _READER_SNIPPET, str(workspace), rid2, str(duration)])
    time.sleep(1.0)  # let the reader start polling
    with_reader, in_cb2 = _train_steps(steps, cb2)
    reader.wait()
    res["store_reader_ms"] = statistics.median(with_reader) * 1e3
    res["callback_ms_per_step_with_reader"] = in_cb2 / steps * 1e3
    res["callback_share_with_reader"] = in_cb2 / sum(with_reader)
    res["reader_exit_code"] = reader.returncode
    res["rows_written"] = int(len(store.metrics(rid)) + len(store.layer_metrics(rid)))
    store.close()
    return res


def _ui_task(store: Any, run_id: str) -> float:
    t0 = time.perf_counter()
    store.metrics(run_id)
    sum(i * i for i in range(150_000))  # ~10 ms of Python, like a page rerun building a figure
    return time.perf_counter() - t0


def bench_threads(workspace: Path, seconds: float = 3.0) -> dict[str, Any]:
    store = RunStore(workspace)
    rid = store.create_run({"model": "bench", "dataset": "random", "method": "dense"})
    store.log_scalars(rid, 1, 0, {"loss": 1.0})
    store.flush()
    idle = [_ui_task(store, rid) for _ in range(5)]
    cases: list[dict[str, Any]] = []
    for busy in (False, True):
        for threads in (1, 2):
            env = {**os.environ, **thread_env(threads)}
            hog = subprocess.Popen([sys.executable, "-c", _BUSY_SNIPPET, str(seconds + 3)]) if busy else None
            trainer = subprocess.Popen([sys.executable, "-c", _TRAIN_SNIPPET, str(threads), str(seconds)], env=env,
                                       stdout=subprocess.PIPE, text=True)
            time.sleep(1.5)  # torch import
            lat = []
            while trainer.poll() is None:
                lat.append(_ui_task(store, rid))
                time.sleep(0.2)
            out = trainer.communicate()[0].strip()
            if hog is not None:
                hog.kill()
                hog.wait()
            lat.sort()
            cases.append({
                "threads": threads, "busy_neighbour": busy, "train_img_s": float(out) if out else None,
                "ui_p50_ms": lat[len(lat) // 2] * 1e3 if lat else None,
                "ui_p95_ms": lat[min(len(lat) - 1, int(0.95 * len(lat)))] * 1e3 if lat else None,
                "ui_samples": len(lat),
            })
    store.close()
    return {"cores": len(os.sched_getaffinity(0)), "seconds": seconds,
            "ui_idle_ms": statistics.median(idle) * 1e3, "cases": cases}


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def load_experiment(cfg: Any, callbacks: Any = (), checkpoint_dir: Any = None, resume_from: Any = None) -> dict[str, Any]:
    """The ``load`` part's background run (``prunekit.bench.runner:load_experiment``): cfg's method on a 3-layer CNN
    and ``cfg.dataset``; times every store write of the run (flush of buffered rows, checkpoint record) and writes
    the times and lock errors to ``store_writes.json`` in the checkpoint folder's parent (the run's folder)."""
    import torch
    from torch import nn

    from prunekit.data import make_loaders
    from prunekit.methods import create_method
    from prunekit.train.loop import Trainer

    store = next(cb.store for cb in callbacks if isinstance(cb, StoreCallback))
    times: list[float] = []
    errors: list[str] = []

    def timed(fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            except sqlite3.OperationalError as e:
                errors.append(str(e))
                raise
            finally:
                times.append(time.perf_counter() - t0)
        return wrapper

    store.flush = timed(store.flush)
    store.add_checkpoint = timed(store.add_checkpoint)
    torch.manual_seed(cfg.train.seed)
    loaders = make_loaders(cfg.dataset, cfg.train.batch_size, seed=cfg.train.seed, **cfg.data_options)
    layers, c = [], 3
    for w in (16, 32, 32):
        layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
        c = w
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))
    method = create_method(cfg.method, **cfg.method_options)
    model = method.prepare(model, torch.stack([loaders.train.dataset[i][0] for i in range(2)]))
    trainer = Trainer(model, loaders, cfg.train, method, callbacks, checkpoint_dir=checkpoint_dir,
                      resume_from=resume_from, run_config=cfg.to_dict())
    result = trainer.fit()
    if checkpoint_dir is not None:
        out = Path(checkpoint_dir).parent / "store_writes.json"
        out.write_text(json.dumps({"seconds": times, "lock_errors": errors}))
    return result


def bench_load(workspace: Path, runs: int = 4, epochs: int = 2, steps_per_epoch: int = 10,
               poll_interval: float = 0.2, method: str = "crisp") -> dict[str, Any]:
    """``runs`` background runs at once with an app-like poller; see the module docstring."""
    from prunekit.train.config import RunConfig, TrainConfig
    from prunekit.train.runner import start_run

    cfg = RunConfig(model="tiny-cnn", dataset="shapes", method=method,
                    data_options={"num_samples": 16 * steps_per_epoch + 32, "num_test": 32, "image_size": 16},
                    train=TrainConfig(epochs=epochs, batch_size=16, max_steps_per_epoch=steps_per_epoch, log_every=1,
                                      device="cpu", num_threads=1))
    app = RunStore(workspace)  # one store for the poller, as the app keeps one per process
    reads: list[float] = []
    read_errors: list[str] = []
    done = threading.Event()
    ids: list[str] = []

    def poll() -> None:
        while not done.wait(poll_interval):
            t0 = time.perf_counter()
            try:
                app.list_runs()
                for rid in list(ids):
                    app.metrics(rid)
                    app.layer_metrics(rid, step="last")
            except Exception as e:  # noqa: BLE001 - counted and reported
                read_errors.append(f"{type(e).__name__}: {e}")
            reads.append(time.perf_counter() - t0)

    poller = threading.Thread(target=poll, name="bench-app-poller", daemon=True)
    poller.start()
    t0 = time.perf_counter()
    handles = [start_run(cfg.replace(name=f"load {i}"), workspace=workspace, threads=1,
                         experiment="prunekit.bench.runner:load_experiment") for i in range(runs)]
    ids.extend(h.id for h in handles)
    infos = [h.wait(timeout=900) for h in handles]
    wall = time.perf_counter() - t0
    done.set()
    poller.join(10)
    writes: list[float] = []
    run_lock_errors = 0
    for h in handles:
        run_dir = app.run_dir(h.id)
        f = run_dir / "store_writes.json"
        if f.exists():
            w = json.loads(f.read_text())
            writes += w["seconds"]
            run_lock_errors += len(w["lock_errors"])
        log = run_dir / "log.txt"
        if log.exists():
            run_lock_errors += log.read_text().count("database is locked")
    status_lock_errors = sum("locked" in (i.error or "") for i in infos)
    rows = sum(len(app.metrics(h.id)) + len(app.layer_metrics(h.id)) for h in handles)
    app.close()
    return {
        "runs": runs, "epochs": epochs, "steps_per_epoch": steps_per_epoch, "method": method,
        "statuses": [i.status for i in infos], "wall_s": wall, "runs_per_minute": runs / wall * 60,
        "rows_written": rows, "store_writes": len(writes),
        "write_p50_ms": (_percentile(writes, 0.5) or 0.0) * 1e3, "write_p95_ms": (_percentile(writes, 0.95) or 0.0) * 1e3,
        "write_max_ms": max(writes, default=0.0) * 1e3,
        "reads": len(reads), "read_p50_ms": (_percentile(reads, 0.5) or 0.0) * 1e3,
        "read_p95_ms": (_percentile(reads, 0.95) or 0.0) * 1e3,
        "lock_errors": run_lock_errors + status_lock_errors + sum("locked" in e for e in read_errors),
        "read_errors": len(read_errors), "read_error_examples": read_errors[:3],
    }


def markdown_table(res: dict[str, Any]) -> str:
    lines: list[str] = []
    if "logging" in res:
        lines += _logging_table(res["logging"])
    if "threads" in res:
        lines += _threads_table(res["threads"])
    if "load" in res:
        ld = res["load"]
        lines += [
            "", f"## runner: load ({ld['runs']} concurrent background runs of {ld['method']}, "
            f"{ld['epochs']}×{ld['steps_per_epoch']} steps, every step logged; an app-like poller every 200 ms)", "",
            "| runs/min | store writes | write p50 (ms) | write p95 (ms) | write max (ms) | poller reads | "
            "read p50 (ms) | read p95 (ms) | lock errors | read errors | statuses |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            f"| {ld['runs_per_minute']:.1f} | {ld['store_writes']} | {ld['write_p50_ms']:.1f} | {ld['write_p95_ms']:.1f} | "
            f"{ld['write_max_ms']:.1f} | {ld['reads']} | {ld['read_p50_ms']:.1f} | {ld['read_p95_ms']:.1f} | "
            f"{ld['lock_errors']} | {ld['read_errors']} | {', '.join(sorted(set(ld['statuses'])))} |",
        ]
    return "\n".join(lines).lstrip("\n") + "\n"


def _logging_table(lg: dict[str, Any]) -> list[str]:
    return [
        "## runner: logging cost", "",
        "| setting | median step (ms) | inside the store callback (ms/step) | share of step time |",
        "|---|---:|---:|---:|",
        f"| no store | {lg['no_store_ms']:.2f} | - | - |",
        f"| StoreCallback | {lg['store_ms']:.2f} | {lg['callback_ms_per_step']:.3f} | {lg['callback_share']:.2%} |",
        f"| StoreCallback + reader every 200 ms | {lg['store_reader_ms']:.2f} | "
        f"{lg['callback_ms_per_step_with_reader']:.3f} | {lg['callback_share_with_reader']:.2%} |",
    ]


def _threads_table(th: dict[str, Any]) -> list[str]:
    lines = [
        "", f"## runner: threads ({th['cores']} cores; UI task alone: {th['ui_idle_ms']:.1f} ms)", "",
        "| torch threads | busy neighbour | training img/s | UI task p50 (ms) | UI task p95 (ms) |",
        "|---:|---|---:|---:|---:|",
    ]
    for c in th["cases"]:
        img = f"{c['train_img_s']:.0f}" if c["train_img_s"] else "-"
        p50 = f"{c['ui_p50_ms']:.1f}" if c["ui_p50_ms"] is not None else "-"
        p95 = f"{c['ui_p95_ms']:.1f}" if c["ui_p95_ms"] is not None else "-"
        lines.append(f"| {c['threads']} | {'yes' if c['busy_neighbour'] else 'no'} | {img} | {p50} | {p95} |")
    return lines


PARTS = ("logging", "threads", "load")


def bench_runner(out_dir: str | Path, steps: int = 60, seconds: float = 3.0, parts: tuple[str, ...] = PARTS,
                 runs: int = 4, epochs: int = 2, steps_per_epoch: int = 10, method: str = "crisp") -> dict[str, Any]:
    """Run ``parts`` (default all three); write ``runner.json`` and ``runner.md`` to ``out_dir`` and return the numbers.

    ``runs``, ``epochs``, ``steps_per_epoch`` and ``method`` size the ``load`` part
    (``prunekit bench runner --set parts=[\"load\"] --set runs=4``).
    """
    parts = (parts,) if isinstance(parts, str) else tuple(parts)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"parts must be among {', '.join(PARTS)}, got {', '.join(unknown)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="prunekit-bench-") as tmp:
        if "logging" in parts:
            res["logging"] = bench_logging(Path(tmp) / "log", steps)
        if "threads" in parts:
            res["threads"] = bench_threads(Path(tmp) / "thr", seconds)
        if "load" in parts:
            res["load"] = bench_load(Path(tmp) / "load", runs, epochs, steps_per_epoch, method=method)
    (out_dir / "runner.json").write_text(json.dumps(res, indent=2))
    (out_dir / "runner.md").write_text(markdown_table(res))
    return res


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(prog="python -m prunekit.bench.runner")
    p.add_argument("--out", default="bench-results")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--runs", type=int, default=4)
    a = p.parse_args()
    r = bench_runner(a.out, a.steps, a.seconds, tuple(a.parts.split(",")), a.runs)
    sys.stdout.write(markdown_table(r))
