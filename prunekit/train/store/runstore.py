"""The :class:`RunStore`: runs, sweeps, checkpoints and collapse results in the workspace's SQLite file.

Its metric half (buffered writes, reads as long tables) is :class:`~prunekit.train.store.metrics.MetricLog`;
the file and its versioned schema are :mod:`prunekit.train.store.schema`; rows and their JSON encoding
:mod:`prunekit.train.store.records`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd

from prunekit.errors import ConfigError
from prunekit.train.store.metrics import MetricLog
from prunekit.train.store.records import (
    STATUSES,
    TERMINAL,
    RunInfo,
    decode_run,
    default_workspace,
    host_id,
    jsonable,
    new_id,
    pid_alive,
)
from prunekit.train.store.schema import DB_NAME, open_database, read_version

logger = logging.getLogger(__name__)


class RunStore(MetricLog):
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
        self._init_buffers()
        self._host = host_id()
        self._prepare_workspace()
        self._conn = open_database(self.path)

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

    @property
    def schema_version(self) -> int:
        return read_version(self._conn)

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
            (run_id, config.get("name"), json.dumps(jsonable(config)), status, now, now, sweep_id),
        )
        self.run_dir(run_id).mkdir(parents=True, exist_ok=True)
        return run_id

    def _row(self, run_id: str) -> sqlite3.Row | tuple:
        cur = self._conn.execute("SELECT * FROM runs WHERE id=?", (run_id,))
        row = cur.fetchone()
        if row is None:
            raise ConfigError(f"unknown run id {run_id!r} in {self.path}")
        return dict(zip([d[0] for d in cur.description], row))

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
        return decode_run(self._check_alive(self._row(run_id)))

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
            params.append(json.dumps(jsonable(result)))
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
            self._drop_buffered(run_id)
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                for table in ("scalars", "layers", "checkpoints", "collapses", "analyses"):
                    c.execute(f"DELETE FROM {table} WHERE run_id=?", (run_id,))
                c.execute("DELETE FROM runs WHERE id=?", (run_id,))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)

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
            (run_id, time.time(), json.dumps(jsonable(result))),
        )
        return int(cur.lastrowid)

    def collapse_results(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._conn.execute(
            "SELECT id, created, result FROM collapses WHERE run_id=? ORDER BY id", (run_id,)
        ).fetchall()
        return [{"id": i, "created": c, **json.loads(r)} for i, c, r in rows]

    # -- analyses (layer sensitivity, ...): one JSON result per run, kind and settings --------------
    @staticmethod
    def analysis_key(settings: dict[str, Any]) -> str:
        """The canonical text of ``settings`` (sorted keys): equal settings give the same stored row."""
        return json.dumps(jsonable(settings), sort_keys=True)

    def put_analysis(self, run_id: str, kind: str, settings: dict[str, Any], result: dict[str, Any]) -> None:
        """Store ``result`` (JSON-able) of analysis ``kind`` of a run under ``settings``, replacing an earlier one."""
        if not kind or not isinstance(kind, str):
            raise ConfigError(f"kind must be a non-empty string, got {kind!r}")
        self._row(run_id)
        self._write(
            "INSERT OR REPLACE INTO analyses (run_id, kind, key, created, result) VALUES (?,?,?,?,?)",
            (run_id, kind, self.analysis_key(settings), time.time(), json.dumps(jsonable(result))),
        )

    def get_analysis(self, run_id: str, kind: str, settings: dict[str, Any]) -> dict[str, Any] | None:
        """The stored result of analysis ``kind`` of a run under exactly ``settings``, or None."""
        row = self._conn.execute(
            "SELECT result FROM analyses WHERE run_id=? AND kind=? AND key=?",
            (run_id, kind, self.analysis_key(settings)),
        ).fetchone()
        return None if row is None else json.loads(row[0])

    def analyses(self, run_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        """Every stored analysis of a run (oldest first): ``{"kind", "settings", "created", "result"}``."""
        q, params = "SELECT kind, key, created, result FROM analyses WHERE run_id=?", [run_id]
        if kind is not None:
            q += " AND kind=?"
            params.append(kind)
        rows = self._conn.execute(q + " ORDER BY created", params).fetchall()
        return [{"kind": k, "settings": json.loads(key), "created": c, "result": json.loads(r)} for k, key, c, r in rows]

    # -- sweeps --------------------------------------------------------------------------------
    def create_sweep(self, name: str, config: dict[str, Any]) -> str:
        sweep_id = new_id("s")
        self._write(
            "INSERT INTO sweeps VALUES (?,?,?,?)", (sweep_id, name, json.dumps(jsonable(config)), time.time())
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

