"""prunekit app entry: `streamlit run app/Home.py`. Opens on the default experiment (layout only)."""

import os

import streamlit as st

from prunekit import app_support as sup

st.set_page_config(page_title="prunekit", page_icon="✂️", layout="wide")
WS = os.environ.get("PRUNEKIT_HOME")
sup.settle_process()  # after the imports: Streamlit's per-run full GC then skips them

st.title("prunekit: structured pruning you can watch")
st.markdown(
    "Gates sit on every group of coupled channels; a pruning method trains them towards a size target while "
    "the network learns. **Masked** channels still exist and cost compute; only **collapse** removes them and "
    "gives a smaller dense network with the same outputs. Start a run, watch the gates decide, then collapse."
)
store, runs = sup.open_store_or_stop(WS)
default_id = sup.find_default_run(runs)
with st.container(border=True):
    st.subheader("Default experiment: ResNet-20 on `shapes`, CRISP at 50% MACs")
    st.caption("Works offline: `shapes` is generated on the fly. Three short epochs on a CPU.")
    # the button stays after the first run: a second default run (another seed, after a change) is one click too
    if st.button("Start the default experiment", type="primary", key="start_default"):
        try:
            st.session_state.run_id = default_id = sup.start(sup.default_config(), WS)
            st.success(f"Started run {st.session_state.run_id}. Watch it on the Live page.")
            runs = store.list_runs()
        except Exception as e:
            st.error(f"Could not start the run: {sup.describe_error(e)}")
    elif default_id is not None:
        st.write(f"Latest default run: `{default_id}`.")

run_id = sup.pick_run(runs, st.session_state.run_id or default_id)
c1, c2, c3, c4, c5 = st.columns(5)
c1.page_link("pages/1_Runs.py", label="Runs: start, stop, resume", icon="🗂️")
c2.page_link("pages/2_Live.py", label="Live: watch the gates", icon="📈")
c3.page_link("pages/3_Explore.py", label="Explore: trade-offs, what-if", icon="🧭")
c4.page_link("pages/4_Collapse.py", label="Collapse & compare", icon="🗜️")
c5.page_link("pages/5_Model.py", label="Model: coupled channels", icon="🕸️")

if run_id is None:
    st.info("No runs yet: start the default experiment above or configure one on the Runs page.")
    st.stop()


def read() -> tuple[sup.LiveSnapshot, dict]:
    snap = sup.live_metrics(store, run_id, st.session_state.get("home_snapshot"))
    st.session_state.home_snapshot = snap
    return snap, sup.training_figures(snap, views=("loss", "macs"))


def most_recent() -> None:
    got = sup.read_run(run_id, read)
    if got is None:
        return
    snap, figs = got
    info = snap.info
    st.subheader(f"Most recent run: `{run_id}` ({info.config.get('model')} / {info.config.get('dataset')} / "
                 f"{info.config.get('method')})")
    st.progress(float(info.progress or 0.0), text=f"status: {info.status}")
    if info.status == "failed":
        st.error(f"The run failed: {info.error}")
    sup.show_figures(figs, ("loss", "macs"), columns=2, key="home")
    if active and info.status not in sup.ACTIVE:
        st.rerun()  # the run ended: stop refreshing


active = runs.loc[runs["id"] == run_id, "status"].isin(sup.ACTIVE).any()
st.fragment(run_every=sup.LIVE_EVERY_S if active else None)(most_recent)()
