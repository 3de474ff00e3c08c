"""prunekit.widgets without a browser or kernel: the dashboard follows the run store, the helpers recompute."""

from __future__ import annotations

import base64
import os
import time

import numpy as np
import plotly.graph_objects as go
import pytest

pytest.importorskip("ipywidgets")

from prunekit.errors import ConfigError  # noqa: E402
from prunekit.train.store import RunStore  # noqa: E402
from prunekit.widgets import (  # noqa: E402
    LiveFigure,
    MatrixEditor,
    RunDashboard,
    set_figure,
    shown_figure,
    slider,
)

LAYERS = ("conv1", "layer1.0.conv1", "layer2.0.conv1")


def _log(store: RunStore, run_id: str, steps: range, keep: float) -> None:
    for s in steps:
        store.log_scalars(run_id, s, 0, {"loss/task": 2.0 / (s + 1), "loss/struct": 0.1, "acc/train": 0.1 + 0.01 * s,
                                         "macs_ratio/expected": 1.0 - 0.02 * s, "macs_ratio/hard": 1.0 - 0.03 * s})
        rows = [{"layer": name, "name": "gate_values", "value": 8,
                 "data": [keep] * 4 + [1.0 - keep] * 4} for name in LAYERS]
        store.log_layers(run_id, s, 0, rows)
    store.flush()


@pytest.fixture
def run(tmp_path):
    store = RunStore(tmp_path)
    run_id = store.create_run({"model": "resnet20", "dataset": "shapes", "method": "crisp",
                               "method_options": {"target_macs": 0.5}}, status="running")
    store.set_status(run_id, "running", pid=os.getpid())  # alive: this process
    yield store, run_id
    store.close()


def _array(v) -> list[float]:
    """A plotly JSON array: a list, or plotly >= 6's base64 typed array {"dtype", "bdata"}."""
    if isinstance(v, dict):
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).astype(float).tolist()
    return [float(x) for x in v]


def _shown_y(out) -> list[float]:
    return _array(shown_figure(out)["data"][0]["y"])


def _trace_y(fig: go.Figure, name: str) -> list[float]:
    return [float(v) for t in fig.data if t.name == name for v in t.y]


def test_dashboard_follows_the_store(run, tmp_path):
    store, run_id = run
    _log(store, run_id, range(3), keep=0.9)
    dash = RunDashboard(run_id, workspace=tmp_path, autostart=False)
    try:
        assert not dash.running
        assert _trace_y(dash.figures["loss"], "task") == pytest.approx([2.0, 1.0, 2 / 3])
        assert _trace_y(dash.figures["macs"], "hard mask") == pytest.approx([1.0, 0.97, 0.94])
        # the target of the run's config is drawn on the MACs chart
        assert any(s.y0 == 0.5 for s in dash.figures["macs"].layout.shapes)
        heat = dash.figures["gates"].data[0]
        assert list(heat.y) == list(LAYERS) and float(np.nanmax(heat.z)) == pytest.approx(0.9)
        assert "running" in dash.status.value and "step 2" in dash.status.value
        # the Output widgets show the same figures (this is what a rendered notebook displays)
        assert _shown_y(dash.views["loss"]) == pytest.approx([2.0, 1.0, 2 / 3])
        assert dash.refresh() is False  # nothing new logged: no redraw

        _log(store, run_id, range(3, 6), keep=0.2)
        store.heartbeat(run_id, progress=0.5)
        assert dash.refresh() is True
        assert len(_trace_y(dash.figures["loss"], "task")) == 6
        assert _trace_y(dash.figures["macs"], "hard mask")[-1] == pytest.approx(0.85)
        assert float(np.nanmax(dash.figures["gates"].data[0].z)) == pytest.approx(0.8)  # sorted 1-keep first
        assert "step 5" in dash.status.value and dash.progress.value == pytest.approx(0.5)
        assert len(_shown_y(dash.views["loss"])) == 6
        assert "6 steps" not in dash.explanation.value and "5 steps" in dash.explanation.value

        store.set_status(run_id, "done")
        info = dash.wait(timeout=5)
        assert info.status == "done"
        assert "done" in dash.status.value and dash.stop_button.disabled and dash.progress.bar_style == "success"
    finally:
        dash.close()


def test_dashboard_refreshes_in_background_until_the_run_ends(run, tmp_path):
    store, run_id = run
    dash = RunDashboard(run_id, workspace=tmp_path, refresh_s=0.05)
    try:
        assert dash.running
        assert dash.figures["loss"].layout.annotations[0].text == "no data yet"
        _log(store, run_id, range(4), keep=0.7)
        deadline = time.monotonic() + 5
        while len(_trace_y(dash.figures["loss"], "task")) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_trace_y(dash.figures["loss"], "task")) == 4
        store.set_status(run_id, "failed", error="RuntimeError: boom")
        deadline = time.monotonic() + 5
        while dash.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not dash.running  # the refresher ends by itself with the run
        assert "failed" in dash.status.value and "boom" in dash.status.value
    finally:
        dash.close()


def test_dashboard_stop_button_requests_a_stop(run, tmp_path):
    store, run_id = run
    dash = RunDashboard(run_id, workspace=tmp_path, autostart=False)
    try:
        dash.stop_button.click()
        assert store.stop_requested(run_id)
    finally:
        dash.close()


def test_dashboard_accepts_a_handle_and_refuses_bad_input(run, tmp_path):
    store, run_id = run

    class Handle:
        id = run_id
        workspace = tmp_path

    dash = RunDashboard(Handle(), autostart=False)
    assert dash.run_id == run_id and dash.store.workspace == tmp_path
    dash.close()
    with pytest.raises(ConfigError, match="unknown run id"):
        RunDashboard("r-nope", workspace=tmp_path, autostart=False)
    with pytest.raises(ConfigError, match="refresh_s"):
        RunDashboard(run_id, workspace=tmp_path, refresh_s=0)
    with pytest.raises(ConfigError, match="run_or_run_id"):
        RunDashboard(3, workspace=tmp_path)


def test_live_figure_recomputes_on_slider_change():
    a = slider("a", 5.0, 0.5, 50.0, log=True)
    live = LiveFigure(lambda a: (go.Figure(go.Scatter(x=[0, 1], y=[0, a])), f"a = {a:.3g}"), a=a)
    assert live.updates == 1 and live.caption.value == "a = 5"
    a.value = 20.0
    assert live.updates == 2 and live.figure.data[0].y[1] == pytest.approx(20.0)
    assert _shown_y(live.output)[1] == pytest.approx(20.0)
    with pytest.raises(ConfigError, match="log slider needs min > 0"):
        slider("b", 1.0, 0.0, 2.0, log=True)
    with pytest.raises(ConfigError, match="value must be in"):
        slider("b", 3.0, 0.0, 2.0)


def test_matrix_editor_reports_edits():
    ed = MatrixEditor(np.zeros((2, 3)))
    seen = []
    live = LiveFigure(lambda phi: go.Figure(go.Heatmap(z=phi)), phi=ed)
    ed.observe(lambda ch: seen.append(ch["new"].copy()))
    ed.cells[1][2].value = 4.0
    assert seen[-1][1, 2] == 4.0 and live.figure.data[0].z[1][2] == 4.0
    before = live.updates
    ed.value = np.ones((2, 3))  # one notification for the whole matrix, not six
    assert live.updates == before + 1 and np.array_equal(ed.value, np.ones((2, 3)))
    with pytest.raises(ConfigError, match="shape"):
        ed.value = np.ones((3, 2))
    with pytest.raises(ConfigError, match="matrix"):
        MatrixEditor(np.zeros(3))


def test_set_figure_replaces_the_output():
    from prunekit.widgets import figure_output

    out = figure_output(go.Figure(go.Bar(y=[1])))
    set_figure(out, go.Figure(go.Bar(y=[2, 3])))
    assert len(out.outputs) == 1 and _shown_y(out) == [2, 3]
    assert "text/html" in out.outputs[0]["data"]
