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
PAGES = ["Home.py", "pages/1_Runs.py", "pages/2_Live.py", "pages/3_Explore.py", "pages/4_Collapse.py",
         "pages/5_Model.py"]


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
                "macs_ratio/relaxation": 1 - step / 70,
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
    assert "Only collapse (page 4) **removes** them" in text
    # the method's own rule over time: its own line in the MACs chart and in the reading under it
    assert any("method's own rule (before calibration)" in c.proto.spec for c in charts)
    assert "own rule (its threshold, zero groups or top-k) would keep 71%" in text  # 1 - 20/70


def test_live_page_switches_runs_in_session_state(workspace):
    store = RunStore(workspace)
    a = _fill_run(store)
    b = _fill_run(store, status="failed")
    at = _app("pages/2_Live.py").run()
    for rid in (a, b):
        at.selectbox(key="live_run").set_value(rid).run()
        assert not at.exception
        assert at.session_state["run_id"] == rid
    assert any("failed" in e.value for e in at.error)  # b failed, and the page says so


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
    picked = at.selectbox(key="ex_run").value
    assert any(f"Run {picked} has no checkpoint yet" in i.value for i in at.info)
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
    row = table.set_index("metric").loc["max output difference"]
    assert (row["original"], row["slim / original"]) == ("—", "—")  # was "0" and "None"
    assert not {"None", "nan"} & set(table.to_numpy().ravel().tolist())
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
    low = sup.what_if(gated_run, 0.0, max_samples=1)
    assert low["kept"] == low["total"] and low["macs_ratio"] == pytest.approx(1.0)
    # Untrained CRISP gates all sit near sigmoid(5) ≈ 0.9933: a threshold just above removes most channels.
    high = sup.what_if(gated_run, 0.995, max_samples=1)
    assert high["kept"] < high["total"] and high["macs_ratio"] < 0.5
    assert set(high["per_group"].columns) == {"group", "size", "trained", "kept"}
    assert all(bool(h.gate.keep.all()) for h in gated_run.gated.groups)  # the shared model is unchanged
    with pytest.raises(sup.ConfigError, match="threshold"):
        sup.what_if(gated_run, 1.5)


def test_what_if_reads_its_evaluation_subset_once(gated_run, monkeypatch):
    first = sup.what_if(gated_run, 0.5, max_samples=5)
    assert first["samples"] == 10  # whole batches: the 10-sample validation split is one batch
    import prunekit.app_support._loaded as loaded_mod

    monkeypatch.setattr(loaded_mod, "_eval_loader", lambda loaded: pytest.fail("the subset was read again"))
    again = sup.what_if(gated_run, 0.5, max_samples=5)
    assert again["acc"] == first["acc"] and again["samples"] == 10
    with pytest.raises(sup.ConfigError, match="max_samples must be >= 1, got 0"):
        gated_run.eval_batches(0)


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
    assert table.loc["latency batch 64, BN folded (ms)", "slim"] > 0
    widths = sup.widths_frame(result)
    assert not widths.empty and (widths["after"] <= widths["before"]).all()
    assert result["step"] == 7


# -- performance plumbing (issue 8: re-render ≤ 0.5 s while a run trains, training ≥ 0.8× with the app open) -----
def _log(store: RunStore, rid: str, step: int, values: dict[str, float]) -> None:
    store.log_scalars(rid, step, 0, values)
    store.flush()


def test_live_metrics_reads_only_new_rows_and_equals_a_full_read(workspace):
    store = RunStore(workspace)
    rid = _fill_run(store)
    first = sup.live_metrics(store, rid)
    assert first.full_read and first.last_step == 30
    _log(store, rid, 30, {"acc/val": 0.85})  # end-of-epoch metrics arrive at the last logged step
    _log(store, rid, 40, {"loss": 1.0, "acc/train": 0.7})
    second = sup.live_metrics(store, rid, first)
    assert not second.full_read and second.last_step == 40
    full = store.metrics(rid)
    assert second.metrics.reset_index(drop=True).equals(full.reset_index(drop=True))
    # Nothing new: same rows again, still incremental.
    third = sup.live_metrics(store, rid, second)
    assert not third.full_read and third.metrics.equals(second.metrics)
    # Another run, or a new life of this one (status changed), reads everything.
    other = _fill_run(store, acc=0.5)
    assert sup.live_metrics(store, other, third).full_read
    store.set_status(rid, "stopped")
    assert sup.live_metrics(store, rid, third).full_read


def test_cached_figure_builds_once_per_key_and_evicts_the_oldest(monkeypatch):
    from prunekit.app_support import _process

    sup.clear_figure_cache()
    monkeypatch.setattr(_process, "FIGURE_CACHE_SIZE", 2)  # the module that holds the cache reads it
    calls = []

    def build(tag):
        return lambda: calls.append(tag) or tag

    assert sup.cached_figure(("a",), build("a")) == "a"
    assert sup.cached_figure(("a",), build("a2")) == "a"  # cached: not rebuilt
    sup.cached_figure(("b",), build("b"))
    sup.cached_figure(("c",), build("c"))  # evicts ("a",)
    assert sup.cached_figure(("a",), build("a3")) == "a3"
    assert calls == ["a", "b", "c", "a3"]
    sup.clear_figure_cache()


def test_training_figures_rebuild_only_the_chart_whose_series_changed(workspace):
    sup.clear_figure_cache()
    store = RunStore(workspace)
    rid = _fill_run(store)
    snap = sup.live_metrics(store, rid)
    before = sup.training_figures(snap, 0.5)
    assert set(before) == {"loss", "acc", "macs", "temp"}
    assert "The task loss fell" in before["loss"][1]
    _log(store, rid, 40, {"loss": 1.0, "loss/task": 0.9})
    after = sup.training_figures(sup.live_metrics(store, rid, snap), 0.5)
    assert after["loss"][0] is not before["loss"][0]  # its series gained a row
    for view in ("acc", "macs", "temp"):
        assert after[view][0] is before[view][0]  # unchanged data: the same figure object, nothing rebuilt
    from prunekit import viz

    full = store.metrics(rid)
    assert after["loss"][0].to_dict() == viz.loss_figure(full).to_dict()  # identical to building from scratch
    assert after["macs"][0].to_dict() == viz.macs_figure(full, 0.5).to_dict()
    sup.clear_figure_cache()


def test_gate_and_trend_figures_follow_the_latest_layer_step(workspace):
    sup.clear_figure_cache()
    store = RunStore(workspace)
    rid = _fill_run(store, method="crisp")
    snap = sup.live_metrics(store, rid)
    gates, trends = sup.gate_figures(store, snap), sup.trend_figures(store, snap)
    assert set(gates) == {"violin", "heat"} and set(trends) == {"confidence", "flip_rate"}
    assert sup.gate_figures(store, snap) is gates and sup.trend_figures(store, snap) is trends
    store.log_layers(rid, 40, 0, [{"layer": "layer1.0", "name": "confidence", "value": 0.9}])
    store.flush()
    assert sup.trend_figures(store, snap) is not trends
    assert sup.gate_figures(store, snap) is gates  # no new gate values
    sup.clear_figure_cache()


def test_checkpoint_has_gates_reads_the_state_dict_only(tmp_path):
    import torch

    gated, dense, broken = tmp_path / "g.pt", tmp_path / "d.pt", tmp_path / "x.pt"
    torch.save({"model": {"model.conv1.weight": torch.zeros(2), "gates.0.keep": torch.ones(2, dtype=torch.bool)}},
               gated)
    torch.save({"model": {"conv1.weight": torch.zeros(2), "bn1.running_mean": torch.zeros(2)}}, dense)
    broken.write_bytes(b"not a checkpoint")
    assert sup.checkpoint_has_gates(gated) is True
    assert sup.checkpoint_has_gates(dense) is False
    assert sup.checkpoint_has_gates(broken) is True  # load_run reports the real error
    v = sup.file_version(dense)
    torch.save({"model": {"gates.3.keep": torch.ones(1, dtype=torch.bool)}}, dense)  # rewritten in place (last.pt)
    import os

    os.utime(dense, ns=(v[0] + 10**9, v[0] + 10**9))
    assert sup.file_version(dense) != v and sup.checkpoint_has_gates(dense) is True
    assert sup.file_version(tmp_path / "missing.pt") is None


def test_app_threads_limits_torch_and_restores_after_the_last_user():
    import torch

    before = torch.get_num_threads()
    with sup.app_threads(1):
        assert torch.get_num_threads() == 1
        with sup.app_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1  # the outer user still holds it
    assert torch.get_num_threads() == before


def test_settle_process_freezes_once(monkeypatch):
    import gc

    frozen = []
    from prunekit.app_support import _process

    monkeypatch.setattr(_process, "_SETTLED", False)
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(1))
    monkeypatch.setattr(_process.atexit, "register", lambda fn: None)
    assert sup.settle_process() is True
    assert sup.settle_process() is False
    assert frozen == [1]


def test_explore_skips_loading_a_checkpoint_without_gates(workspace, monkeypatch):
    import torch

    store = RunStore(workspace)
    rid = _fill_run(store)
    ckpt = workspace / "last.pt"
    torch.save({"model": {"conv1.weight": torch.zeros(2)}}, ckpt)
    store.add_checkpoint(rid, 30, 1, ckpt)

    def no_load(*a, **k):
        raise AssertionError("a checkpoint without gates must not be loaded")

    monkeypatch.setattr(sup, "cached_run", no_load)
    at = _app("pages/3_Explore.py").run()
    assert not at.exception, at.exception
    assert any("has no gates" in w.value for w in at.warning)
    at.radio(key="ex_axis").set_value("latency, batch 1 (after collapse)").run()  # the chart's fragment only
    assert not at.exception
    assert any("Collapse & compare page first" in i.value for i in at.info)


def test_live_page_on_a_running_run_draws_every_tab(workspace):
    import os

    store = RunStore(workspace)
    rid = _fill_run(store, method="crisp", status="running")
    store.set_pid(rid, os.getpid())  # alive, so the store keeps it running
    at = _app("pages/2_Live.py").run()
    assert not at.exception, at.exception
    assert store.get_run(rid).status == "running"
    assert "status: running · step 30" in at.get("progress")[0].proto.text
    assert len(at.get("plotly_chart")) == 8  # every tab drawn; only the open one keeps refreshing
    at.run()  # a second run reuses the cached figures
    assert not at.exception and len(at.get("plotly_chart")) == 8


def test_bench_markdown_reports_load_and_both_rerender_clocks():
    from prunekit.bench.app import markdown_table

    res = {"first_chart_median_s": 1.2, "rerender_median_s": 0.21, "rerender_wall_median_s": 0.33,
           "throughput_ratio": 0.9, "throughput_app_open": 90.0, "throughput_headless": 100.0, "cpu_count": 2,
           "load_average_start": [3.1, 4.0, 5.2],
           "passed": {"first_chart_s": True, "rerender_median_s": True, "throughput_ratio": True}}
    md = markdown_table(res)
    assert "0.21 s (Playwright wall clock 0.33 s)" in md
    assert "[3.1, 4.0, 5.2]" in md and "0.90×" in md
    assert "what-if" not in md  # an older result without the what-if phase still renders
    res.update(what_if_median_s=0.7, collapse_app_s=30.0, collapse_cli_s=12.0, collapse_app_over_cli=2.5)
    res["passed"].update(what_if_median_s=True, collapse_app_over_cli=False)
    md = markdown_table(res)
    assert "| what-if step while a run trains (median, key press → app idle) | 0.70 s | ≤ 1 s | yes |" in md
    assert "2.50× (30.0 s / 12.0 s) | ≤ 2× | no |" in md


def test_what_if_slider_starts_at_the_methods_own_threshold(workspace):
    """CRISP keeps gates above its threshold (0.25 by default, 0.3 here), L0 keeps eval gates above 0: the what-if
    slider starts there, not at an arbitrary 0.5 (which showed a 62 % run at 11 %)."""
    store = RunStore(workspace)
    cfg = RunConfig(model="resnet20", dataset="shapes", method="crisp", method_options={"threshold": 0.3},
                    train=TrainConfig(epochs=1))
    crisp = store.create_run(cfg.to_dict())
    store.set_status(crisp, "done", result={"acc/test": 0.6})
    l0 = store.create_run(cfg.replace(method="l0", method_options={}).to_dict())
    store.set_status(l0, "done", result={"acc/test": 0.6})
    store.flush()
    at = _app("pages/3_Explore.py").run()
    assert not at.exception, at.exception
    for rid, own in ((crisp, 0.3), (l0, 0.0)):
        at.selectbox(key="ex_run").set_value(rid).run()
        assert at.slider(key=f"ex_threshold_{rid}").value == pytest.approx(own)
        assert any(f"own rule: keep a channel iff its gate > {own:g}" in c.value for c in at.caption)


# -- issue 20: what a new user trips on -------------------------------------------------------------------------
def _finished(store: RunStore, *, acc: float, own: float | None, stored_warnings: list[str] | None = None,
              name: str | None = None) -> str:
    """A done CRISP run (target 0.5) whose result is run_experiment's: metrics, dataset, config, method report."""
    cfg = RunConfig(model="resnet20", dataset="shapes", method="crisp", method_options={"target_macs": 0.5},
                    train=TrainConfig(epochs=2), name=name)
    rid = store.create_run(cfg.to_dict())
    result = {"metrics": {"acc/test": acc, "macs_ratio/hard": 0.5}, "dataset": {"num_classes": 10},
              "config": cfg.to_dict(), "method_report": {} if own is None else {"relaxation_macs_ratio": own}}
    if stored_warnings is not None:
        result["warnings"] = stored_warnings
    store.set_status(rid, "done", result=result)
    store.flush()
    return rid


def test_runs_table_and_live_page_warn_about_a_run_that_learned_nothing(workspace):
    """A 2-epoch CRISP run ended "done" at 10 % (chance) with no warning in the app: the Runs table, the selected
    run and the Live page now say so, with what to change."""
    store = RunStore(workspace)
    fine = _finished(store, acc=0.62, own=0.5, name="fine")
    stored = _finished(store, acc=0.62, own=0.5, stored_warnings=["a stored warning"], name="stored")
    chance = _finished(store, acc=0.10, own=0.9, name="chance")  # stored before warnings existed: computed here
    at = _app("pages/1_Runs.py").run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value.set_index("id")
    assert "near chance" in table.loc[chance, "warnings"] and "own rule kept 0.90" in table.loc[chance, "warnings"]
    assert table.loc[stored, "warnings"] == "a stored warning" and table.loc[fine, "warnings"] == ""
    at.selectbox(key="runs_select").set_value(chance).run()
    warned = [w.value for w in at.warning]
    assert any("near chance" in w and "train longer" in w for w in warned), warned
    at = _app("pages/2_Live.py").run()
    at.selectbox(key="live_run").set_value(chance).run()
    assert not at.exception, at.exception
    assert any("near chance" in w.value for w in at.warning)
    at.selectbox(key="live_run").set_value(fine).run()
    assert not any("near chance" in w.value for w in at.warning)


def test_runs_table_shows_no_none_or_nan(workspace):
    store = RunStore(workspace)
    _fill_run(store, status="failed")  # no name, an error
    store.create_run(RunConfig(model="resnet20", dataset="shapes", method="dense").to_dict(), status="stopped")
    _fill_run(store)  # no error
    store.flush()
    at = _app("pages/1_Runs.py").run()
    table = at.dataframe[0].value
    cells = table.drop(columns=["progress"]).to_numpy().ravel().tolist()
    assert all(isinstance(c, str) for c in cells)
    assert not {"None", "nan", "NaN"} & set(cells)
    assert "—" in set(table["acc/test"]) and "80.0%" in set(table["acc/test"])
    assert not any(("None" in o or "nan" in o) for o in at.selectbox(key="runs_select").options)


def test_live_page_on_a_finished_run_reads_gates_as_decided(workspace):
    store = RunStore(workspace)
    _fill_run(store, method="crisp")
    at = _app("pages/2_Live.py").run()
    text = _texts(at)
    assert "still undecided" not in text and "The run has ended" in text
    assert "keep iff gate > 0.25" in text  # CRISP's own threshold, not 0.5


def test_home_keeps_its_start_button_after_the_first_run(workspace, monkeypatch):
    store = RunStore(workspace)
    monkeypatch.setattr(sup, "start", lambda cfg, ws=None: store.create_run(cfg.to_dict()))
    at = _app("Home.py").run()
    at.button(key="start_default").click().run()
    assert not at.exception, at.exception
    at = _app("Home.py").run()  # a new session once the default run exists
    assert at.button(key="start_default") and "Latest default run" in _texts(at)
    at.button(key="start_default").click().run()
    assert len(store.list_runs()) == 2


def _submit(at: AppTest) -> AppTest:
    at.button[0].click()  # the form's submit button
    return at.run()


def test_runs_form_checks_the_dataset_before_starting(workspace, monkeypatch, tmp_path):
    """cifar100 without its files was accepted, started, and failed in the background with an error naming CLI
    flags; now the form says where it looked and which field to fill, and starts nothing."""
    started = []
    monkeypatch.setattr(sup, "start", lambda cfg, ws=None: started.append(cfg) or "r-test")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path / "data"))
    at = _app("pages/1_Runs.py").run()
    assert at.text_input(key="form_data_root").value == str(tmp_path / "data")  # defaults to $PRUNEKIT_DATA
    assert "imagefolder: your own images (folder below)" in at.selectbox(key="form_dataset").options
    at.selectbox(key="form_dataset").set_value("cifar100")
    at = _submit(at)
    assert not at.exception, at.exception
    errors = " ".join(e.value for e in at.error)
    assert "'cifar100' is not on this machine" in errors and "Data root" in errors and "--data-root" not in errors
    assert not started
    # the user's own images: imagefolder with the folder from its field, and the data root goes to the config
    from PIL import Image

    folder = tmp_path / "pets"
    for cls in ("cat", "dog"):
        (folder / cls).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (12, 12), (40 * i, 100 if cls == "cat" else 200, 0)).save(folder / cls / f"{i}.png")
    at.selectbox(key="form_dataset").set_value(sup.IMAGEFOLDER)
    at = _submit(at)
    assert any("imagefolder needs a folder" in e.value for e in at.error) and not started
    at.text_input(key="form_image_folder").set_value(str(folder))
    at.text_input(key="form_data_root").set_value(str(tmp_path / "elsewhere"))
    at = _submit(at)
    assert not at.exception, at.exception
    assert [c.dataset for c in started] == [f"imagefolder:{folder}"]
    assert started[0].data_root == str(tmp_path / "elsewhere")


def test_runs_form_refuses_zero_epochs_with_a_message(workspace, monkeypatch):
    started = []
    monkeypatch.setattr(sup, "start", lambda cfg, ws=None: started.append(cfg) or "r-test")
    at = _app("pages/1_Runs.py").run()
    at.number_input(key="form_epochs").set_value(0)
    at = _submit(at)
    assert not at.exception, at.exception
    assert any("epochs is 0" in e.value for e in at.error) and not started


def test_resume_is_off_for_runs_that_cannot_resume(workspace, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    store = RunStore(workspace)
    ok = _fill_run(store, status="failed")
    missing = store.create_run(RunConfig(model="resnet20", dataset="cifar100", method="dense").to_dict())
    store.set_status(missing, "failed", error="dataset 'cifar100' not found")
    done = _fill_run(store)
    store.flush()
    at = _app("pages/1_Runs.py").run()
    for rid, off in ((ok, False), (missing, True), (done, True)):
        at.selectbox(key="runs_select").set_value(rid).run()
        assert not at.exception, at.exception
        assert at.button(key="btn_resume").disabled is off, rid
    at.selectbox(key="runs_select").set_value(missing).run()
    assert "Cannot resume" in at.button(key="btn_resume").help and "not on this machine" in _texts(at)


# -- issue 20 items 8 and 9: the Model page and layer sensitivity -------------------------------------------------
def _chart_specs(at: AppTest) -> list[str]:
    """Each chart's title and point labels as text (the spec's JSON escapes "·" and "→")."""
    import json

    out = []
    for c in at.get("plotly_chart"):
        spec = json.loads(c.proto.spec)
        title = (spec.get("layout", {}).get("title") or {}).get("text", "")
        labels = [str(t) for d in spec.get("data", []) for t in (d.get("text") or [])]
        out.append("\n".join([title, *labels]))
    return out


def test_model_page_draws_the_groups_with_live_keep_ratios_and_the_collapsed_network(workspace):
    store = RunStore(workspace)
    rid = _fill_run(store, method="crisp")
    # the run's latest gate rows, named by each group's root layer as the training loop logs them
    store.log_layers(rid, 40, 1, [
        {"layer": "layer1.0.conv1", "name": "gate_values", "value": 0.5, "data": [0.9] * 4 + [0.1] * 12},
        {"layer": "layer1.0.conv1", "name": "keep_ratio", "value": 1.0},
        {"layer": "conv1", "name": "keep_ratio", "value": 0.5},
    ])
    store.flush()
    at = _app("pages/5_Model.py").run()
    assert not at.exception, at.exception
    (live,) = [s for s in _chart_specs(at) if "one colour per group" in s]
    assert "layer1.0.conv1 [16] · G1 keep 25%" in live  # 4 of 16 gates above CRISP's threshold
    assert "conv1 [16] · G0 keep 50%" in live
    assert "removed together" in _texts(at)
    groups = at.dataframe[0].value.set_index("root")
    assert groups.loc["layer1.0.conv1", "keep"] == "25%" and groups.loc["conv1", "kind"] == "residual sum"
    assert any("not been collapsed yet" in i.value for i in at.info)

    store.add_collapse_result(rid, {"widths": {"layer1.0.conv1": [16, 4], "layer1.1.conv1": [16, 0],
                                               "layer1.1.conv2": [16, 0]},
                                    "removed_blocks": ["layer1.1.conv1", "layer1.1.conv2"], "step": 40})
    at = _app("pages/5_Model.py").run()
    assert not at.exception, at.exception
    (slim,) = [s for s in _chart_specs(at) if "Network after collapse" in s]
    assert "layer1.0.conv1 [16→4]" in slim and "layer1.1.conv1 [16→removed]" in slim
    assert "Collapse of step 40" in _texts(at) and "2 were removed" in _texts(at)


def test_model_page_says_why_it_cannot_draw_an_unknown_model(workspace):
    store = RunStore(workspace)
    rid = store.create_run({"model": "nosuch", "dataset": "shapes", "method": "dense"})
    store.set_status(rid, "done")
    at = _app("pages/5_Model.py").run()
    assert not at.exception, at.exception
    assert any("Cannot draw the network" in w.value and "nosuch" in w.value for w in at.warning)


def _gateless_checkpoint(store: RunStore, rid: str, workspace: Path) -> Path:
    import torch

    ckpt = workspace / f"{rid}.pt"
    torch.save({"model": {"conv1.weight": torch.zeros(2)}}, ckpt)
    store.add_checkpoint(rid, 30, 1, ckpt)
    return ckpt


def test_explore_shows_stored_layer_sensitivity_beside_the_what_if(workspace):
    store = RunStore(workspace)
    rid = _fill_run(store)
    ckpt = _gateless_checkpoint(store, rid, workspace)
    settings = sup.sensitivity_settings(store, rid, ckpt)
    assert settings["step"] == 30 and settings["fractions"][0] == 0.1 and settings["fractions"][-1] == 0.9
    rows = [{"group": g, "size": 16, "fraction": f, "removed": int(16 * f), "accuracy": 0.8 - d * f, "drop": d * f}
            for g, d in (("conv1", 0.6), ("layer1.0.conv1", 0.05)) for f in settings["fractions"]]
    store.put_analysis(rid, "sensitivity", settings, {"rows": rows, "attrs": {"baseline": 0.8, "ranking": "l2"}})
    at = _app("pages/3_Explore.py").run()
    assert not at.exception, at.exception
    assert any("Layer sensitivity: accuracy drop" in s for s in _chart_specs(at))
    assert "conv1 costs the most (30.0 points)" in _texts(at)
    assert any("has no gates" in w.value for w in at.warning)  # the what-if beside it still answers


def test_explore_computes_layer_sensitivity_in_the_background_once(workspace, monkeypatch):
    import threading

    import prunekit.app_support._sensitivity as sens

    store = RunStore(workspace)
    rid = _fill_run(store)
    _gateless_checkpoint(store, rid, workspace)
    release, calls = threading.Event(), []

    def compute(ws, checkpoint, settings, job=None):
        calls.append(checkpoint)
        job.progress = 0.4
        assert release.wait(30)
        return {"rows": [{"group": "conv1", "size": 16, "fraction": f, "removed": 1, "accuracy": 0.5, "drop": 0.3}
                         for f in settings["fractions"]], "attrs": {"baseline": 0.8, "ranking": "l2"}}

    monkeypatch.setattr(sens, "compute_sensitivity", compute)
    at = _app("pages/3_Explore.py").run()
    at.button(key=f"ex_sensitivity_{rid}").click().run()
    assert not at.exception, at.exception
    assert "Computing layer sensitivity… 40%" in at.get("progress")[0].proto.text
    at.run()  # a rerun while it works starts nothing new
    release.set()
    job = sup.sensitivity_job(str(workspace), rid, sup.sensitivity_settings(store, rid, store.latest_checkpoint(rid)))
    job.thread.join(30)
    assert job.done and job.error is None and len(calls) == 1
    at.run()
    assert not at.exception, at.exception
    assert any("Layer sensitivity: accuracy drop" in s for s in _chart_specs(at))


def test_background_job_reports_errors_and_restarts_only_after_one():
    import threading

    key = ("test", threading.get_ident(), id(object()))
    gate = threading.Event()

    def fail(job):
        gate.wait(10)
        raise sup.ConfigError("no data here")

    job = sup.background_job(key, fail)
    assert job.running and sup.background_job(key, fail) is job  # one job per key while it runs
    gate.set()
    job.thread.join(10)
    assert job.done and isinstance(job.error, sup.ConfigError) and sup.find_job(key) is job
    again = sup.background_job(key, lambda j: setattr(j, "progress", 1.0))
    again.thread.join(10)
    assert again is not job and again.error is None and again.progress == 1.0
    assert sup.background_job(key, fail) is again  # finished without error: kept
