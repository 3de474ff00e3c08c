"""Live: a run's training curves and gates, refreshed every 1.5 s while it trains (layout only; reads the store).

Only the open tab refreshes (each tab is its own fragment; switching tabs reruns the page), each refresh
reads only the rows logged since the previous one, and a chart whose data did not change is not rebuilt:
the app must not slow down the run it shows.
"""

import os
from collections.abc import Callable

import streamlit as st

from prunekit import app_support as sup

st.set_page_config(page_title="prunekit · Live", page_icon="📈", layout="wide")
WS = os.environ.get("PRUNEKIT_HOME")
sup.settle_process()  # after the imports: Streamlit's per-run full GC then skips them
st.title("Live")
store, runs, run_id = sup.page_run_picker(WS, key="live_run")
st.caption("Gates **mask** channels: masked channels still exist and still cost compute. Only collapse "
           "(page 4) **removes** them.")
active = runs.set_index("id").loc[run_id, "status"] in sup.ACTIVE
every = sup.LIVE_EVERY_S if active else None


def snapshot() -> sup.LiveSnapshot:
    """This session's view of the run, extended by the rows logged since the last refresh."""
    snap = sup.live_metrics(store, run_id, st.session_state.get("live_snapshot"))
    st.session_state.live_snapshot = snap
    return snap


def header() -> None:
    snap = sup.read_run(run_id, snapshot)
    if snap is None:
        return
    info = snap.info
    st.progress(float(info.progress or 0.0), text=f"status: {info.status} · step {snap.last_step}")
    if info.status == "failed":
        st.error(f"The run failed: {info.error}")
    elif info.status in ("stopped", "interrupted"):
        st.warning(f"The run is {info.status}; resume it on the Runs page.")
    for w in sup.run_warnings_of(info):  # a run can end "done" having learned nothing: say so, with what to change
        st.warning(f"{w}.", icon="⚠️")
    if active and info.status not in sup.ACTIVE:
        st.rerun()  # the run ended: draw the final state once and stop refreshing


st.fragment(run_every=every)(header)()
info = sup.read_run(run_id, lambda: store.get_run(run_id), stop=True)
target = sup.run_target(info.config.get("method"), info.config.get("method_options"))


def charts(build: Callable[[], dict], names: tuple[str, ...] | None = None, columns: int = 1,
           empty: str | None = None) -> None:
    """One tab's figures, rebuilt from the latest snapshot (a read error is shown, the tab keeps refreshing)."""
    figs = sup.read_run(run_id, build)
    if figs is None:
        return
    if not figs and empty:
        st.info(empty)
    sup.show_figures(figs, names, columns=columns, key="live")


def training() -> None:
    charts(lambda: sup.training_figures(snapshot(), target), ("loss", "acc", "macs", "temp"), columns=2)


def gates() -> None:
    charts(lambda: sup.gate_figures(store, snapshot()), ("violin", "heat"))


def trends() -> None:
    charts(lambda: sup.trend_figures(store, snapshot()), columns=2,
           empty="This method logs no per-layer confidence, diversity or flip rate.")

# Every tab is drawn on a page run; only the open one keeps refreshing (a tab switch reruns the page).
tabs = st.tabs(["Training", "Gates", "Confidence & diversity"], key="live_tab", on_change="rerun")
for tab, body in zip(tabs, (training, gates, trends)):
    with tab:
        st.fragment(run_every=every if tab.open is not False else None)(body)()
