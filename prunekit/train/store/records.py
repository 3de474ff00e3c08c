"""What the run store keeps about a run, and how values become rows: statuses, :class:`RunInfo`, ids, hosts.

Configs, results and per-layer data are stored as JSON text; :func:`jsonable` turns tensors, numpy values,
paths and non-finite floats into JSON types first, and :func:`decode_run` turns a ``runs`` row back into a
:class:`RunInfo`.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATUSES = ("queued", "running", "done", "failed", "stopped", "interrupted")
TERMINAL = ("done", "failed", "stopped", "interrupted")


@dataclass(frozen=True)
class RunInfo:
    """One row of the runs table, decoded."""

    id: str
    config: dict[str, Any]
    status: str
    error: str | None
    created: float
    started: float | None
    finished: float | None
    heartbeat: float | None
    pid: int | None
    sweep_id: str | None
    progress: float
    result: dict[str, Any] | None
    name: str | None = None
    updated: float | None = None
    host: str | None = None
    stop_requested: bool = False
    runner: dict[str, Any] | None = None


def decode_run(r: dict[str, Any]) -> RunInfo:
    """The :class:`RunInfo` of a ``runs`` row given as ``{column: value}``."""
    return RunInfo(
        id=r["id"], config=json.loads(r["config"]), status=r["status"], error=r["error"], created=r["created"],
        started=r["started"], finished=r["finished"], heartbeat=r["heartbeat"], pid=r["pid"],
        sweep_id=r["sweep_id"], progress=r["progress"] or 0.0,
        result=json.loads(r["result"]) if r["result"] else None, name=r["name"], updated=r["updated"],
        host=r["host"], stop_requested=bool(r["stop_requested"]),
        runner=json.loads(r["runner"]) if r.get("runner") else None,
    )


def default_workspace() -> Path:
    """``$PRUNEKIT_HOME`` or ``./prunekit-runs``."""
    return Path(os.environ.get("PRUNEKIT_HOME") or "prunekit-runs")


def host_id() -> str:
    """``hostname/boot-id``: a pid is only meaningful on the same machine since the same boot."""
    boot = ""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        pass
    return f"{socket.gethostname()}/{boot}"


def pid_alive(pid: int | None) -> bool:
    """True if ``pid`` is a live process on this machine (a zombie counts as dead)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child that its parent has not reaped yet still answers kill(0)
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def new_id(prefix: str = "r") -> str:
    """Short, sortable id: ``r20261121-104512-3f9a``."""
    return f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def jsonable(obj: Any) -> Any:
    """Best-effort conversion to JSON types (tensors, numpy scalars, paths, non-finite floats -> None)."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # torch tensors, numpy arrays and scalars
        return jsonable(obj.tolist())
    if hasattr(obj, "item"):
        return jsonable(obj.item())
    if hasattr(obj, "to_dict"):
        return jsonable(obj.to_dict())
    return str(obj)


def as_float(v: Any) -> float | None:
    """``float(v)``, or None when ``v`` is not a number."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f  # SQLite keeps +-inf; Python's sqlite3 stores NaN as NULL, which reads back as NaN
