"""The app's latency views (issue 17 item 5): Explore's cost axis in every timed form, the Runs form's latency target
with the dense network's latency measured beside it."""

from __future__ import annotations

import pytest

pytest.importorskip("streamlit")
from test_app import _app  # noqa: E402 -- the app tests' page runner

from prunekit import app_support as sup  # noqa: E402
from prunekit.train.config import RunConfig, TrainConfig  # noqa: E402
from prunekit.train.store import RunStore  # noqa: E402


@pytest.fixture
def store(tmp_path, monkeypatch) -> RunStore:
    """The run store of a fresh workspace, the one the app pages open."""
    monkeypatch.setenv("PRUNEKIT_HOME", str(tmp_path))
    return RunStore(tmp_path)


def _done_run(store: RunStore, acc: float, macs: float, ort_b1: float | None) -> str:
    rid = store.create_run(RunConfig(model="resnet20", dataset="shapes", method="crisp",
                                     train=TrainConfig(epochs=1)).to_dict())
    store.log_scalars(rid, 10, 1, {"acc/val": acc, "acc/test": acc, "macs_ratio/hard": macs})
    store.set_status(rid, "done", result={"acc/test": acc, "macs_ratio/hard": macs})
    forms = {"eager": {"before": {"1": 2.0, "64": 40.0}, "after": {"1": 1.5, "64": 22.0}}}
    if ort_b1 is not None:
        forms["onnxruntime"] = {"before": {"1": 1.0, "64": 30.0}, "after": {"1": ort_b1, "64": 15.0}}
    store.add_collapse_result(rid, {"original": {"macs": 4000, "latency_ms": {"1": 2.0, "64": 40.0}},
                                    "slim": {"macs": int(4000 * macs), "latency_ms": {"1": 1.2, "64": 20.0}},
                                    "latency_forms": forms, "step": 10})
    store.flush()
    return rid


def test_runs_for_explore_carries_every_timed_form(store):
    _done_run(store, 0.8, 0.5, 0.7)
    _done_run(store, 0.7, 0.3, None)
    runs = sup.runs_for_explore(store).sort_values("acc/test")
    assert runs["latency_b1_ms"].tolist() == [1.2, 1.2] and runs["latency_b64_ms"].tolist() == [20.0, 20.0]
    assert runs["latency/eager_b64_ms"].tolist() == [22.0, 22.0]
    assert runs["latency/onnxruntime_b1_ms"].isna().tolist() == [True, False]
    assert runs["latency/onnxruntime_b1_ms"].iloc[1] == 0.7


def test_explore_cost_axis_offers_measured_latency_eager_and_onnxruntime(store):
    _done_run(store, 0.8, 0.5, 0.7)
    _done_run(store, 0.7, 0.3, 0.4)
    at = _app("pages/3_Explore.py").run()
    assert not at.exception, at.exception
    axes = at.radio(key="ex_axis").options
    assert "latency, batch 64 (after collapse)" in axes and "latency, ONNX Runtime, batch 1" in axes
    at.radio(key="ex_axis").set_value("latency, ONNX Runtime, batch 1").run()
    assert not at.exception, at.exception
    spec = at.get("plotly_chart")[0].proto.spec
    assert "ONNX Runtime" in spec and "0.4" in spec and "0.7" in spec
    assert not any("Collapse & compare page first" in i.value for i in at.info)


def test_explore_says_when_onnxruntime_was_not_timed(store):
    _done_run(store, 0.8, 0.5, None)
    at = _app("pages/3_Explore.py").run()
    at.radio(key="ex_axis").set_value("latency, ONNX Runtime, batch 64").run()
    assert not at.exception, at.exception
    assert any("onnxruntime package" in i.value for i in at.info)


def test_runs_form_offers_a_latency_target_beside_the_dense_latency(store, monkeypatch):
    monkeypatch.setattr(sup, "start", lambda cfg, ws=None: store.create_run(cfg.to_dict()))
    at = _app("pages/1_Runs.py").run()
    at.selectbox(key="form_method").set_value("crisp").run()
    assert not at.exception, at.exception
    field = at.number_input(key="opt_crisp_target_latency")
    assert field.value is None  # empty: the MACs target
    at.button(key="lat_measure").click().run()  # times the dense ResNet-20 on shapes' input, on this machine
    assert not at.exception, at.exception
    res = at.session_state["lat_result"]
    assert res["model"] == "resnet20" and res["batch"] == 1 and res["ms"] > 0 and res["threads"] >= 1
    assert any(m.label.startswith("dense resnet20, batch 1") for m in at.metric)
    assert any(f"target_latency {res['ms'] / 2:.2f} asks for half" in c.value for c in at.caption)
    at.number_input(key="opt_crisp_target_latency").set_value(round(res["ms"] / 2, 3))
    at.number_input(key="form_epochs").set_value(1)
    at.button[0].click()  # the form's submit button (the latency row sits after the form)
    at.run()
    assert not at.exception, at.exception
    cfg = RunConfig.from_dict(store.get_run(store.list_runs()["id"].iloc[0]).config)
    assert cfg.method_options["target_latency"] == pytest.approx(round(res["ms"] / 2, 3))
    # a method without a latency target has no latency row
    at.selectbox(key="form_method").set_value("dpp").run()
    assert not at.exception and not [b for b in at.button if b.key == "lat_measure"]
