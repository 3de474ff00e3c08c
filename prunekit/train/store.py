"""The run store: an embedded SQLite database of runs, their metrics, checkpoints and collapse results.

One file ``<workspace>/runs.sqlite`` (WAL journal, so readers such as the app and notebooks never block the
training process that writes) plus one folder per run ``<workspace>/runs/<run_id>/`` for checkpoints and logs.
Metric writes are buffered and flushed in one transaction per batch; every metric row is keyed by
``(run, name[, layer], step)`` and written with ``INSERT OR REPLACE``, so a resumed run that repeats a step
overwrites instead of duplicating.

The schema is versioned: ``meta.schema_version`` counts the entries of :data:`MIGRATIONS` already applied and
opening a store applies the missing ones in order. A file that is not SQLite, or SQLite written by another
application, or by a newer prunekit, is refused with :class:`~prunekit.errors.CheckpointError` and left untouched.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from prunekit.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

STATUSES = ("queued", "running", "done", "failed", "stopped", "interrupted")
TERMINAL = ("done", "failed", "stopped", "interrupted")
APPLICATION_ID = 0x50524B54  # "PRKT" in the SQLite header: tells our file from any other SQLite database
DB_NAME = "runs.sqlite"

# Each entry brings the schema from version i to i + 1; never edit an entry that has shipped, append one.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE runs (
            id TEXT PRIMARY KEY, name TEXT, config TEXT NOT NULL, status TEXT NOT NULL, error TEXT,
            created REAL NOT NULL, started REAL, finished REAL, updated REAL NOT NULL, heartbeat REAL,
            pid INTEGER, host TEXT, sweep_id TEXT, progress REAL NOT NULL DEFAULT 0, result TEXT,
            stop_requested INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX runs_sweep ON runs(sweep_id)",
        """CREATE TABLE scalars (
            run_id TEXT NOT NULL, step INTEGER NOT NULL, epoch INTEGER NOT NULL, name TEXT NOT NULL, value REAL,
            PRIMARY KEY (run_id, name, step)) WITHOUT ROWID""",
        "CREATE INDEX scalars_step ON scalars(run_id, step)",
        """CREATE TABLE layers (
            run_id TEXT NOT NULL, step INTEGER NOT NULL, epoch INTEGER NOT NULL, layer TEXT NOT NULL,
            name TEXT NOT NULL, value REAL, data TEXT,
            PRIMARY KEY (run_id, name, layer, step)) WITHOUT ROWID""",
        "CREATE INDEX layers_step ON layers(run_id, step)",
        """CREATE TABLE checkpoints (
            run_id TEXT NOT NULL, step INTEGER NOT NULL, epoch INTEGER NOT NULL, path TEXT NOT NULL,
            created REAL NOT NULL, PRIMARY KEY (run_id, step))""",
        """CREATE TABLE collapses (
            id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, created REAL NOT NULL, result TEXT NOT NULL)""",
        "CREATE INDEX collapses_run ON collapses(run_id)",
        "CREATE TABLE sweeps (id TEXT PRIMARY KEY, name TEXT, config TEXT NOT NULL, created REAL NOT NULL)",
    ],
    # 2: how the background runner launched the run (experiment callable, threads), so resume can repeat it.
    ["ALTER TABLE runs ADD COLUMN runner TEXT"],
]


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


def _jsonable(obj: Any) -> Any:
    """Best-effort conversion to JSON types (tensors, numpy scalars, paths, non-finite floats -> None)."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # torch tensors, numpy arrays and scalars
        return _jsonable(obj.tolist())
    if hasattr(obj, "item"):
        return _jsonable(obj.item())
    if hasattr(obj, "to_dict"):
        return _jsonable(obj.to_dict())
    return str(obj)


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f  # SQLite keeps +-inf; Python's sqlite3 stores NaN as NULL, which reads back as NaN


class RunStore:
    """Handle on one workspace's run database. Thread-safe; open one per process.

    Args:
        workspace: folder holding ``runs.sqlite`` and ``runs/``; default :func:`default_workspace`.
        stale_after: seconds without heartbeat after which a ``running`` run on another machine is considered
            dead. On this machine a dead pid is enough.
        flush_rows: buffered metric rows that trigger a flush.
        flush_interval: seconds after which buffered rows are flushed by the next log call.
    """

    def __init__(
        self,
        workspace: str | Path | None = None,
        *,
        stale_after: float = 15.0,
        flush_rows: int = 2000,
        flush_interval: float = 2.0,
    ) -> None:
        self.workspace = Path(workspace) if workspace is not None else default_workspace()
        self.path = self.workspace / DB_NAME
        self.stale_after = stale_after
        self.flush_rows = flush_rows
        self.flush_interval = flush_interval
        self._lock = threading.RLock()  # the connection
        self._buf_lock = threading.Lock()  # the metric buffers: appending never waits for the database
        self._scalar_buf: list[tuple] = []
        self._layer_buf: list[tuple] = []
        self._last_flush = time.monotonic()
        self._host = host_id()
        self._prepare_workspace()
        self._check_file()
        try:
            self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA busy_timeout = 30000")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise CheckpointError(f"run store {self.path} cannot be opened: {e}") from None

    # -- opening -----------------------------------------------------------------------------
    def _prepare_workspace(self) -> None:
        try:
            (self.workspace / "runs").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"workspace {str(self.workspace)!r} cannot be created: {e.strerror}") from None
        if not os.access(self.workspace, os.W_OK | os.X_OK) or (
            self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK)
        ):
            raise ConfigError(
                f"workspace {str(self.workspace)!r} is read-only; the run store needs a writable folder "
                "(pass workspace=... / --workspace or set PRUNEKIT_HOME)"
            )

    def _check_file(self) -> None:
        """Refuse anything that is not an empty file or one of our databases, before SQLite writes to it."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        # Never open() the file directly: closing any descriptor of it drops every POSIX lock this process
        # holds on it, including those of live SQLite connections, which corrupts the database.
        # the header's application_id may be stale in WAL mode (page 1 can live in the -wal file): ask SQLite.
        # A plain connection writes nothing until told to, so a foreign file stays as it was.
        try:
            probe = sqlite3.connect(self.path, timeout=30.0)
            try:
                app_id = probe.execute("PRAGMA application_id").fetchone()[0]
                tables = [r[0] for r in probe.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            finally:
                probe.close()
        except sqlite3.DatabaseError as e:
            raise CheckpointError(
                f"{self.path} is not a usable SQLite database (corrupt or foreign file: {e}); left untouched"
            ) from None
        if app_id == APPLICATION_ID or not tables:
            return
        raise CheckpointError(
            f"{self.path} is a SQLite database of another application "
            f"(application_id {app_id}, tables: {', '.join(tables[:5])}); left untouched"
        )

    def _migrate(self) -> None:
        c = self._conn
        has_meta = c.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if has_meta and self._read_version() == len(MIGRATIONS):
            return  # the common case: opening costs no write lock
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            version = self._read_version()
            if version > len(MIGRATIONS):
                raise CheckpointError(
                    f"{self.path} has schema version {version}, newer than this prunekit "
                    f"(knows up to {len(MIGRATIONS)}); upgrade prunekit to read it"
                )
            for i in range(version, len(MIGRATIONS)):
                for sql in MIGRATIONS[i]:
                    c.execute(sql)
                logger.info("run store %s migrated to schema version %d", self.path, i + 1)
            c.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(len(MIGRATIONS)),))
            c.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def _read_version(self) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else 0

    @property
    def schema_version(self) -> int:
        return self._read_version()

    def close(self) -> None:
        with self._lock:
            self.flush()
            self._conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _write(self, sql: str, params: tuple | list = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._conn.execute(sql, params)

    def run_dir(self, run_id: str) -> Path:
        return self.workspace / "runs" / run_id

    # -- runs ----------------------------------------------------------------------------------
    def create_run(self, config: dict[str, Any], *, sweep_id: str | None = None, status: str = "queued") -> str:
        """Insert a run and its folder; returns the new id."""
        if status not in STATUSES:
            raise ConfigError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        if hasattr(config, "to_dict"):
            config = config.to_dict()
        run_id = new_id("r")
        now = time.time()
        self._write(
            "INSERT INTO runs (id, name, config, status, created, updated, sweep_id) VALUES (?,?,?,?,?,?,?)",
            (run_id, config.get("name"), json.dumps(_jsonable(config)), status, now, now, sweep_id),
        )
        self.run_dir(run_id).mkdir(parents=True, exist_ok=True)
        return run_id

    def _row(self, run_id: str) -> sqlite3.Row | tuple:
        cur = self._conn.execute("SELECT * FROM runs WHERE id=?", (run_id,))
        row = cur.fetchone()
        if row is None:
            raise ConfigError(f"unknown run id {run_id!r} in {self.path}")
        return dict(zip([d[0] for d in cur.description], row))

    def _decode(self, r: dict[str, Any]) -> RunInfo:
        return RunInfo(
            id=r["id"], config=json.loads(r["config"]), status=r["status"], error=r["error"], created=r["created"],
            started=r["started"], finished=r["finished"], heartbeat=r["heartbeat"], pid=r["pid"],
            sweep_id=r["sweep_id"], progress=r["progress"] or 0.0,
            result=json.loads(r["result"]) if r["result"] else None, name=r["name"], updated=r["updated"],
            host=r["host"], stop_requested=bool(r["stop_requested"]),
            runner=json.loads(r["runner"]) if r.get("runner") else None,
        )

    def _check_alive(self, r: dict[str, Any]) -> dict[str, Any]:
        """Mark a ``running`` row whose process is gone as ``interrupted`` (in the db and in ``r``)."""
        if r["status"] == "queued" and r["pid"] and r["pid"] > 0 and (r["host"] or "") == self._host:
            if not pid_alive(r["pid"]):  # launched, but the process died before it could mark itself running
                msg = f"process {r['pid']} exited before the run started (see {self.run_dir(r['id']) / 'log.txt'})"
                return self._mark_interrupted(r, msg)
            return r
        if r["status"] != "running":
            return r
        host = r["host"] or ""
        if host == self._host:
            dead = not pid_alive(r["pid"])
        elif host.split("/")[0] == self._host.split("/")[0]:
            dead = True  # same machine, earlier boot
        else:  # another machine sharing the workspace: only the heartbeat tells
            dead = time.time() - (r["heartbeat"] or r["updated"]) > self.stale_after
        if dead:
            msg = f"process {r['pid']} ended without reporting (killed, out of memory or machine restart)"
            r = self._mark_interrupted(r, msg)
        return r

    def _mark_interrupted(self, r: dict[str, Any], msg: str) -> dict[str, Any]:
        now = time.time()
        cur = self._write(
            "UPDATE runs SET status='interrupted', error=?, finished=?, updated=? WHERE id=? AND status=?",
            (msg, now, now, r["id"], r["status"]),
        )
        if cur.rowcount:
            logger.warning("run %s: %s; marked interrupted", r["id"], msg)
        return {**r, "status": "interrupted", "error": msg, "finished": now, "updated": now}

    def claim(self, run_id: str, pid: int, runner: dict[str, Any] | None = None) -> bool:
        """Atomically record ``pid`` as the launcher of a queued, unclaimed run; False if someone else has it."""
        cur = self._write(
            "UPDATE runs SET pid=?, host=?, runner=COALESCE(?, runner), updated=? "
            "WHERE id=? AND status='queued' AND (pid IS NULL OR pid=0)",
            (pid, self._host, json.dumps(runner) if runner is not None else None, time.time(), run_id),
        )
        return cur.rowcount == 1

    def set_pid(self, run_id: str, pid: int) -> None:
        self._write("UPDATE runs SET pid=?, host=?, updated=? WHERE id=?", (pid, self._host, time.time(), run_id))

    def get_run(self, run_id: str) -> RunInfo:
        """The run's row; unknown id raises ConfigError."""
        return self._decode(self._check_alive(self._row(run_id)))

    def list_runs(self, *, status: str | None = None, sweep_id: str | None = None) -> pd.DataFrame:
        """One row per run, newest first, with the final ``acc/test`` and ``macs_ratio/hard`` when known."""
        q, params = "SELECT * FROM runs", []
        where = []
        if sweep_id is not None:
            where.append("sweep_id=?")
            params.append(sweep_id)
        if where:
            q += " WHERE " + " AND ".join(where)
        cur = self._conn.execute(q + " ORDER BY created DESC, id DESC", params)
        cols = [d[0] for d in cur.description]
        rows = [self._check_alive(dict(zip(cols, r))) for r in cur.fetchall()]
        if status is not None:
            rows = [r for r in rows if r["status"] == status]
        out = []
        last = self._final_scalars([r["id"] for r in rows], ("acc/test", "macs_ratio/hard", "acc/val"))
        for r in rows:
            cfg = json.loads(r["config"])
            res = json.loads(r["result"]) if r["result"] else {}
            res = {**res, **(res.get("metrics") or {})}
            fin = last.get(r["id"], {})
            out.append({
                "id": r["id"], "name": r["name"], "model": cfg.get("model"), "dataset": cfg.get("dataset"),
                "method": cfg.get("method"), "status": r["status"], "progress": r["progress"] or 0.0,
                "created": r["created"], "updated": r["updated"], "error": r["error"], "sweep_id": r["sweep_id"],
                "acc/test": res.get("acc/test", fin.get("acc/test")),
                "macs_ratio/hard": res.get("macs_ratio/hard", fin.get("macs_ratio/hard")),
                "acc/val": fin.get("acc/val"), "pid": r["pid"],
            })
        cols_out = ["id", "name", "model", "dataset", "method", "status", "progress", "created", "updated", "error",
                    "sweep_id", "acc/test", "macs_ratio/hard", "acc/val", "pid"]
        return pd.DataFrame(out, columns=cols_out)

    def _final_scalars(self, run_ids: list[str], names: tuple[str, ...]) -> dict[str, dict[str, float]]:
        if not run_ids:
            return {}
        self.flush()
        out: dict[str, dict[str, float]] = {}
        # one primary-key probe per (run, name): cheap however long the histories are
        q = "SELECT value FROM scalars WHERE run_id=? AND name=? ORDER BY step DESC LIMIT 1"
        for rid in run_ids:
            for name in names:
                row = self._conn.execute(q, (rid, name)).fetchone()
                if row is not None:
                    out.setdefault(rid, {})[name] = row[0]
        return out

    def set_status(
        self, run_id: str, status: str, *, error: str | None = None, result: dict | None = None, pid: int | None = None
    ) -> None:
        """Set the status; ``running`` records pid/host/start time, a terminal status the finish time."""
        if status not in STATUSES:
            raise ConfigError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        self._row(run_id)
        self.flush()
        now = time.time()
        sets, params = ["status=?", "updated=?", "error=?"], [status, now, error]
        if status == "running":
            sets += ["started=COALESCE(started, ?)", "heartbeat=?", "host=?", "finished=NULL"]
            params += [now, now, self._host]
        if status == "queued":
            sets += ["finished=NULL", "stop_requested=0"] + (["pid=NULL"] if pid is None else [])
        if status in TERMINAL:
            sets.append("finished=?")
            params.append(now)
        if status == "done":
            sets.append("progress=1.0")
        if pid is not None:
            sets.append("pid=?")
            params.append(pid)
        if result is not None:
            sets.append("result=?")
            params.append(json.dumps(_jsonable(result)))
        self._write(f"UPDATE runs SET {', '.join(sets)} WHERE id=?", [*params, run_id])

    def heartbeat(self, run_id: str, progress: float | None = None) -> None:
        now = time.time()
        if progress is None:
            self._write("UPDATE runs SET heartbeat=?, updated=? WHERE id=?", (now, now, run_id))
        else:
            p = min(1.0, max(0.0, float(progress)))
            self._write("UPDATE runs SET heartbeat=?, updated=?, progress=? WHERE id=?", (now, now, p, run_id))

    def request_stop(self, run_id: str) -> None:
        """Raise the run's stop flag; its StoreCallback sees it within a second and the loop stops gracefully."""
        self._row(run_id)
        self._write("UPDATE runs SET stop_requested=1, updated=? WHERE id=?", (time.time(), run_id))

    def stop_requested(self, run_id: str) -> bool:
        row = self._conn.execute("SELECT stop_requested FROM runs WHERE id=?", (run_id,)).fetchone()
        return bool(row and row[0])

    def delete_run(self, run_id: str) -> None:
        """Remove the run's rows and its folder (checkpoints, logs)."""
        self._row(run_id)
        with self._lock:
            with self._buf_lock:
                self._scalar_buf = [r for r in self._scalar_buf if r[0] != run_id]
                self._layer_buf = [r for r in self._layer_buf if r[0] != run_id]
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                for table in ("scalars", "layers", "checkpoints", "collapses"):
                    c.execute(f"DELETE FROM {table} WHERE run_id=?", (run_id,))
                c.execute("DELETE FROM runs WHERE id=?", (run_id,))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)

    def truncate_after(self, run_id: str, step: int) -> None:
        """Delete metric rows with ``step > step`` (before resuming from a checkpoint at ``step``)."""
        self.flush()
        with self._lock:
            for table in ("scalars", "layers"):
                self._conn.execute(f"DELETE FROM {table} WHERE run_id=? AND step>?", (run_id, step))
            self._conn.execute("DELETE FROM checkpoints WHERE run_id=? AND step>?", (run_id, step))

    # -- metrics -------------------------------------------------------------------------------
    def log_scalars(self, run_id: str, step: int, epoch: int, values: dict[str, float]) -> None:
        """Buffer scalar metrics of one step (flushed in batches; see :meth:`flush`)."""
        rows = [(run_id, int(step), int(epoch), str(k), _float(v)) for k, v in values.items()]
        with self._buf_lock:
            self._scalar_buf.extend(rows)
        self._maybe_flush()

    def log_layers(self, run_id: str, step: int, epoch: int, rows: list[dict[str, Any]]) -> None:
        """Buffer per-layer rows (keys ``layer``, ``name``, ``value`` and optional JSON-able ``data``)."""
        buf = []
        for r in rows:
            data = r.get("data")
            buf.append((
                run_id, int(step), int(epoch), str(r["layer"]), str(r["name"]), _float(r.get("value")),
                None if data is None else json.dumps(_jsonable(data)),
            ))
        with self._buf_lock:
            self._layer_buf.extend(buf)
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if (len(self._scalar_buf) + len(self._layer_buf) >= self.flush_rows
                or time.monotonic() - self._last_flush >= self.flush_interval):
            self.flush()

    def flush(self) -> None:
        """Write the buffered metric rows in one transaction (safe to call from another thread)."""
        with self._lock:
            with self._buf_lock:
                self._last_flush = time.monotonic()
                scalars, layers = self._scalar_buf, self._layer_buf
                self._scalar_buf, self._layer_buf = [], []
            if not scalars and not layers:
                return
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                if scalars:
                    c.executemany("INSERT OR REPLACE INTO scalars VALUES (?,?,?,?,?)", scalars)
                if layers:
                    c.executemany("INSERT OR REPLACE INTO layers VALUES (?,?,?,?,?,?,?)", layers)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                with self._buf_lock:
                    self._scalar_buf, self._layer_buf = scalars + self._scalar_buf, layers + self._layer_buf
                raise

    def metrics(self, run_id: str, names: list[str] | None = None, since_step: int | None = None) -> pd.DataFrame:
        """Scalar metrics as a long DataFrame ``[step, epoch, name, value]`` sorted by step."""
        self.flush()
        q, params = "SELECT step, epoch, name, value FROM scalars WHERE run_id=?", [run_id]
        if names is not None:
            q += f" AND name IN ({','.join('?' * len(names))})"
            params += list(names)
        if since_step is not None:
            q += " AND step>=?"
            params.append(int(since_step))
        rows = self._conn.execute(q + " ORDER BY step, name", params).fetchall()
        df = pd.DataFrame(rows, columns=["step", "epoch", "name", "value"])
        df["value"] = df["value"].astype(float)
        return df

    def layer_metrics(
        self, run_id: str, names: list[str] | None = None, step: int | str | None = None
    ) -> pd.DataFrame:
        """Per-layer rows ``[step, epoch, layer, name, value, data]``; ``step="last"`` keeps the latest step."""
        self.flush()
        q, params = "SELECT step, epoch, layer, name, value, data FROM layers WHERE run_id=?", [run_id]
        if names is not None:
            q += f" AND name IN ({','.join('?' * len(names))})"
            params += list(names)
        if step == "last":
            sub = "SELECT MAX(step) FROM layers WHERE run_id=?"
            subp: list[Any] = [run_id]
            if names is not None:
                sub += f" AND name IN ({','.join('?' * len(names))})"
                subp += list(names)
            q += f" AND step=({sub})"
            params += subp
        elif step is not None:
            q += " AND step=?"
            params.append(int(step))
        rows = self._conn.execute(q + " ORDER BY step, name, layer", params).fetchall()
        df = pd.DataFrame([r[:5] for r in rows], columns=["step", "epoch", "layer", "name", "value"])
        df["value"] = df["value"].astype(float)
        df["data"] = pd.Series([json.loads(r[5]) if r[5] is not None else None for r in rows], dtype=object)
        return df

    # -- checkpoints and collapse results ----------------------------------------------------
    def add_checkpoint(self, run_id: str, step: int, epoch: int, path: str | Path) -> None:
        """Record a checkpoint file; a file written again (the loop's ``last.pt``) keeps only its newest row."""
        self.flush()  # the metrics up to the checkpoint must be durable before it is
        with self._lock:
            self._conn.execute("DELETE FROM checkpoints WHERE run_id=? AND path=?", (run_id, str(path)))
            self._conn.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES (?,?,?,?,?)",
                (run_id, int(step), int(epoch), str(path), time.time()),
            )

    def checkpoints(self, run_id: str) -> pd.DataFrame:
        rows = self._conn.execute(
            "SELECT step, epoch, path, created FROM checkpoints WHERE run_id=? ORDER BY step", (run_id,)
        ).fetchall()
        return pd.DataFrame(rows, columns=["step", "epoch", "path", "created"])

    def latest_checkpoint(self, run_id: str) -> Path | None:
        """The newest recorded checkpoint whose file still exists."""
        rows = self._conn.execute(
            "SELECT path FROM checkpoints WHERE run_id=? ORDER BY step DESC", (run_id,)
        ).fetchall()
        for (p,) in rows:
            if Path(p).exists():
                return Path(p)
        return None

    def checkpoint_step(self, run_id: str, path: str | Path) -> int | None:
        row = self._conn.execute(
            "SELECT step FROM checkpoints WHERE run_id=? AND path=?", (run_id, str(path))
        ).fetchone()
        return None if row is None else int(row[0])

    def add_collapse_result(self, run_id: str, result: dict[str, Any]) -> int:
        self._row(run_id)
        cur = self._write(
            "INSERT INTO collapses (run_id, created, result) VALUES (?,?,?)",
            (run_id, time.time(), json.dumps(_jsonable(result))),
        )
        return int(cur.lastrowid)

    def collapse_results(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._conn.execute(
            "SELECT id, created, result FROM collapses WHERE run_id=? ORDER BY id", (run_id,)
        ).fetchall()
        return [{"id": i, "created": c, **json.loads(r)} for i, c, r in rows]

    # -- sweeps --------------------------------------------------------------------------------
    def create_sweep(self, name: str, config: dict[str, Any]) -> str:
        sweep_id = new_id("s")
        self._write(
            "INSERT INTO sweeps VALUES (?,?,?,?)", (sweep_id, name, json.dumps(_jsonable(config)), time.time())
        )
        return sweep_id

    def get_sweep(self, sweep_id: str) -> dict[str, Any]:
        row = self._conn.execute("SELECT id, name, config, created FROM sweeps WHERE id=?", (sweep_id,)).fetchone()
        if row is None:
            raise ConfigError(f"unknown sweep id {sweep_id!r} in {self.path}")
        return {"id": row[0], "name": row[1], "config": json.loads(row[2]), "created": row[3]}

    def sweeps(self) -> pd.DataFrame:
        """One row per sweep with run counts by status."""
        rows = self._conn.execute(
            "SELECT s.id, s.name, s.created, s.config, COUNT(r.id), "
            "SUM(r.status='done'), SUM(r.status IN ('queued','running')) "
            "FROM sweeps s LEFT JOIN runs r ON r.sweep_id = s.id GROUP BY s.id ORDER BY s.created DESC"
        ).fetchall()
        out = [{"id": i, "name": n, "created": c, "config": json.loads(cfg), "runs": k, "done": d or 0,
                "pending": p or 0} for i, n, c, cfg, k, d, p in rows]
        return pd.DataFrame(out, columns=["id", "name", "created", "config", "runs", "done", "pending"])


from prunekit.train._store_callback import StoreCallback  # noqa: E402  (re-exported; it imports this module lazily)

__all__ = ["MIGRATIONS", "STATUSES", "TERMINAL", "RunInfo", "RunStore", "StoreCallback", "default_workspace"]
