"""Model: the network as a graph of layers, its coupled-channel groups coloured, each group's live keep ratio,
and the same graph after collapse (layout only)."""

import os

import streamlit as st

from prunekit import app_support as sup

st.set_page_config(page_title="prunekit · Model", page_icon="🕸️", layout="wide")
WS = os.environ.get("PRUNEKIT_HOME")
sup.settle_process()  # after the imports: Streamlit's per-run full GC then skips them
st.title("Model: which channels are pruned together")
st.markdown(
    "A channel is not one number in one layer: a conv's output channel is also an entry of its BatchNorm and an "
    "input slice of every layer that reads it, and where outputs meet in a **residual sum (+)** they must line "
    "up channel by channel. prunekit finds these **groups of coupled channels** and gives each group one gate. "
    "Each colour below is one group; hover over a layer for what it writes and reads."
)
store, runs, rid = sup.page_run_picker(WS, key="mo_run")
active = runs.loc[runs["id"] == rid, "status"].isin(sup.ACTIVE).any()


def live() -> None:
    info = sup.read_run(rid, lambda: store.get_run(rid))
    if info is None:
        return
    try:
        views = sup.network_views(store, rid, info.config or {})
    except Exception as e:
        st.warning(f"Cannot draw the network of run {rid}: {sup.describe_error(e)}")
        return
    st.plotly_chart(views["figure"], key="mo_graph")
    st.caption(views["reading"])
    if not views["keep_known"]:
        st.caption("This run logs no gate values (a method without gates, or no step logged yet): the colours "
                   "show the groups, not how much of each is kept.")
    else:
        st.caption("Keep ratio: the share of a group's gates above the method's threshold at the latest logged "
                   "step (for a finished run, the channels it kept).")
    st.dataframe(sup.display_table(views["table"], {"keep": ".0%"}), hide_index=True, key="mo_groups")


tab_live, tab_collapsed = st.tabs(["Groups and keep ratios", "After collapse"])
with tab_live:
    st.fragment(run_every=sup.LIVE_EVERY_S if active else None)(live)()
with tab_collapsed:
    try:
        collapsed = sup.collapsed_view(store, rid, store.get_run(rid).config or {})
    except Exception as e:
        st.warning(f"Cannot draw the collapsed network of run {rid}: {sup.describe_error(e)}")
        st.stop()
    if collapsed is None:
        st.info(f"Run {rid} has not been collapsed yet: use the Collapse & compare page, then come back to see "
                "the kept widths and the removed blocks.")
    else:
        fig, reading, step = collapsed
        st.plotly_chart(fig, key="mo_collapsed")
        st.caption(f"Collapse of step {step}. {reading} Labels read `before→after` channels; a red cross is a "
                   "layer collapse removed (all its channels were pruned, a residual block became its shortcut).")
