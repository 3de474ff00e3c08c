"""Runs: start a run with the papers' defaults pre-filled, see all runs, stop / resume / delete (layout only)."""

import os

import streamlit as st

from prunekit import app_support as sup

st.set_page_config(page_title="prunekit · Runs", page_icon="🗂️", layout="wide")
WS = os.environ.get("PRUNEKIT_HOME")
sup.settle_process()  # after the imports: Streamlit's per-run full GC then skips them
st.title("Runs")
try:
    store = sup.cached_store(WS)
    from prunekit.methods import list_methods
    from prunekit.models import list_models

    models = list_models(include_torchvision=False)
    datasets = sup.form_datasets()
    methods = list_methods()
except Exception as e:
    st.error(f"The app cannot start: {sup.describe_error(e)}")
    st.stop()
st.session_state.setdefault("run_id", None)


def _index(options: list, value: object) -> int:
    return options.index(value) if value in options else 0


def option_input(col, s, key: str):
    """One method option as a widget: checkbox, select box, number (bounded by its declared range) or text."""
    help_ = s.describe() or None
    if s.kind == "bool":
        return col.checkbox(s.name, s.default, help=help_, key=key)
    if s.kind == "choice":
        return col.selectbox(s.name, list(s.choices), index=_index(list(s.choices), s.default), help=help_, key=key)
    if s.kind in ("int", "float"):
        cast = int if s.kind == "int" else float
        bounds = {}
        if s.low is not None and not s.low_open:
            bounds["min_value"] = cast(s.low)
        if s.high is not None and not s.high_open:
            bounds["max_value"] = cast(s.high)
        extra = {"step": 1} if s.kind == "int" else {"format": "%g"}
        return col.number_input(s.name, value=s.default, placeholder="None (see help)" if s.nullable else None,
                                help=help_, key=key, **bounds, **extra)
    return col.text_input(s.name, sup.option_text(s.default), help=help_, key=key)


def dense_latency_row() -> None:
    """The dense network's latency on this machine, beside the method's ``target_latency`` option (measured on
    request: it builds the model and times it)."""
    st.markdown("**Latency target**: the form's `target_latency` (ms; empty: the MACs target) against the dense "
                "network's latency on this machine")
    c1, c2, c3 = st.columns([2, 1, 2])
    lat_model = c1.selectbox("Model to time", models, index=_index(models, st.session_state.get("form_model",
                             sup.DEFAULT_MODEL)), key="lat_model")
    lat_batch = c2.number_input("Batch (latency_batch)", 1, 4096, 1, key="lat_batch")
    dataset = st.session_state.get("form_dataset", sup.DEFAULT_DATASET)
    if c3.button("Measure the dense latency", key="lat_measure",
                 help="Times the dense model on this machine with the threads a run gets, on the input size of the "
                      "dataset chosen below (default shapes). A run with target_latency builds its own per-layer "
                      "table at prepare; this is the number to stay below."):
        try:
            with st.spinner("Timing the dense network…"):
                st.session_state.lat_result = {"model": lat_model, "dataset": dataset, **sup.dense_latency(
                    lat_model, dataset if dataset != sup.IMAGEFOLDER else sup.DEFAULT_DATASET, int(lat_batch),
                    data_root=st.session_state.get("form_data_root"))}
        except Exception as e:
            st.session_state.lat_result = None
            st.error(f"Cannot time {lat_model}: {sup.describe_error(e)}")
    res = st.session_state.get("lat_result")
    if res:
        c3.metric(f"dense {res['model']}, batch {res['batch']}", f"{res['ms']:.2f} ms",
                  help=f"{res['threads']} thread(s), input {'×'.join(map(str, res['input']))} ({res['dataset']})")
        st.caption(f"Dense {res['model']} runs in {res['ms']:.2f} ms at batch {res['batch']} on this machine "
                   f"({res['threads']} threads): target_latency {res['ms'] / 2:.2f} asks for half of it. Set "
                   f"latency_batch to {res['batch']} too.")


# -- start a run -------------------------------------------------------------------------------
with st.expander("Start a run", expanded=True):
    method = st.selectbox("Method", methods, index=_index(methods, sup.DEFAULT_METHOD), key="form_method",
                          help="Each method's options below are pre-filled with its paper's defaults.")
    try:
        specs = sup.method_fields(method)
        tfield = sup.target_field(method)
    except Exception as e:
        st.error(f"Method {method!r} cannot be configured: {sup.describe_error(e)}")
        specs, tfield = [], None
    with st.form("start_run"):
        c1, c2, c3 = st.columns(3)
        model = c1.selectbox("Model", models, index=_index(models, sup.DEFAULT_MODEL), key="form_model")
        dataset = c2.selectbox(
            "Dataset", datasets, index=_index(datasets, sup.DEFAULT_DATASET), key="form_dataset",
            format_func=lambda d: "imagefolder: your own images (folder below)" if d == sup.IMAGEFOLDER else d,
            help="`shapes` is generated offline; the others need their files under the data root. The dataset is "
                 "checked when you press Start run.")
        name = c3.text_input("Name (optional)", key="form_name")
        c1, c2 = st.columns(2)
        data_root = c1.text_input(
            "Data root", sup.default_data_root(), key="form_data_root",
            help="A folder holding the dataset files (e.g. `cifar-10-batches-py/`). Starts at `$PRUNEKIT_DATA`; "
                 "the run also looks in `$PRUNEKIT_DATA` and `~/.cache/prunekit/data`.")
        image_folder = c2.text_input(
            "Image folder (imagefolder only)", key="form_image_folder", placeholder="/path/to/images",
            help="One sub-folder of images per class (or `train/` and `test/` with class sub-folders inside).")
        target = st.slider(
            "Target: fraction of the dense MACs to keep", 0.05, 1.0, sup.DEFAULT_TARGET, 0.05, key="form_target",
            disabled=tfield is None,
            help=f"Goes to the method option `{tfield}`." if tfield else "This method has no size target.")
        c1, c2, c3, c4 = st.columns(4)
        epochs = c1.number_input("Epochs", 0, 1000, 3, key="form_epochs")
        lr = c2.number_input("Learning rate", 1e-6, 10.0, 0.1, format="%g", key="form_lr")
        batch = c3.number_input("Batch size", 1, 4096, 128, key="form_batch")
        seed = c4.number_input("Seed", 0, 2**31 - 1, 0, key="form_seed")
        c1, c2, c3 = st.columns(3)
        max_steps = c1.number_input("Max steps per epoch (0 = all)", 0, 100000, 0, key="form_max_steps",
                                    help="Cap the epoch length for quick what-if runs.")
        samples = c2.number_input("Samples (shapes only, 0 = default)", 0, 1_000_000, 0, key="form_samples")
        log_every = c3.number_input("Log every (steps)", 1, 10000, 10, key="form_log_every",
                                    help="How often the charts get a new point; gate statistics cost a little time.")
        opts = {}
        if specs:
            st.markdown(f"**{method} options** (hover for what each does, its unit, range and the paper's value)")
            st.caption(sup.method_help(method))
            cols = st.columns(3)
            for i, s in enumerate([s for s in specs if s.name != tfield]):
                opts[s.name] = option_input(cols[i % 3], s, f"opt_{method}_{s.name}")
        submitted = st.form_submit_button("Start run", type="primary")
    if submitted:
        try:
            method_options = {s.name: sup.parse_option(s, opts[s.name]) for s in specs if s.name in opts}
            cfg = sup.build_run_config(
                model=model, dataset=sup.dataset_name(dataset, image_folder), method=method,
                target=target if tfield else None, method_options=method_options, name=name,
                data_options={"num_samples": int(samples)} if samples and dataset.startswith("shapes") else {},
                data_root=data_root, epochs=int(epochs), lr=float(lr), batch_size=int(batch), seed=int(seed),
                max_steps_per_epoch=int(max_steps) or None, log_every=int(log_every))
            with st.spinner(f"Checking dataset {cfg.dataset}…"):
                sup.check_dataset(cfg.dataset, cfg.data_root, cfg.data_options)
            st.session_state.run_id = sup.start(cfg, WS)
            st.success(f"Started run `{st.session_state.run_id}`.")
            st.page_link("pages/2_Live.py", label="Watch it live", icon="📈")
        except Exception as e:
            st.error(f"Could not start the run: {sup.describe_error(e)}")
    if tfield and sup.latency_field(method):  # after the form: its submit button stays the page's first button
        st.fragment(dense_latency_row)()


# -- all runs ----------------------------------------------------------------------------------
def all_runs_table() -> None:
    runs = store.list_runs()
    if runs.empty:
        st.info("No runs yet.")
        return
    if any_active and sup.statuses_changed(all_runs, runs):
        st.rerun()  # a run started, ended or was deleted: redraw the picker and buttons for the new statuses
    st.dataframe(
        sup.runs_table(store, runs), hide_index=True, key="runs_table",
        column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0),
                       "acc/test": st.column_config.TextColumn("test acc"),
                       "macs_ratio/hard": st.column_config.TextColumn("MACs kept"),
                       "warnings": st.column_config.TextColumn(
                           "warnings", help="What not to take at face value: accuracy near chance, or the "
                                            "method's own rule far from its target. Select the run for advice.")})


st.subheader("All runs")
try:
    all_runs = store.list_runs()
except Exception as e:
    st.error(f"Cannot read the run store: {sup.describe_error(e)}")
    st.stop()
any_active = all_runs["status"].isin(sup.ACTIVE).any() if not all_runs.empty else False
st.fragment(run_every=sup.LIVE_EVERY_S if any_active else None)(all_runs_table)()

if not all_runs.empty:
    sel = sup.select_run(all_runs, key="runs_select")
    status = all_runs.set_index("id").loc[sel, "status"]
    try:
        blocker = sup.resume_blocker(store, sel)
    except Exception as e:
        blocker = sup.describe_error(e)
    c1, c2, c3, c4 = st.columns([1, 1, 1, 2])
    try:
        if c1.button("Stop", disabled=status not in sup.ACTIVE, key="btn_stop"):
            sup.stop(sel, WS)
            st.toast(f"Asked {sel} to stop after its current step.")
        if c2.button("Resume", disabled=blocker is not None, key="btn_resume",
                     help=f"Cannot resume: {blocker}." if blocker else "Continue from its latest checkpoint "
                          "(from the start if it has none)."):
            sup.resume(sel, WS)
            st.toast(f"Resumed {sel}.")
            st.rerun()
        confirm = c4.checkbox("I really want to delete it (checkpoints included)", key="confirm_delete")
        if c3.button("Delete", disabled=not confirm or status in sup.ACTIVE, key="btn_delete"):
            store.delete_run(sel)
            st.session_state.run_id = None
            st.rerun()
    except Exception as e:
        st.error(f"That did not work: {sup.describe_error(e)}")
    err = all_runs.set_index("id").loc[sel, "error"]
    if status == "failed" and not sup.missing(err):
        st.error(f"Run {sel} failed: {err}")
    if status == "failed" and blocker is not None:
        st.caption(f"Resume is off: {blocker}.")
    try:
        for w in sup.run_warnings_of(store.get_run(sel)):
            st.warning(f"Run {sel}: {w}.", icon="⚠️")
    except Exception as e:
        st.error(f"Cannot read run {sel}: {sup.describe_error(e)}")
