"""Explore: accuracy vs MACs / latency across runs and sweeps, and a what-if threshold on a checkpoint (layout only).

The trade-off chart and the what-if section are separate fragments: a click in one reruns only that one
(the what-if part may hold a model; the chart's filters must answer in well under half a second).
"""

import os

import streamlit as st

from prunekit import app_support as sup
from prunekit import viz

st.set_page_config(page_title="prunekit · Explore", page_icon="🧭", layout="wide")
WS = os.environ.get("PRUNEKIT_HOME")
sup.settle_process()  # after the imports: Streamlit's per-run full GC then skips them
st.title("Explore")
store, (runs, sweeps) = sup.open_store_or_stop(WS, read=lambda s: (sup.cached_runs_for_explore(WS), s.sweeps()))
st.session_state.setdefault("what_if", {})
if runs.empty:
    st.info("No runs yet: start a few at different targets on the Runs page, then compare them here.")
    st.stop()
sup.watch_statuses(store, runs)  # a run that ends while this page is open: its label and points follow
# cost axis label -> (column of sup.runs_for_explore, axis title)
COST_AXES = {
    "MACs kept (hard mask)": ("macs_ratio/hard", "MACs kept (fraction of dense)"),
    "latency, batch 1 (after collapse)": ("latency_b1_ms", "latency at batch 1 (ms, eager PyTorch, this machine)"),
    "latency, batch 64 (after collapse)": ("latency_b64_ms", "latency at batch 64 (ms, eager PyTorch, this machine)"),
    "latency, ONNX Runtime, batch 1": ("latency/onnxruntime_b1_ms",
                                       "latency at batch 1 (ms, ONNX Runtime, BatchNorm folded, this machine)"),
    "latency, ONNX Runtime, batch 64": ("latency/onnxruntime_b64_ms",
                                        "latency at batch 64 (ms, ONNX Runtime, BatchNorm folded, this machine)"),
}


# -- trade-off across runs ----------------------------------------------------------------------
@st.fragment
def trade_off() -> None:
    try:
        runs = sup.cached_runs_for_explore(WS)  # a fragment rerun sees runs finished since the page was drawn
    except Exception as e:
        st.error(f"Cannot read the run store: {sup.describe_error(e)}")
        return
    c1, c2, c3, c4 = st.columns(4)
    sweep_names = {"": "all runs"} | ({r["id"]: r["name"] for _, r in sweeps.iterrows()} if not sweeps.empty else {})
    sweep = c1.selectbox("Sweep", list(sweep_names), format_func=sweep_names.get, key="ex_sweep")
    model = c2.selectbox("Model", ["all"] + sorted(runs["model"].dropna().unique()), key="ex_model")
    dataset = c3.selectbox("Dataset", ["all"] + sorted(runs["dataset"].dropna().unique()), key="ex_dataset")
    axis = c4.radio("Cost axis", list(COST_AXES), key="ex_axis",
                    help="Latency is measured on this machine when a run is collapsed (Collapse & compare): eager "
                         "PyTorch, and ONNX Runtime (BatchNorm folded) when onnxruntime is installed.")
    view = runs
    if sweep:
        view = view[view["sweep_id"] == sweep]
    if model != "all":
        view = view[view["model"] == model]
    if dataset != "all":
        view = view[view["dataset"] == dataset]
    y = "acc/test" if view["acc/test"].notna().any() else "acc/val"
    x, xl = COST_AXES[axis]
    if axis.startswith("MACs"):
        anchors = viz.anchor_points(model if model != "all" else None, dataset if dataset != "all" else None)
    else:
        anchors = None
    fig, reading = sup.tradeoff(view, x=x, y=y, anchors=anchors, x_label=xl)
    st.plotly_chart(fig, key="ex_tradeoff")
    st.caption(reading)
    if anchors is not None and anchors.empty:
        st.caption("Published anchor points (METHODS.md) appear when you filter to ResNet-56 on CIFAR-10.")
    if x.startswith("latency") and (x not in view or view[x].isna().all()):
        st.info("Latency is measured when a run is collapsed: use the Collapse & compare page first"
                + (" (ONNX Runtime timings need the onnxruntime package)." if "onnxruntime" in x else "."))


trade_off()


# -- what-if threshold and layer sensitivity, side by side for one run ------------------------------
st.subheader("What if the threshold were different? Which groups can lose channels?")
ready = runs[runs["status"].isin(["done", "stopped", "interrupted", "running"])]
if ready.empty:
    st.info("No run has a checkpoint yet.")
    st.stop()
rid = sup.select_run(ready, key="ex_run", remember=False)  # what-if looks around; the page's run stays


@st.fragment
def what_if(rid: str) -> None:
    st.caption("Re-evaluates a checkpoint's hard mask (keep a channel iff its gate > threshold) on a validation "
               "subset. Nothing is trained or saved; the gates themselves do not change.")
    run_cfg = store.get_run(rid).config
    own = sup.own_threshold(run_cfg)
    # the slider starts at the method's own rule (what the run itself decided), one slider per run
    threshold = st.slider("Threshold", 0.0, 1.0, 0.5 if own is None else float(own), 0.01, key=f"ex_threshold_{rid}")
    if own is not None:
        st.caption(f"Starts at {run_cfg.get('method')}'s own rule: keep a channel iff its gate > {own:g}. "
                   "Move it to see what a different threshold would have kept.")
    try:
        ckpt = store.latest_checkpoint(rid)
        if ckpt is None:
            st.info(f"Run {rid} has no checkpoint yet: one is written after every epoch.")
            return
        if not sup.checkpoint_has_gates(ckpt):  # no model to build for nothing (dense, Bridgeout, sDprun)
            method = ready.set_index("id").loc[rid, "method"]
            raise sup.ConfigError(f"method {method!r} has no gates, so there is no threshold to explore")
        with st.spinner("Loading the checkpoint…"):
            loaded = sup.cached_run(WS, rid, str(ckpt))
        key = (rid, str(ckpt), sup.file_version(ckpt), round(threshold, 3))
        if key not in st.session_state.what_if:
            with st.spinner("Evaluating…"):
                st.session_state.what_if[key] = sup.what_if(loaded, threshold)
        res = st.session_state.what_if[key]
    except Exception as e:
        st.warning(f"What-if is not available for this run: {sup.describe_error(e)}")
        return
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("accuracy (val subset)", f"{100 * res['acc']:.1f}%")
    c2.metric("MACs kept", "n/a" if res["macs_ratio"] is None else f"{res['macs_ratio']:.0%}")
    c3.metric("channels kept", f"{res['kept']} / {res['total']}")
    c4.metric("evaluated in", f"{res['seconds']:.2f} s", help=f"{res['samples']} validation samples")
    st.dataframe(res["per_group"], hide_index=True, key="ex_groups")


def sensitivity(rid: str, ckpt, settings: dict | None) -> None:
    st.caption("Layer sensitivity: each group of coupled channels alone loses 10–90 % of its channels (weakest "
               "first), BatchNorm statistics re-estimated, evaluated on the what-if subset. Computed once in the "
               "background and kept with the run.")
    if ckpt is None or settings is None:
        st.info(f"Run {rid} has no checkpoint yet: sensitivity needs a trained model.")
        return
    try:
        df = sup.stored_sensitivity(store, rid, settings)
    except Exception as e:
        st.warning(f"Cannot read the stored sensitivity: {sup.describe_error(e)}")
        return
    if df is not None:
        key = ("sensitivity", rid, store.analysis_key(settings))
        fig, reading = sup.cached_figure(key, lambda: (viz.sensitivity_figure(df), viz.explain_sensitivity(df)))
        st.plotly_chart(fig, key="ex_sensitivity")
        st.caption(reading)
        return
    job = sup.sensitivity_job(WS, rid, settings)
    if job is not None and job.running:
        st.progress(float(job.progress), text=f"Computing layer sensitivity… {job.progress:.0%}")
        return
    if job is not None and job.done:
        if job.error is None:
            st.rerun()  # finished since the last look: draw the stored result without polling
        st.warning(f"Layer sensitivity failed: {sup.describe_error(job.error)}")
    if ready.set_index("id").loc[rid, "status"] in sup.ACTIVE:
        st.info("This run is still training: sensitivity is computed for a finished run.")
        return
    if st.button("Compute layer sensitivity", key=f"ex_sensitivity_{rid}"):
        sup.start_sensitivity(store, WS, rid, ckpt, settings)
        st.rerun()  # the section polls while the job runs


left, right = st.columns(2)
with left:
    what_if(rid)
with right:
    sens_ckpt = store.latest_checkpoint(rid)
    sens_settings = sup.sensitivity_settings(store, rid, sens_ckpt) if sens_ckpt is not None else None
    sens_job = sup.sensitivity_job(WS, rid, sens_settings) if sens_settings is not None else None
    polling = sens_job is not None and sens_job.running
    st.fragment(run_every=sup.LIVE_EVERY_S if polling else None)(sensitivity)(rid, sens_ckpt, sens_settings)
