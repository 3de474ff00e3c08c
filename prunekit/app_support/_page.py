"""The preamble the pages share: open the run store (or say why not and stop), then choose the run to show.

The chosen run follows the user from page to page through ``st.session_state.run_id``; a page that shows one
run preselects it, and falls back to the newest active run, then the newest run, when it is gone
(:func:`~prunekit.app_support._runs.pick_run`). These functions call Streamlit, ``st.stop()`` included, so
they belong in page scripts; Streamlit is imported on first call, not with the package.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from prunekit.app_support._runs import ACTIVE, cached_store, describe_error, pick_run, run_label

# The session-state key holding the run every page opens on.
RUN_KEY = "run_id"
NO_RUNS = "No runs yet: start one on the Runs page."

T = TypeVar("T")


def open_store_or_stop(
    workspace: str | Path | None, read: Callable[[Any], T] | None = None
) -> tuple[Any, T | pd.DataFrame]:
    """The app's shared run store and what the page reads from it, or an error on the page and ``st.stop()``.

    Args:
        workspace: the store's folder (None: ``$PRUNEKIT_HOME`` or ./prunekit-runs).
        read: ``read(store)`` gives what the page needs; default ``store.list_runs()``. Its errors are
            reported like the store's own ("Cannot open the run store: ...").

    Returns:
        ``(store, read(store))``. ``st.session_state.run_id`` exists afterwards (None if nothing was chosen yet).
    """
    import streamlit as st

    try:
        store = cached_store(None if workspace is None else str(workspace))
        data = store.list_runs() if read is None else read(store)
    except Exception as e:  # noqa: BLE001 - any failure becomes one line on the page
        st.error(f"Cannot open the run store: {describe_error(e)}")
        st.stop()
    st.session_state.setdefault(RUN_KEY, None)
    return store, data


def select_run(runs: pd.DataFrame, *, key: str, label: str = "Run", remember: bool = True) -> str:
    """A select box over ``runs`` (not empty), opening on the session's run if it is among them.

    Args:
        runs: rows of ``RunStore.list_runs()``, newest first.
        key: the widget's key (tests and the browser test find the box by it).
        label: the box's label.
        remember: store the choice in ``st.session_state.run_id`` so the other pages open on it.

    Returns:
        The chosen run id.
    """
    import streamlit as st

    ids = list(runs["id"])
    labels = {r["id"]: run_label(r) for _, r in runs.iterrows()}
    current = pick_run(runs, st.session_state.setdefault(RUN_KEY, None))
    chosen = st.selectbox(label, ids, index=ids.index(current), format_func=labels.get, key=key)
    if remember:
        st.session_state[RUN_KEY] = chosen
    return chosen


def page_run_picker(
    workspace: str | Path | None, *, key: str, empty: str = NO_RUNS
) -> tuple[Any, pd.DataFrame, str]:
    """The preamble of a page about one run: open the store, stop with ``empty`` if it has no runs, choose one.

    Args:
        workspace: the store's folder (None: ``$PRUNEKIT_HOME`` or ./prunekit-runs).
        key: the run select box's widget key.
        empty: the message shown (``st.info``) when there are no runs.

    Returns:
        ``(store, runs, run_id)``: the shared store, its runs (newest first) and the chosen run, which is also
        remembered in ``st.session_state.run_id``.
    """
    import streamlit as st

    store, runs = open_store_or_stop(workspace)
    if runs.empty:
        st.info(empty)
        st.stop()
    watch_statuses(store, runs)
    return store, runs, select_run(runs, key=key)


def statuses_changed(shown: pd.DataFrame, now: pd.DataFrame) -> bool:
    """Whether the runs a page drew (``shown``) differ from the store's (``now``) in a way its widgets show:
    a run added, deleted, or with another status (the run picker's label, the Resume/Stop buttons)."""
    if shown is None or now is None:
        return shown is not now
    return dict(zip(shown["id"], shown["status"])) != dict(zip(now["id"], now["status"]))


def watch_statuses(store: Any, runs: pd.DataFrame) -> None:
    """While a run of ``runs`` is queued or running, poll the store every ``LIVE_EVERY_S`` and rerun the page
    when a status changes: a picker drawn while a run trained must not say "running" after it is done.

    Costs one ``list_runs`` per refresh, only while something is active; a page without active runs polls nothing.
    """
    import streamlit as st

    from prunekit.app_support._live import LIVE_EVERY_S

    if runs is None or runs.empty or not runs["status"].isin(ACTIVE).any():
        return

    def check() -> None:
        try:
            now = store.list_runs()
        except Exception:  # noqa: BLE001 - the page's own reads report store errors; the watcher stays quiet
            return
        if statuses_changed(runs, now):
            st.rerun()

    st.fragment(run_every=LIVE_EVERY_S)(check)()


def read_run(run_id: str, read: Callable[[], T], *, stop: bool = False) -> T | None:
    """``read()``, or the page's one-line "Cannot read run ..." error.

    Args:
        run_id: the run being read (named in the error).
        read: what to read (store calls, figure builders); must not return None.
        stop: after the error, ``st.stop()`` the page; otherwise return None (inside a live fragment,
            which must keep refreshing).
    """
    import streamlit as st

    try:
        return read()
    except Exception as e:  # noqa: BLE001 - any failure becomes one line on the page
        st.error(f"Cannot read run {run_id}: {describe_error(e)}")
        if stop:
            st.stop()
        return None


def show_figures(figs: dict[str, tuple[Any, str]], names: Sequence[str] | None = None, *, columns: int = 1,
                 key: str = "fig") -> None:
    """Each figure with its plain-language reading under it, filling ``columns`` row by row.

    Args:
        figs: name -> (plotly figure, reading), as ``training_figures``/``gate_figures``/``trend_figures`` give.
        names: which figures, in order (default: all of ``figs``).
        columns: side-by-side columns (1: drawn in place).
        key: widget key prefix; each chart's key is ``{key}_{name}``.
    """
    import streamlit as st

    cols = st.columns(columns) if columns > 1 else None
    for i, name in enumerate(figs if names is None else names):
        fig, reading = figs[name]
        with cols[i % columns] if cols else st.container():
            st.plotly_chart(fig, key=f"{key}_{name}")
            st.caption(reading)
