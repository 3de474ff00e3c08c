"""Live: a run's training curves and gates, refreshed every 1.5 s while it trains (layout only; reads the store)."""

import os

import streamlit as st

from prunekit import app_support as sup
from prunekit import viz

st.set_page_config(page_title="prunekit · Live", page_icon="📈", layout="wide")
WS = os.environ.get("PRUNEKIT_HOME")
st.title("Live")
try:
    store = sup.cached_store(WS)
    runs = store.list_runs()
except Exception as e:
    st.error(f"Cannot open the run store: {sup.describe_error(e)}")
    st.stop()
st.session_state.setdefault("run_id", None)
if runs.empty:
    st.info("No runs yet: start one on the Runs page.")
    st.stop()

ids = list(runs["id"])
labels = {r["id"]: sup.run_label(r) for _, r in runs.iterrows()}
current = sup.pick_run(runs, st.session_state.run_id)
run_id = st.selectbox("Run", ids, index=ids.index(current), format_func=labels.get, key="live_run")
st.session_state.run_id = run_id
st.caption("Gates **mask** channels: masked channels still exist and still cost compute. Only collapse "
           "(page 4) **removes** them.")
active = runs.set_index("id").loc[run_id, "status"] in sup.ACTIVE


def live() -> None:
    try:
        info = store.get_run(run_id)
        metrics = store.metrics(run_id)
        last_layers = store.layer_metrics(run_id, names=["gate_values", "gate_hist"], step="last")
        trends = store.layer_metrics(run_id, names=["confidence", "diversity", "entropy", "flip_rate"])
    except Exception as e:
        st.error(f"Cannot read run {run_id}: {sup.describe_error(e)}")
        return
    steps = int(metrics["step"].max()) if not metrics.empty else 0
    st.progress(float(info.progress or 0.0), text=f"status: {info.status} · step {steps}")
    if info.status == "failed":
        st.error(f"The run failed: {info.error}")
    elif info.status in ("stopped", "interrupted"):
        st.warning(f"The run is {info.status}; resume it on the Runs page.")
    tf = sup.target_field(info.config.get("method", "dense")) if info.config.get("method") else None
    target = (info.config.get("method_options") or {}).get(tf) if tf else None

    tabs = st.tabs(["Training", "Gates", "Confidence & diversity"])
    with tabs[0]:
        a, b = st.columns(2)
        with a:
            st.plotly_chart(viz.loss_figure(metrics), key="live_loss")
            st.caption(viz.explain_loss(metrics))
            st.plotly_chart(viz.macs_figure(metrics, target), key="live_macs")
            st.caption(viz.explain_macs(metrics, target))
        with b:
            st.plotly_chart(viz.accuracy_figure(metrics), key="live_acc")
            st.caption(viz.explain_accuracy(metrics))
            st.plotly_chart(viz.temperature_figure(metrics), key="live_temp")
            st.caption(viz.explain_temperature(metrics))
    with tabs[1]:
        st.plotly_chart(viz.gate_distribution_figure(last_layers), key="live_violin")
        st.caption(viz.explain_gate_distribution(last_layers))
        st.plotly_chart(viz.gate_heatmap_figure(last_layers), key="live_heat")
        st.caption(viz.explain_gate_heatmap(last_layers))
    with tabs[2]:
        names = [n for n in ("confidence", "diversity", "entropy", "flip_rate") if (trends["name"] == n).any()]
        if not names:
            st.info("This method logs no per-layer confidence, diversity or flip rate.")
        a, b = st.columns(2)
        for i, n in enumerate(names):
            with (a if i % 2 == 0 else b):
                st.plotly_chart(viz.layer_trend_figure(trends, n), key=f"live_{n}")
                st.caption(viz.explain_layer_trend(trends, n))


st.fragment(run_every=1.5 if active else None)(live)()
