"""Run store actions for the pages: open the store, start / stop / resume runs, choose and label runs.

Every function takes the workspace (``None``: ``$PRUNEKIT_HOME`` or ./prunekit-runs); the runner and the store
are imported on use, so importing the app layer stays cheap.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from prunekit.app_support._form import DEFAULT_DATASET, DEFAULT_METHOD, DEFAULT_MODEL, check_dataset
from prunekit.app_support._process import cached_figure, st_cached
from prunekit.errors import PrunekitError
from prunekit.train.config import RunConfig

# Statuses of a run that may still log rows: live views keep refreshing while a run has one.
ACTIVE = ("queued", "running")
# Statuses ``resume`` accepts (``prunekit.train.runner.resume_run``).
RESUMABLE = ("stopped", "interrupted", "failed")
# How a missing value (None, NaN) is shown in tables and labels: never "None" or "nan".
MISSING = "—"


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


def missing(value: Any) -> bool:
    """Whether a table cell holds no value (None, NaN, pandas' NA or an empty string)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists, dicts
        return False


def run_label(row: dict[str, Any] | pd.Series) -> str:
    """``<id> · <name or model/dataset/method> · <status>`` for select boxes (no "None" or "nan" for a gap)."""
    def text(key: str) -> str:
        v = row.get(key)
        return MISSING if missing(v) else str(v)

    name = text("name") if not missing(row.get("name")) else " / ".join(text(k) for k in ("model", "dataset", "method"))
    return f"{row['id']} · {name} · {text('status')}"


def display_table(df: pd.DataFrame, formats: dict[str, str] | None = None) -> pd.DataFrame:
    """``df`` with every cell as text for ``st.dataframe``: numbers through ``formats[column]`` (a format spec
    such as ``".1%"``; default ``",.4g"``), missing values as :data:`MISSING` (Streamlit shows them as "None")."""
    formats = formats or {}

    def cell(v: Any, fmt: str) -> str:
        if missing(v):
            return MISSING
        if isinstance(v, bool) or not isinstance(v, int | float):
            return str(v)
        if isinstance(v, float) and math.isinf(v):
            return str(v)
        return format(v, fmt)

    return pd.DataFrame({c: [cell(v, formats.get(c, ",.4g")) for v in df[c]] for c in df.columns}, index=df.index)


def run_warnings_of(info: Any) -> list[str]:
    """A finished run's plain-language warnings (``prunekit.train.diagnose``): the ones stored with its result,
    or, for runs stored before warnings existed, computed from that result; [] while it has no result."""
    result = getattr(info, "result", None) or {}
    if "warnings" in result:
        return [str(w) for w in result["warnings"] or []]
    if not result.get("metrics"):
        return []
    from prunekit.train.diagnose import run_warnings

    return run_warnings(result)


def runs_table(store: Any, runs: pd.DataFrame) -> pd.DataFrame:
    """The Runs page's table: one row per run, its warnings in words, no "None"/"nan" cells.

    Warnings are read per run from its stored result once per (run, last update) for the whole app process.
    """
    warn = []
    for rid, status, updated in zip(runs["id"], runs["status"], runs["updated"]):
        if status != "done":
            warn.append("")
            continue
        key = ("run_warnings", rid, updated)
        warn.append(" · ".join(cached_figure(key, lambda r=rid: tuple(run_warnings_of(store.get_run(r))))))
    view = runs[["id", "name", "model", "dataset", "method", "status", "progress", "acc/test", "macs_ratio/hard",
                 "error"]]
    table = display_table(view.drop(columns=["progress"]), {"acc/test": ".1%", "macs_ratio/hard": ".2f"})
    table.insert(6, "progress", runs["progress"].fillna(0.0).astype(float))
    table["warnings"] = [w or "" for w in warn]
    table["error"] = [("" if e == MISSING else e) for e in table["error"]]
    return table


def resume_blocker(store: Any, run_id: str) -> str | None:
    """Why run ``run_id`` cannot be resumed (for the disabled Resume button's help), or None if it can.

    A run can resume when it is stopped, interrupted or failed, its method is registered and its dataset is on
    this machine (a run that failed because its data is missing would only fail again). The model is not
    checked here: listing torchvision's models costs seconds, and a missing one fails at once with its name.
    """
    info = store.get_run(run_id)
    if info.status not in RESUMABLE:
        return f"a {info.status} run cannot be resumed; only {', '.join(RESUMABLE)} runs can"
    cfg = info.config or {}
    try:
        from prunekit.methods import list_methods

        if cfg.get("method") not in list_methods():
            return f"its method {cfg.get('method')!r} is not available in this prunekit"
        check_dataset(cfg.get("dataset"), cfg.get("data_root"), cfg.get("data_options") or {})
    except Exception as e:  # noqa: BLE001 - the reason is shown, never raised
        return describe_error(e)
    return None


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
