"""Run store actions for the pages: open the store, start / stop / resume runs, choose and label runs.

Every function takes the workspace (``None``: ``$PRUNEKIT_HOME`` or ./prunekit-runs); the runner and the store
are imported on use, so importing the app layer stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from prunekit.app_support._form import DEFAULT_DATASET, DEFAULT_METHOD, DEFAULT_MODEL
from prunekit.app_support._process import st_cached
from prunekit.errors import PrunekitError
from prunekit.train.config import RunConfig

# Statuses of a run that may still log rows: live views keep refreshing while a run has one.
ACTIVE = ("queued", "running")


def describe_error(e: BaseException) -> str:
    """One line for the user: prunekit's own errors verbatim, anything else with its type."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, PrunekitError | ValueError | FileNotFoundError):
        return msg or type(e).__name__
    if isinstance(e, ImportError):
        return f"a part of prunekit is not available yet ({msg})"
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def open_store(workspace: str | Path | None = None) -> Any:
    """A :class:`prunekit.train.store.RunStore` on ``workspace`` (default: ``$PRUNEKIT_HOME`` or ./prunekit-runs)."""
    from prunekit.train.store import RunStore

    return RunStore(workspace)


def cached_store(workspace: str | None) -> Any:
    """One RunStore per workspace for the whole app process (``st.cache_resource``)."""
    return st_cached("store", open_store)(workspace)


def start(config: RunConfig, workspace: str | Path | None = None) -> str:
    """Start ``config`` in a background process (it outlives the app); returns the run id."""
    from prunekit.train.runner import start_run

    return start_run(config, workspace=workspace).id


def stop(run_id: str, workspace: str | Path | None = None) -> None:
    from prunekit.train.runner import stop_run

    stop_run(run_id, workspace=workspace)


def resume(run_id: str, workspace: str | Path | None = None) -> str:
    from prunekit.train.runner import resume_run

    return resume_run(run_id, workspace=workspace).id


def run_label(row: dict[str, Any] | pd.Series) -> str:
    """``<id> · <name or model/dataset/method> · <status>`` for select boxes."""
    name = row.get("name") or f"{row.get('model')} / {row.get('dataset')} / {row.get('method')}"
    return f"{row['id']} · {name} · {row.get('status')}"


def pick_run(runs: pd.DataFrame, wanted: str | None) -> str | None:
    """``wanted`` if it still exists, else the newest active run, else the newest run."""
    if runs is None or runs.empty:
        return None
    if wanted is not None and wanted in set(runs["id"]):
        return wanted
    active = runs[runs["status"].isin(ACTIVE)]
    return str((active if not active.empty else runs)["id"].iloc[0])


def find_default_run(runs: pd.DataFrame) -> str | None:
    """Newest run of the default experiment (model, dataset and method match), or None."""
    if runs is None or runs.empty:
        return None
    m = runs[(runs["model"] == DEFAULT_MODEL) & (runs["dataset"] == DEFAULT_DATASET) & (runs["method"] == DEFAULT_METHOD)]
    return None if m.empty else str(m["id"].iloc[0])
