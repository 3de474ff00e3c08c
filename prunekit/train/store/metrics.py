"""The run store's metric log: buffered scalar and per-layer rows, flushed in batches, and read back as tables.

The training thread only appends rows to a list (under a lock of its own, so it never waits for the
database); :meth:`MetricLog.flush` writes the buffer in one transaction once ``flush_rows`` rows are waiting
or ``flush_interval`` seconds have passed, and before every read. Rows are keyed by ``(run, name[, layer], step)``
and written with ``INSERT OR REPLACE``, so a resumed run that repeats a step overwrites instead of duplicating.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from typing import Any

import pandas as pd

from prunekit.train.store.records import as_float, jsonable


class MetricLog:
    """The metric half of :class:`~prunekit.train.store.runstore.RunStore` (a mixin: it owns no connection)."""

    _conn: sqlite3.Connection
    _lock: threading.RLock  # the connection
    flush_rows: int
    flush_interval: float

    def _init_buffers(self) -> None:
        self._buf_lock = threading.Lock()  # the metric buffers: appending never waits for the database
        self._scalar_buf: list[tuple] = []
        self._layer_buf: list[tuple] = []
        self._last_flush = time.monotonic()

    def _drop_buffered(self, run_id: str) -> None:
        """Forget ``run_id``'s rows not written yet (the run is being deleted)."""
        with self._buf_lock:
            self._scalar_buf = [r for r in self._scalar_buf if r[0] != run_id]
            self._layer_buf = [r for r in self._layer_buf if r[0] != run_id]

    def log_scalars(self, run_id: str, step: int, epoch: int, values: dict[str, float]) -> None:
        """Buffer scalar metrics of one step (flushed in batches; see :meth:`flush`)."""
        rows = [(run_id, int(step), int(epoch), str(k), as_float(v)) for k, v in values.items()]
        with self._buf_lock:
            self._scalar_buf.extend(rows)
        self._maybe_flush()

    def log_layers(self, run_id: str, step: int, epoch: int, rows: list[dict[str, Any]]) -> None:
        """Buffer per-layer rows (keys ``layer``, ``name``, ``value`` and optional JSON-able ``data``)."""
        buf = []
        for r in rows:
            data = r.get("data")
            buf.append((
                run_id, int(step), int(epoch), str(r["layer"]), str(r["name"]), as_float(r.get("value")),
                None if data is None else json.dumps(jsonable(data)),
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

    def truncate_after(self, run_id: str, step: int) -> None:
        """Delete metric rows with ``step > step`` (before resuming from a checkpoint at ``step``)."""
        self.flush()
        with self._lock:
            for table in ("scalars", "layers"):
                self._conn.execute(f"DELETE FROM {table} WHERE run_id=? AND step>?", (run_id, step))
            self._conn.execute("DELETE FROM checkpoints WHERE run_id=? AND step>?", (run_id, step))

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

    def _final_scalars(self, run_ids: list[str], names: tuple[str, ...]) -> dict[str, dict[str, float]]:
        """``{run_id: {name: value at the run's last logged step}}`` for the names each run has."""
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
