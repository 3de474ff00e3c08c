"""Collapse & compare: remove masked channels for real and compare original vs slim (layout only)."""

import os
from pathlib import Path

import streamlit as st

from prunekit import app_support as sup
from prunekit import viz

st.set_page_config(page_title="prunekit · Collapse", page_icon="🗜️", layout="wide")
WS = os.environ.get("PRUNEKIT_HOME")
sup.settle_process()  # after the imports: Streamlit's per-run full GC then skips them
st.title("Collapse & compare")
st.markdown("Until now the pruned channels were only **masked** (multiplied by zero, still computed). "
            "**Collapse** removes them, and whole residual branches whose channels are all gone, giving a "
            "smaller dense network whose outputs match the masked one.")
store, runs, rid = sup.page_run_picker(WS, key="co_run")
ckpts = sup.read_run(rid, lambda: store.checkpoints(rid), stop=True)
if ckpts.empty:
    st.info(f"Run {rid} has no checkpoint yet: one is written after every epoch.")
else:
    paths = list(ckpts["path"].astype(str))[::-1]
    steps = dict(zip(ckpts["path"].astype(str), ckpts["step"]))
    ckpt = st.selectbox("Checkpoint", paths, format_func=lambda p: f"step {steps[p]} · {Path(p).name}", key="co_ckpt")
    if st.button("Collapse", type="primary", key="co_collapse"):
        try:
            if not sup.checkpoint_has_gates(ckpt):  # say so without rebuilding the model first
                method = runs.set_index("id").loc[rid, "method"]
                raise sup.ConfigError(f"method {method!r} leaves no gates in the model, so there is nothing to collapse")
            with st.spinner("Collapsing, measuring latency and accuracy…"):
                loaded = sup.cached_run(WS, rid, ckpt)
                out = store.run_dir(rid) / "collapse" / f"step{loaded.step}"
                result = sup.collapse_and_compare(loaded, out)
                store.add_collapse_result(rid, result)
            st.success(f"Collapsed in {result['seconds']:.1f} s.")
        except Exception as e:
            st.error(f"Collapse refused: {sup.describe_error(e)}")

try:
    results = store.collapse_results(rid)
except Exception as e:
    st.error(f"Cannot read collapse results: {sup.describe_error(e)}")
    st.stop()
if not results:
    st.info("No collapse yet for this run: press Collapse.")
    st.stop()
result = results[-1]
st.subheader(f"Original (masked) vs slim (removed) · step {result.get('step', '?')}")
st.dataframe(sup.display_table(viz.comparison_table(result), {"slim / original": ".3f"}), hide_index=True,
             key="co_table")
st.caption(viz.explain_comparison(result))
widths = sup.widths_frame(result)
st.plotly_chart(viz.width_figure(widths), key="co_widths")
st.caption(viz.explain_widths(widths))
removed = result.get("removed_blocks") or []
if removed:
    st.markdown("**Removed blocks** (every channel of the branch was pruned, the block became its shortcut): "
                + ", ".join(f"`{b}`" for b in removed))
else:
    st.caption("No whole block was removed.")
files = result.get("files", {})
c1, c2 = st.columns(2)
if files.get("slim") and Path(files["slim"]).exists():
    c1.download_button("Download slim model (spec + weights, .zip)", sup.zip_files([files["slim"]]),
                       file_name=f"{rid}-slim.zip", mime="application/zip", key="co_dl_slim")
if files.get("onnx") and Path(files["onnx"]).exists():
    c2.download_button("Download ONNX", Path(files["onnx"]).read_bytes(), file_name=f"{rid}-slim.onnx",
                       key="co_dl_onnx")
elif result.get("onnx_error"):
    c2.warning(f"No ONNX export: {result['onnx_error']}")
