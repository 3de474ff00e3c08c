"""The run store's file: SQLite connection settings, the versioned schema and its migrations.

``meta.schema_version`` counts the entries of :data:`MIGRATIONS` already applied; opening a store applies the
missing ones in order, in one write transaction. A file that is not SQLite, or SQLite written by another
application, or by a newer prunekit, is refused with :class:`~prunekit.errors.CheckpointError` and left untouched.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from prunekit.errors import CheckpointError

logger = logging.getLogger("prunekit.train.store")  # the store's own logger: one name for everything it reports

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
    # 3: analyses computed after training (layer sensitivity, ...), one JSON result per run, kind and settings.
    [
        """CREATE TABLE analyses (
            run_id TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL, created REAL NOT NULL, result TEXT NOT NULL,
            PRIMARY KEY (run_id, kind, key))""",
    ],
]


def open_database(path: Path) -> sqlite3.Connection:
    """Connect to the store file ``path`` (created when missing) and bring its schema up to date.

    The connection is in autocommit mode (transactions are explicit ``BEGIN IMMEDIATE``), shared between
    threads (the caller serialises it), in WAL mode with ``synchronous=NORMAL`` and waits up to 30 s for a lock.

    Raises:
        CheckpointError: the file is corrupt, foreign, or of a newer schema version; it is left untouched.
    """
    check_file(path)
    try:
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        migrate(conn, path)
    except sqlite3.DatabaseError as e:
        raise CheckpointError(f"run store {path} cannot be opened: {e}") from None
    return conn


def check_file(path: Path) -> None:
    """Refuse anything that is not an empty file or one of our databases, before SQLite writes to it."""
    if not path.exists() or path.stat().st_size == 0:
        return
    # Never open() the file directly: closing any descriptor of it drops every POSIX lock this process
    # holds on it, including those of live SQLite connections, which corrupts the database.
    # the header's application_id may be stale in WAL mode (page 1 can live in the -wal file): ask SQLite.
    # A plain connection writes nothing until told to, so a foreign file stays as it was.
    try:
        probe = sqlite3.connect(path, timeout=30.0)
        try:
            app_id = probe.execute("PRAGMA application_id").fetchone()[0]
            tables = [r[0] for r in probe.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        finally:
            probe.close()
    except sqlite3.DatabaseError as e:
        raise CheckpointError(
            f"{path} is not a usable SQLite database (corrupt or foreign file: {e}); left untouched"
        ) from None
    if app_id == APPLICATION_ID or not tables:
        return
    raise CheckpointError(
        f"{path} is a SQLite database of another application "
        f"(application_id {app_id}, tables: {', '.join(tables[:5])}); left untouched"
    )


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Apply the entries of :data:`MIGRATIONS` that ``conn``'s database lacks, in one transaction."""
    has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
    if has_meta and read_version(conn) == len(MIGRATIONS):
        return  # the common case: opening costs no write lock
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        version = read_version(conn)
        if version > len(MIGRATIONS):
            raise CheckpointError(
                f"{path} has schema version {version}, newer than this prunekit "
                f"(knows up to {len(MIGRATIONS)}); upgrade prunekit to read it"
            )
        for i in range(version, len(MIGRATIONS)):
            for sql in MIGRATIONS[i]:
                conn.execute(sql)
            logger.info("run store %s migrated to schema version %d", path, i + 1)
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(len(MIGRATIONS)),))
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def read_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in ``meta`` (0 when the table exists but holds none)."""
    row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return int(row[0]) if row else 0
