"""``prunekit bench cli``: how fast the ``prunekit`` command answers when nothing has to be computed.

Target (issue 20 item 11): ``--help`` (top-level and per subcommand) and argument errors answer in ≤ 1 s,
i.e. nothing heavy (torch, torchvision, pandas, plotly, streamlit) is imported before it is needed.

Each case runs ``python -m prunekit.cli ARGS`` in a fresh interpreter ``repeats`` times, after one warm-up run
(the page cache), and reports the median and minimum wall time with the exit status. One extra run under
``python -X importtime`` says which heavy libraries the case imported: a case that imports torch cannot meet
the target, and the column explains a slow row better than the time itself on a shared machine.
``train --help`` is reported but not held to the target: its method flags are generated from the methods'
Configs, whose modules import torch.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prunekit.bench import md_table, write_report
from prunekit.errors import ConfigError

TARGET_S = 1.0
HEAVY = ("torch", "torchvision", "pandas", "plotly", "streamlit", "numpy")

# case -> (arguments, held to the target)
CASES: dict[str, tuple[tuple[str, ...], bool]] = {
    "--help": (("--help",), True),
    "eval --help": (("eval", "--help"), True),
    "runs list --help": (("runs", "list", "--help"), True),
    "bench --help": (("bench", "--help"), True),
    "nonsense (unknown command)": (("nonsense",), True),
    "train --model nosuch": (("train", "--model", "nosuch"), True),
    "train --epochs abc": (("train", "--epochs", "abc"), True),
    "list things": (("list", "things"), True),
    "train --help": (("train", "--help"), False),
}

PRESETS = {"quick": {"repeats": 3}, "full": {"repeats": 10}}


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONWARNINGS": "ignore"}


def _run(args: tuple[str, ...], *flags: str) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *flags, "-m", "prunekit.cli", *args], capture_output=True, text=True,
                          timeout=300, env=_env())
    return time.perf_counter() - t0, proc


def heavy_imports(args: tuple[str, ...]) -> list[str]:
    """The libraries of :data:`HEAVY` that ``prunekit ARGS`` imports (read from ``-X importtime``)."""
    _, proc = _run(args, "-X", "importtime")
    found = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:"):
            name = line.rsplit("|", 1)[-1].strip()
            if name in HEAVY:
                found.add(name)
    return sorted(found)


def time_case(args: tuple[str, ...], repeats: int) -> dict[str, Any]:
    """Median and minimum wall time of ``prunekit ARGS`` in a fresh interpreter, its exit status and first line."""
    _run(args)  # warm-up: the files in the page cache, as for a user's second call
    times, proc = [], None
    for _ in range(repeats):
        seconds, proc = _run(args)
        times.append(seconds)
    text = (proc.stdout + proc.stderr).strip().splitlines()
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "exit": proc.returncode, "first_line": text[0][:120] if text else ""}


def bench_cli(out_dir: str | Path, preset: str = "quick", *, repeats: int | None = None) -> dict[str, Any]:
    """Time every case of :data:`CASES`; write ``cli.json`` / ``cli.md``."""
    if preset not in PRESETS:
        raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    repeats = repeats if repeats is not None else PRESETS[preset]["repeats"]
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    results: dict[str, Any] = {}
    rows = []
    for name, (args, held) in CASES.items():
        r = {**time_case(args, repeats), "imports": heavy_imports(args), "held_to_target": held}
        r["meets_target"] = r["median_s"] <= TARGET_S if held else None
        results[name] = r
        rows.append([f"prunekit {name}", r["median_s"], r["min_s"], r["exit"], ", ".join(r["imports"]) or "none",
                     ("yes" if r["meets_target"] else "no") if held else "(not held)"])
    md = (f"# cli ({preset})\n\nWall time of `python -m prunekit.cli ARGS` in a fresh interpreter, median and minimum "
          f"of {repeats} runs after one warm-up; heavy libraries imported, from `-X importtime`. Target: ≤ {TARGET_S:g} s.\n\n"
          + md_table(["command", "median s", "min s", "exit", "heavy imports", f"≤ {TARGET_S:g} s"], rows))
    return write_report(out_dir, "cli", {"preset": preset, "repeats": repeats, "target_s": TARGET_S,
                                         "results": results}, md)
