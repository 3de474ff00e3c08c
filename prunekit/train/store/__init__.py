"""The run store: an embedded SQLite database of runs, their metrics, checkpoints and collapse results.

One file ``<workspace>/runs.sqlite`` (WAL journal, so readers such as the app and notebooks never block the
training process that writes) plus one folder per run ``<workspace>/runs/<run_id>/`` for checkpoints and logs.
Metric writes are buffered and flushed in one transaction per batch; every metric row is keyed by
``(run, name[, layer], step)`` and written with ``INSERT OR REPLACE``, so a resumed run that repeats a step
overwrites instead of duplicating.

Modules, lowest first: :mod:`~prunekit.train.store.records` (statuses, :class:`RunInfo`, JSON encoding),
:mod:`~prunekit.train.store.schema` (the file, its versioned schema and migrations: ``meta.schema_version``
counts the entries of :data:`MIGRATIONS` already applied; a file that is not SQLite, or SQLite written by
another application or a newer prunekit, is refused with :class:`~prunekit.errors.CheckpointError` and left
untouched), :mod:`~prunekit.train.store.metrics` (the buffered metric log),
:mod:`~prunekit.train.store.runstore` (:class:`RunStore`) and :mod:`~prunekit.train.store.callback`
(:class:`StoreCallback`, which writes a training run into the store).
"""

from prunekit.train.store.callback import StoreCallback
from prunekit.train.store.records import STATUSES, TERMINAL, RunInfo, default_workspace, pid_alive
from prunekit.train.store.runstore import RunStore
from prunekit.train.store.schema import APPLICATION_ID, DB_NAME, MIGRATIONS

__all__ = [
    "APPLICATION_ID",
    "DB_NAME",
    "MIGRATIONS",
    "STATUSES",
    "TERMINAL",
    "RunInfo",
    "RunStore",
    "StoreCallback",
    "default_workspace",
    "pid_alive",
]
