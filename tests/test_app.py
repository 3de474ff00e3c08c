"""Every app page under streamlit.testing.v1.AppTest on a workspace filled with synthetic runs.

Background runs are not started here (that is tests/test_browser.py's job): ``app_support.start`` is
replaced by a function that only records the run, so the tests check what the form sends.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from prunekit import app_support as sup  # noqa: E402
from prunekit.train.config import RunConfig, TrainConfig  # noqa: E402
from prunekit.train.store import RunStore  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "app"
PAGES = ["Home.py", "pages/1_Runs.py", "pages/2_Live.py", "pages/3_Explore.py", "pages/4_Collapse.py"]


def _fill_run(
    store: RunStore,
    *,
    method: str = "dense",
    status: str = "done",
    acc: float = 0.8,
    macs: float = 0.5,
    steps: int = 30,
) -> str:
    cfg = RunConfig(model="resnet20", dataset="shapes", method=method, train=TrainConfig(epochs=1))
    rid = store.create_run(cfg.to_dict())
    rng = np.random.default_rng(0)
    for step in range(0, steps, 10):
        store.log_scalars(
            rid,
            step,
            0,
            {
                "loss": 2.0 - step / 50,
                "loss/task": 1.9 - step / 50,
                "loss/struct": 0.1,
                "acc/train": 0.5 + step / 100,
                "macs_ratio/expected": 1 - step / 60,
                "macs_ratio/hard": 1 - step / 80,
                "temperature": 5 - step / 10,
                "lr": 0.1,
            },
        )
        rows = []
        for layer in ("layer1.0", "layer2.0", "layer10.0"):
            g = rng.uniform(size=16)
            rows += [
                {"layer": layer, "name": "gate_values", "value": float(g.mean()), "data": g.tolist()},
                {"layer": layer, "name": "confidence", "value": step / 100},
                {"layer": layer, "name": "flip_rate", "value": 0.01},
            ]
        store.log_layers(rid, step, 0, rows)
    store.log_scalars(rid, steps, 1, {"acc/val": acc, "acc/test": acc, "macs_ratio/hard": macs})
    store.set_status(
        rid,
        status,
        result={"acc/test": acc, "macs_ratio/hard": macs} if status == "done" else None,
        error="loss is nan at step 3" if status == "failed" else None,
    )
    store.flush()
    return rid


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PRUNEKIT_HOME", str(tmp_path))
    return tmp_path


def _app(page: str) -> AppTest:
    return AppTest.from_file(str(APP / page), default_timeout=60)


def _texts(at: AppTest) -> str:
    parts = [
        e.value
        for kind in ("markdown", "caption", "info", "error", "warning", "success", "subheader")
        for e in getattr(at, kind)
    ]
    return "\n".join(str(p) for p in parts)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_on_an_empty_workspace(workspace, page):
    at = _app(page).run()
    assert not at.exception, at.exception
    assert "No runs yet" in _texts(at)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_with_runs(workspace, page):
    store = RunStore(workspace)
    _fill_run(store)
    _fill_run(store, status="failed")
    at = _app(page).run()
    assert not at.exception, at.exception
    assert not [e.value for e in at.error if "Cannot" in e.value]


def test_home_offers_the_default_experiment(workspace, monkeypatch):
    started = []
    monkeypatch.setattr(sup, "start", lambda cfg, ws=None: started.append(cfg) or "r-test")
    at = _app("Home.py").run()
    assert at.button(key="start_default")
    at.button(key="start_default").click().run()
    assert not at.exception
    assert len(started) == 1
    cfg = started[0]
    assert (cfg.model, cfg.dataset) == ("resnet20", "shapes")
    assert cfg.method in ("crisp", "dense")
    assert "Started run r-test" in _texts(at)


def test_home_shows_most_recent_run(workspace):
    store = RunStore(workspace)
    rid = _fill_run(store)
    at = _app("Home.py").run()
    assert f"Most recent run: `{rid}`" in _texts(at)
    assert len(at.get("plotly_chart")) == 2
    assert "The task loss fell" in _texts(at)


def test_runs_form_sends_a_valid_config(workspace, monkeypatch):
    store = RunStore(workspace)
    monkeypatch.setattr(sup, "start", lambda cfg, ws=None: store.create_run(cfg.to_dict()))
    at = _app("pages/1_Runs.py").run()
    at.selectbox(key="form_method").set_value("dense").run()
    at.number_input(key="form_epochs").set_value(1)
    at.number_input(key="form_max_steps").set_value(2)
    at.number_input(key="form_samples").set_value(256)
    at.number_input(key="form_lr").set_value(0.05)
    at.button[0].click()  # the form's submit button
    at.run()
    assert not at.exception, at.exception
    runs = store.list_runs()
    assert len(runs) == 1
    cfg = RunConfig.from_dict(store.get_run(runs["id"].iloc[0]).config)
    assert cfg.train.epochs == 1 and cfg.train.max_steps_per_epoch == 2 and cfg.train.lr == pytest.approx(0.05)
    assert cfg.data_options == {"num_samples": 256}
    assert "Started run" in _texts(at)


def test_runs_form_reports_bad_input_instead_of_raising(workspace, monkeypatch):
    def refuse(cfg, ws=None):
        raise sup.ConfigError("dataset 'cifar10' not found under /nowhere")

    monkeypatch.setattr(sup, "start", refuse)
    at = _app("pages/1_Runs.py").run()
    at.button[0].click()
    at.run()
    assert not at.exception
    assert any("dataset 'cifar10' not found" in e.value for e in at.error)


def test_runs_page_shows_failure_and_deletes(workspace):
    store = RunStore(workspace)
    rid = _fill_run(store, status="failed")
    at = _app("pages/1_Runs.py").run()
    assert any("loss is nan" in e.value for e in at.error)
    assert at.button(key="btn_delete").disabled  # needs the confirmation first
    at.checkbox(key="confirm_delete").check().run()
    at.button(key="btn_delete").click().run()
    assert not at.exception
    assert rid not in set(store.list_runs()["id"])


def test_live_page_draws_every_chart(workspace):
    store = RunStore(workspace)
    rid = _fill_run(store)
    at = _app("pages/2_Live.py").run()
    assert not at.exception
    assert at.selectbox(key="live_run").value == rid
    charts = at.get("plotly_chart")
    assert len(charts) == 4 + 2 + 2  # scalars, gate views, confidence + flip rate
    text = _texts(at)
    assert "cooled from 5 to 3" in text and "clearly on" in text and "masks are still changing" in text
    assert "only collapse" in text.lower() or "removes" in text


def test_live_page_switches_runs_in_session_state(workspace):
    store = RunStore(workspace)
    a = _fill_run(store)
    b = _fill_run(store, status="failed")
    at = _app("pages/2_Live.py").run()
    at.selectbox(key="live_run").set_value(a if at.selectbox(key="live_run").value == b else b).run()
    assert not at.exception
    assert at.session_state["run_id"] == at.selectbox(key="live_run").value
    if at.session_state["run_id"] == b:
        assert any("failed" in e.value for e in at.error)


def test_explore_shows_pareto_and_what_if_message(workspace):
    store = RunStore(workspace)
    _fill_run(store, acc=0.9, macs=0.6)
    _fill_run(store, acc=0.7, macs=0.3)
    _fill_run(store, acc=0.6, macs=0.7)
    at = _app("pages/3_Explore.py").run()
    assert not at.exception
    fig = at.get("plotly_chart")[0]
    assert "Pareto front" in fig.proto.spec
    assert "2 of 3 runs are on the Pareto front" in _texts(at)
    # Dense runs have no gates and these synthetic runs no checkpoint: a message, never a traceback.
    assert any("no checkpoint" in i.value for i in at.info) or at.warning
    at.radio(key="ex_axis").set_value("latency, batch 1 (after collapse)").run()
    assert not at.exception
    assert any("Collapse & compare page first" in i.value for i in at.info)


def test_collapse_page_without_checkpoint_and_with_a_stored_result(workspace):
    store = RunStore(workspace)
    rid = _fill_run(store)
    at = _app("pages/4_Collapse.py").run()
    assert any("no checkpoint yet" in i.value for i in at.info)
    store.add_collapse_result(
        rid,
        {
            "original": {"params": 1000, "macs": 4000, "latency_ms": {"1": 2.0, "64": 40.0}, "accuracy": 0.9},
            "slim": {"params": 400, "macs": 1500, "latency_ms": {"1": 1.2, "64": 20.0}, "accuracy": 0.9},
            "max_abs_diff": 2e-6,
            "widths": {"layer1": [16, 8], "layer2": [16, 0]},
            "removed_blocks": ["layer2.0"],
            "step": 30,
            "files": {},
        },
    )
    at = _app("pages/4_Collapse.py").run()  # a restart: the result comes back from the store
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["metric"])[:2] == ["parameters", "MACs"]
    assert "`layer2.0`" in _texts(at)
    assert "vanished entirely" in _texts(at)


# -- app_support on a real gated network ----------------------------------------------------------------
@pytest.fixture(scope="module")
def gated_run():
    import types

    import torch

    from prunekit.augment import augment
    from prunekit.data import make_loaders
    from prunekit.models import create_model

    loaders = make_loaders("shapes", 32, num_samples=96)
    model = create_model("resnet20", num_classes=loaders.info.num_classes, in_channels=loaders.info.in_channels)
    x = torch.stack([loaders.train.dataset[i][0] for i in range(2)])
    exp = types.SimpleNamespace(model=augment(model, x).eval(), loaders=loaders, task="classification", example_input=x)
    return sup.LoadedRun("r-test", Path("ckpt.pt"), 7, RunConfig(method="crisp"), exp)


def test_what_if_thresholds_and_restores_the_masks(gated_run):
    low = sup.what_if(gated_run, 0.0, max_batches=1)
    assert low["kept"] == low["total"] and low["macs_ratio"] == pytest.approx(1.0)
    # Untrained CRISP gates all sit near sigmoid(5) ≈ 0.9933: a threshold just above removes most channels.
    high = sup.what_if(gated_run, 0.995, max_batches=1)
    assert high["kept"] < high["total"] and high["macs_ratio"] < 0.5
    assert set(high["per_group"].columns) == {"group", "size", "trained", "kept"}
    assert all(bool(h.gate.keep.all()) for h in gated_run.gated.groups)  # the shared model is unchanged
    with pytest.raises(sup.ConfigError, match="threshold"):
        sup.what_if(gated_run, 1.5)


def test_collapse_and_compare_gives_the_page_what_it_shows(gated_run, tmp_path):
    gated = gated_run.gated
    saved = [h.gate.keep.clone() for h in gated.groups]
    try:
        gated.prune_(0.995)
        result = sup.collapse_and_compare(gated_run, tmp_path, max_batches=1)
    finally:
        for h, k in zip(gated.groups, saved):
            h.gate.keep.copy_(k)
    import json

    json.dumps(result)  # stored in the run store as JSON
    from prunekit import viz

    table = viz.comparison_table(result).set_index("metric")
    assert table.loc["MACs", "slim / original"] < 0.6
    assert table.loc["parameters", "slim / original"] < 1.0
    assert float(result["max_abs_diff"]) < 1e-3
    widths = sup.widths_frame(result)
    assert not widths.empty and (widths["after"] <= widths["before"]).all()
    assert result["step"] == 7
