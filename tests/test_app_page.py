"""The pages' shared preamble (``app_support._page``) under AppTest on a real SQLite run store in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from prunekit import app_support as sup  # noqa: E402
from prunekit.train.config import RunConfig, TrainConfig  # noqa: E402
from prunekit.train.store import RunStore  # noqa: E402


def _picker_page(workspace: str) -> None:
    import streamlit as st

    from prunekit import app_support as sup

    store, runs, run_id = sup.page_run_picker(workspace, key="test_run")
    st.markdown(f"picked {run_id} of {len(runs)} from {type(store).__name__}")


def _reader_page(workspace: str, remember: bool) -> None:
    import streamlit as st

    from prunekit import app_support as sup
    from prunekit.errors import ConfigError

    def read(store):
        if not remember:
            raise ConfigError("sweeps table is locked")
        return store.list_runs()

    store, runs = sup.open_store_or_stop(workspace, read=read)
    st.markdown(f"opened {len(runs)}")
    sup.select_run(runs, key="look", remember=False)


def _run(page, workspace: Path, *args, wanted: str | None = None) -> AppTest:
    at = AppTest.from_function(page, args=(str(workspace), *args), default_timeout=30)
    if wanted is not None:
        at.session_state[sup.RUN_KEY] = wanted
    return at.run()


def _runs(workspace: Path, statuses: list[str]) -> list[str]:
    """Runs created oldest first with these statuses; ``list_runs`` shows them newest first."""
    store = RunStore(workspace)
    ids = []
    for i, status in enumerate(statuses):
        cfg = RunConfig(model="resnet20", dataset="shapes", method="dense", train=TrainConfig(epochs=1), name=f"n{i}")
        ids.append(store.create_run(cfg.to_dict(), status=status))
    store.close()
    return ids


def test_no_runs_shows_the_message_and_stops(tmp_path):
    at = _run(_picker_page, tmp_path)
    assert not at.exception, at.exception
    assert [i.value for i in at.info] == [sup.NO_RUNS]
    assert not at.selectbox and not at.markdown  # the page stopped before its own content
    assert at.session_state[sup.RUN_KEY] is None


def test_picks_the_sessions_run_and_remembers_the_choice(tmp_path):
    old, new = _runs(tmp_path, ["done", "done"])
    at = _run(_picker_page, tmp_path, wanted=old)
    assert not at.exception, at.exception
    box = at.selectbox(key="test_run")
    assert box.value == old and box.options[0].startswith(new)  # newest first, the wanted one selected
    assert f"picked {old} of 2 from RunStore" in at.markdown[0].value
    box.set_value(new).run()
    assert at.session_state[sup.RUN_KEY] == new  # the next page opens on it
    assert f"picked {new} of 2" in at.markdown[0].value


def test_an_unknown_run_falls_back_to_the_newest_active_run(tmp_path):
    active, _done = _runs(tmp_path, ["queued", "done"])
    at = _run(_picker_page, tmp_path, wanted="r-deleted")
    assert not at.exception, at.exception
    assert at.selectbox(key="test_run").value == active
    assert at.session_state[sup.RUN_KEY] == active


def test_open_store_or_stop_reports_a_read_error_and_select_run_can_leave_the_session_alone(tmp_path):
    old, new = _runs(tmp_path, ["done", "done"])
    failed = _run(_reader_page, tmp_path, False)
    assert not failed.exception, failed.exception
    assert [e.value for e in failed.error] == ["Cannot open the run store: sweeps table is locked"]
    assert not failed.markdown
    at = _run(_reader_page, tmp_path, True, wanted=old)
    assert "opened 2" in at.markdown[0].value
    at.selectbox(key="look").set_value(new).run()
    assert at.session_state[sup.RUN_KEY] == old  # remember=False: other pages keep the session's run


def _read_run_page(workspace: str, stop: bool) -> None:
    import plotly.graph_objects as go
    import streamlit as st

    from prunekit import app_support as sup
    from prunekit.errors import ConfigError

    def broken() -> dict:
        raise ConfigError("metrics table is locked")

    got = sup.read_run("r-1", broken, stop=stop)
    st.markdown(f"after the error: {got}")
    figs = sup.read_run("r-1", lambda: {n: (go.Figure(), f"reading {n}") for n in ("a", "b", "c")})
    sup.show_figures(figs, ("c", "a"), columns=2, key="t")


@pytest.mark.parametrize("stop", [False, True])
def test_read_run_shows_one_error_and_stops_only_when_asked(tmp_path, stop):
    at = _run(_read_run_page, tmp_path, stop)
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == ["Cannot read run r-1: metrics table is locked"]
    if stop:
        assert not at.markdown and not at.get("plotly_chart")  # the page stopped at the error
    else:  # inside a live fragment the page goes on: the figures asked for, in order, with their readings
        assert at.markdown[0].value == "after the error: None"
        assert len(at.get("plotly_chart")) == 2 and len(at.columns) == 2
        assert [c.value for c in at.caption] == ["reading c", "reading a"]


# -- issue 20: the picker follows the run's status; no "None"/"nan" in labels and tables ---------------------
def _watch_page(workspace: str) -> None:
    import streamlit as st

    from prunekit import app_support as sup

    store = sup.cached_store(workspace)
    runs = store.list_runs()
    st.session_state["draws"] = st.session_state.get("draws", 0) + 1
    if st.session_state["draws"] == 1:  # the first draw saw the run still training
        runs = runs.assign(status="running")
    sup.watch_statuses(store, runs)
    labels = {r["id"]: sup.run_label(r) for _, r in runs.iterrows()}
    st.selectbox("Run", list(runs["id"]), format_func=labels.get, key="w")


def test_a_page_drawn_while_a_run_trained_redraws_when_it_ends(tmp_path):
    """The picker said "running" after the run was done: the watcher reruns the page once the store's statuses
    differ from the ones drawn, and only then."""
    (rid,) = _runs(tmp_path, ["done"])
    at = _run(_watch_page, tmp_path)
    assert not at.exception, at.exception
    assert at.session_state["draws"] == 2  # drawn with "running", the watcher saw "done" and reran the page
    assert at.selectbox(key="w").options == [f"{rid} · n0 · done"]
    at.run()
    assert at.session_state["draws"] == 3  # nothing active any more: no watcher, no extra rerun


def test_statuses_changed_sees_new_deleted_and_changed_runs():
    import pandas as pd

    shown = pd.DataFrame({"id": ["a", "b"], "status": ["running", "done"]})
    assert not sup.statuses_changed(shown, shown.copy())
    assert sup.statuses_changed(shown, shown.assign(status=["done", "done"]))
    assert sup.statuses_changed(shown, shown.iloc[:1])
    assert sup.statuses_changed(shown, pd.concat([shown, pd.DataFrame({"id": ["c"], "status": ["queued"]})]))


def test_run_labels_and_display_tables_never_show_none_or_nan():
    import math

    import pandas as pd

    label = sup.run_label(pd.Series({"id": "r1", "name": math.nan, "model": None, "dataset": "shapes",
                                     "method": "crisp", "status": "done"}))
    assert label == "r1 · — / shapes / crisp · done"
    assert sup.run_label({"id": "r2", "name": "mine", "status": None}) == "r2 · mine · —"
    table = sup.display_table(pd.DataFrame({"a": [None, 0.25], "b": [math.nan, 1234567], "c": ["x", pd.NA]}),
                              {"a": ".0%"})
    assert table.to_dict("list") == {"a": ["—", "25%"], "b": ["—", "1.235e+06"], "c": ["x", "—"]}
