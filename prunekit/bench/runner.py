"""Benchmark of background training: what the run store costs a step, and how threads share a small machine.

Two parts, each a few seconds on a 2-core CPU:

* ``logging``: a small CNN (3 convs, 16×16 inputs, batch 32) trains ``steps`` steps (1 torch thread) three ways: without the
  store, with a :class:`~prunekit.train.store.StoreCallback` (every step's scalars plus 4 per-layer rows for
  each of 12 layers every 10 steps, as a gated model logs), and with that plus a UI-like reader process
  polling the store every 200 ms. Reported: median step time of each, and the time spent inside the
  callback per step (the direct cost of logging; the wall-time difference is mostly noise on a shared machine).
* ``threads``: a training child process (the runner's thread settings: ``OMP_NUM_THREADS``,
  ``OMP_WAIT_POLICY=PASSIVE``) with torch threads 1 and 2, alone and beside a busy process holding one core
  (a stand-in for the app). Reported: training img/s, and the latency of a UI-like task (a store read plus
  ~10 ms of Python) run every 200 ms next to the training, as p50/p95.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
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


def markdown_table(res: dict[str, Any]) -> str:
    lg, th = res["logging"], res["threads"]
    lines = [
        "## runner: logging cost", "",
        "| setting | median step (ms) | inside the store callback (ms/step) | share of step time |",
        "|---|---:|---:|---:|",
        f"| no store | {lg['no_store_ms']:.2f} | - | - |",
        f"| StoreCallback | {lg['store_ms']:.2f} | {lg['callback_ms_per_step']:.3f} | {lg['callback_share']:.2%} |",
        f"| StoreCallback + reader every 200 ms | {lg['store_reader_ms']:.2f} | "
        f"{lg['callback_ms_per_step_with_reader']:.3f} | {lg['callback_share_with_reader']:.2%} |",
        "", f"## runner: threads ({th['cores']} cores; UI task alone: {th['ui_idle_ms']:.1f} ms)", "",
        "| torch threads | busy neighbour | training img/s | UI task p50 (ms) | UI task p95 (ms) |",
        "|---:|---|---:|---:|---:|",
    ]
    for c in th["cases"]:
        img = f"{c['train_img_s']:.0f}" if c["train_img_s"] else "-"
        p50 = f"{c['ui_p50_ms']:.1f}" if c["ui_p50_ms"] is not None else "-"
        p95 = f"{c['ui_p95_ms']:.1f}" if c["ui_p95_ms"] is not None else "-"
        lines.append(f"| {c['threads']} | {'yes' if c['busy_neighbour'] else 'no'} | {img} | {p50} | {p95} |")
    return "\n".join(lines) + "\n"


def bench_runner(out_dir: str | Path, steps: int = 60, seconds: float = 3.0) -> dict[str, Any]:
    """Run both parts; write ``runner.json`` and ``runner.md`` to ``out_dir`` and return the numbers."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="prunekit-bench-") as tmp:
        res = {"logging": bench_logging(Path(tmp) / "log", steps), "threads": bench_threads(Path(tmp) / "thr", seconds)}
    (out_dir / "runner.json").write_text(json.dumps(res, indent=2))
    (out_dir / "runner.md").write_text(markdown_table(res))
    return res


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(prog="python -m prunekit.bench.runner")
    p.add_argument("--out", default="bench-results")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seconds", type=float, default=3.0)
    a = p.parse_args()
    r = bench_runner(a.out, a.steps, a.seconds)
    sys.stdout.write(markdown_table(r))
