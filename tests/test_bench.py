"""Benchmark suites' plumbing on tiny budgets: pareto/latency reports, the Torch-Pruning baseline, collapse, plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import prunekit as pk
from prunekit.bench import get_suite
from prunekit.errors import ConfigError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def _tiny_resnet20(in_channels: int = 1) -> torch.nn.Module:
    return pk.create_model("resnet20", num_classes=10, in_channels=in_channels)


# -- Torch-Pruning baseline ------------------------------------------------------------------------------
@pytest.mark.parametrize("pruner", ["groupnorm", "magnitude"])
def test_tp_baseline_reaches_macs_target_on_resnet20(pruner):
    from prunekit.bench.torch_pruning import prune_to_macs_

    model = _tiny_resnet20()
    x = torch.randn(1, 1, 16, 16)
    report = prune_to_macs_(model, x, 0.5, pruner, iterative_steps=50)
    ratio = pk.count_macs(model, x) / report["macs_before"]
    assert report["macs_ratio"] == pytest.approx(ratio)
    assert 0.45 <= ratio <= 0.5  # Torch-Pruning's rule: the first step at or under the target
    assert model(x).shape == (1, 10)


def test_conv_linear_macs_agrees_with_flop_counter():
    from prunekit.bench.torch_pruning import conv_linear_macs

    model = _tiny_resnet20(3)
    x = torch.randn(2, 3, 16, 16)
    assert conv_linear_macs(model, x) == pk.count_macs(model, x)


def test_tp_method_prunes_mid_run_and_keeps_training():
    from prunekit.bench.torch_pruning import TPMethod
    from prunekit.train.config import TrainConfig
    from prunekit.train.loop import Trainer

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g))
    loaders = (DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))
    model = _tiny_resnet20()
    x = data.tensors[0][:2]
    dense_macs = pk.count_macs(model, x[:1])
    method = TPMethod(pruner="groupnorm", target_macs=0.5, iterative_steps=20)
    model = method.prepare(model, x)
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.01, device="cpu", log_every=1)
    result = Trainer(model, loaders, cfg, method).fit()
    assert result["status"] == "completed" and result["steps"] == 4
    assert method.report["macs_ratio"] <= 0.5
    assert pk.count_macs(model, x[:1]) / dense_macs <= 0.5
    # the optimizer trains the pruned parameters, not the stale pre-pruning ones
    opt_params = {id(p) for grp in method.optimizer.param_groups for p in grp["params"]}
    assert opt_params == {id(p) for p in model.parameters()}


def test_tp_method_refuses_bad_options():
    from prunekit.bench.torch_pruning import TPMethod

    with pytest.raises(ConfigError, match="target_macs"):
        TPMethod(target_macs=1.5)
    with pytest.raises(ConfigError, match="pruner"):
        TPMethod(pruner="hrank")


# -- meeting targets without training --------------------------------------------------------------------
def test_dpp_keep_and_l2_prune_meet_the_target():
    from prunekit.bench.pareto.targets import l2_prune_to_macs
    from prunekit.methods.dpp import keep_for_target

    model = _tiny_resnet20()
    x = torch.randn(1, 1, 16, 16)
    dense = pk.count_macs(model, x)
    keep, ratio = keep_for_target(model, x, 0.5)
    assert 0.5 < keep < 0.9 and abs(ratio - 0.5) < 0.05
    slim, frac = l2_prune_to_macs(model, x, int(0.5 * dense))
    assert 0 < frac < 1
    assert 0.4 < pk.count_macs(slim, x) / dense <= 0.5
    assert pk.count_macs(model, x) == dense  # the trained model is left alone


# -- aggregation, tables, plots ---------------------------------------------------------------------------
def _row(method, target, acc, seed=0, macs=0.5, val=None):
    return {"dataset": "d", "method": method, "target": target, "seed": seed, "acc_val": acc if val is None else val,
            "acc_test": acc, "macs_ratio": macs, "macs": 100, "params": 10, "latency_ms_b1": 1.0,
            "latency_ms_b32": 10.0 * macs}


def test_summary_selects_on_val_and_averages_seeds():
    from prunekit.bench.pareto.report import summarize

    rows = [_row("l1", 0.5, 0.80, seed=0), _row("l1", 0.5, 0.90, seed=1),
            {**_row("sdprun", 0.5, 0.99, val=0.1), "options": {"c": 1}},  # best test, worst val: not chosen
            {**_row("sdprun", 0.5, 0.70, val=0.8), "options": {"c": 2}}]
    s = {x["method"]: x for x in summarize(rows)}
    assert s["l1"]["acc_test"] == pytest.approx(0.85) and s["l1"]["acc_test_std"] == pytest.approx(0.0707, abs=1e-3)
    assert s["l1"]["seeds"] == 2
    assert s["sdprun"]["acc_test"] == pytest.approx(0.70) and s["sdprun"]["options"] == {"c": 2}


def test_markdown_says_when_prunekit_loses_and_latency_ratios():
    from prunekit.bench.pareto import PRESETS
    from prunekit.bench.pareto.report import latency_rows, pareto_markdown, summarize

    summary = summarize([_row("dense", None, 0.9, macs=1.0), _row("l1", 0.5, 0.7), _row("tp-groupnorm", 0.5, 0.8, macs=0.25)])
    md = pareto_markdown(summary, PRESETS["smoke"], "smoke")
    assert "**loses to**" in md and "tp-groupnorm" in md and "-10.00 points" in md
    lat = latency_rows(summary)
    assert [r["method"] for r in lat] == ["l1"]
    assert lat[0]["vs_tp-groupnorm_b32"] == pytest.approx(2.0)


def test_plots_write_offline_html_and_svg(tmp_path):
    from prunekit.bench.plot import svg_scatter, write_pareto_plots

    svg = svg_scatter({"a": [(0.5, 80.0), (0.3, 70.0)], "b": [(0.7, 85.0)]}, "t", "x", "y")
    assert svg.startswith("<svg") and svg.count("<circle") == 3 + 2  # points + legend markers
    files = write_pareto_plots([_row("dense", None, 0.9, macs=1.0), _row("l1", 0.5, 0.7)], tmp_path, "t")
    names = {f.name for f in files}
    assert {"pareto_plots.html", "pareto_d.svg", "latency_d.svg"} <= names
    page = (tmp_path / "pareto_plots.html").read_text()
    assert '<script src="http' not in page and "Plotly.newPlot" in page
    assert len(page) > 1_000_000  # plotly.js embedded: opens offline


def test_pareto_refuses_bad_settings(tmp_path):
    fn = get_suite("pareto")
    with pytest.raises(ConfigError, match="preset"):
        fn(tmp_path, preset="weekend")
    with pytest.raises(ConfigError, match="methods"):
        fn(tmp_path, methods=("magic",))
    with pytest.raises(ConfigError, match="targets"):
        fn(tmp_path, targets=(1.5,))


def test_interleaved_latency_ranks_networks_and_restores_state():
    class Slow(torch.nn.Module):  # same output, much more work
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 64, 3, padding=1)

        def forward(self, x):
            for _ in range(8):
                y = self.conv(x)
            return y.mean()

    fast, slow = torch.nn.Conv2d(3, 4, 1).train(), Slow().train()
    threads = torch.get_num_threads()
    lat = pk.measure_latency_interleaved({"fast": fast, "slow": slow}, torch.randn(1, 3, 16, 16), (1, 4),
                                         rounds=3, repeats=2, threads=1)
    assert set(lat) == {"fast", "slow"} and set(lat["fast"]) == {1, 4}
    assert lat["slow"][4] > 3 * lat["fast"][4] and lat["slow"][1] > lat["fast"][1] > 0
    assert fast.training and slow.training and torch.get_num_threads() == threads
    with pytest.raises(ConfigError, match="rounds"):
        pk.measure_latency_interleaved({"fast": fast}, torch.randn(1, 3, 4, 4), rounds=0)


def test_pareto_journal_resumes_and_extends_only_on_the_same_budget(tmp_path):
    from prunekit.bench.pareto.journal import JOURNAL, journal, open_journal

    grid = (("l1", ((), (("mode", "iterative"),))),)
    settings = {"epochs": 1, "methods": ("l1", "l0"), "datasets": ("d",), "seeds": (0,), "grid": grid}
    assert open_journal(tmp_path, settings, resume=False) == ([], set())

    def row(method, seed, **kw):
        return {"dataset": "d", "method": method, "seed": seed, "target": 0.5, **kw}

    journal(tmp_path, "d", "dense", 0, [{}], [row("dense", 0, acc_test=0.9)])
    journal(tmp_path, "d", "l1", 0, [{}, {"mode": "iterative"}], [row("l1", 0, acc_test=0.5)])
    journal(tmp_path, "d", "l0", 0, [{}], [row("l0", 0, error="boom")])
    rows, done = open_journal(tmp_path, settings, resume=True)
    assert done == {("d", "dense", 0), ("d", "l1", 0)} and len(rows) == 2  # the failed method is run again
    # extending: more seeds keep seed 0's trainings; a method left out is not reported
    rows, done = open_journal(tmp_path, {**settings, "seeds": (0, 1), "methods": ("l0",)}, resume=True)
    assert done == {("d", "dense", 0)}
    # a method whose variants changed is trained again, the others are kept
    rows, done = open_journal(tmp_path, {**settings, "grid": ()}, resume=True)
    assert done == {("d", "dense", 0)}
    with pytest.raises(ConfigError, match=r"other settings \(epochs: 1 -> 2\)"):
        open_journal(tmp_path, {**settings, "epochs": 2}, resume=True)
    assert open_journal(tmp_path, settings, resume=False) == ([], set())  # a fresh start truncates
    assert len((tmp_path / JOURNAL).read_text().splitlines()) == 1


# -- the suites end to end, tiny ---------------------------------------------------------------------------
@pytest.mark.slow
def test_pareto_smoke_tiny_writes_rows_and_reports(tmp_path, monkeypatch):
    if not FASHION_DIR.is_dir():
        pytest.skip(f"Fashion-MNIST not installed at {FASHION_DIR} (apt-get install dataset-fashion-mnist)")
    from prunekit.bench.pareto import bench_pareto

    r = bench_pareto(tmp_path, "smoke", methods=("l1", "tp-magnitude", "bridgeout"), datasets=("fashion-mnist",), limit=64,
                     max_steps_per_epoch=1, latency_repeats=1, latency_min_seconds=0.0)
    rows = {row["method"]: row for row in r["rows"]}
    assert set(rows) == {"dense", "l1", "tp-magnitude", "bridgeout", "bridgeout+bn"}
    for row in rows.values():
        assert "error" not in row, row
        assert 0 <= row["acc_test"] <= 1 and row["macs"] > 0 and row["latency_ms_b1"] > 0
    assert rows["dense"]["macs_ratio"] == 1.0
    for m in ("l1", "tp-magnitude", "bridgeout", "bridgeout+bn"):
        assert 0.4 < rows[m]["macs_ratio"] <= 0.55
    assert rows["bridgeout"]["macs"] == rows["bridgeout+bn"]["macs"]  # one network, statistics re-estimated
    data = json.loads((tmp_path / "pareto.json").read_text())
    assert data["preset"] == "smoke" and data["machine"]["torch"] == torch.__version__
    assert "| l1 | 0.5 |" in (tmp_path / "pareto.md").read_text()
    lat = json.loads((tmp_path / "latency.json").read_text())["rows"]
    assert lat[0]["method"] == "l1" and lat[0]["vs_tp-magnitude_b32"] > 0
    assert (tmp_path / "pareto_plots.html").is_file()
    assert all(row["latency_source"] == "interleaved" for row in r["rows"])
    assert {row["variant"] for row in r["rows"] if row["method"] == "tp-magnitude"} == {0, 1}  # local and global
    l1 = [row for row in r["rows"] if row["method"] == "l1"]  # pruned once or in stages, chosen on validation
    assert [row["options"].get("mode") for row in l1] == [None, "iterative"]
    assert sum(row["selected"] for row in l1) == 1
    # an interrupted run resumes from its journal: nothing is trained again
    monkeypatch.setattr("prunekit.bench.pareto.suite._rows_for", lambda *a, **k: pytest.fail("retrained on resume"))
    again = bench_pareto(tmp_path, "smoke", methods=("l1", "tp-magnitude", "bridgeout"), datasets=("fashion-mnist",), limit=64,
                         max_steps_per_epoch=1, latency_repeats=1, latency_min_seconds=0.0, resume=True)
    assert [x["acc_test"] for x in again["rows"]] == [x["acc_test"] for x in r["rows"]]
    assert {x["latency_source"] for x in again["rows"]} == {"inline"}


@pytest.mark.slow
def test_collapse_suite_on_one_tiny_model_writes_its_files(tmp_path):
    r = get_suite("collapse")(tmp_path, models=["resnet20"])
    row = r["models"]["resnet20"]
    assert row["prunekit"]["ok"] and row["prunekit"]["max_diff"] < 1e-3
    assert row["prunekit"]["macs_after"] < row["prunekit"]["macs_before"]
    assert row["torch_pruning"]["ok"]
    assert (tmp_path / "collapse.json").is_file() and "resnet20" in (tmp_path / "collapse.md").read_text()


@pytest.mark.slow
def test_collapse_latency_preset_times_the_inference_form_and_onnx_runtime(tmp_path, one_thread):
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is the optional extra prunekit[onnx]")
    r = get_suite("collapse")(tmp_path, "latency", models=["resnet20"], torch_pruning=False)
    p = r["models"]["resnet20"]["prunekit"]
    for key in ("speedup_b64", "speedup_inf_b64", "speedup_ort_b1", "speedup_ort_b64"):
        assert p[key] > 0, key
    # the inference forms of dense and slim were both timed: the slim one has fewer MACs, so it is faster
    assert p["latency_ms_ort"]["after"][64] < p["latency_ms_ort"]["before"][64]
    md = (tmp_path / "collapse.md").read_text()
    assert "ONNX Runtime: speedup÷MACs b1" in md and "BatchNorm folded" in md


def test_error_reason_is_one_cell_even_for_an_empty_message():
    from prunekit.bench import error_reason
    from prunekit.bench.collapse import _guard

    assert error_reason(RuntimeError("first line\nsecond")) == "RuntimeError: first line"
    assert error_reason(KeyError()) == "KeyError: "
    assert len(error_reason(ValueError("x" * 500))) == len("ValueError: ") + 200

    def boom(*_):
        raise AssertionError  # no message: the guard used to fail on it itself

    assert _guard(boom) == {"ok": False, "error": "AssertionError: "}


def test_cli_options_reach_the_suite_and_unknown_ones_are_refused(tmp_path):
    from prunekit.bench import run_suite
    from prunekit.cli import build_parser
    from prunekit.cli.bench import options

    args = build_parser().parse_args(["bench", "pareto", "--methods", "l1, crisp", "--datasets", "cifar10",
                                      "--seeds", "0,1", "--set", "targets=[0.3, 0.5]", "--set", "limit=64",
                                      "--set", "model=resnet56"])
    assert options(args) == {"methods": ("l1", "crisp"), "datasets": ("cifar10",), "seeds": (0, 1),
                             "targets": (0.3, 0.5), "limit": 64, "model": "resnet56"}
    for bad in (["--seeds", "zero"], ["--set", "epochs"]):
        with pytest.raises(ConfigError, match="--seeds|--set"):
            options(build_parser().parse_args(["bench", "pareto", *bad]))
    with pytest.raises(ConfigError, match="'collapse' does not take methods"):
        run_suite("collapse", tmp_path, methods=("l1",))
    with pytest.raises(ConfigError, match="'overhead' does not take resume"):
        run_suite("overhead", tmp_path, resume=True)
    with pytest.raises(ConfigError, match="targets"):  # a preset field goes through to the suite's own check
        run_suite("pareto", tmp_path, "smoke", targets=(1.5,))


@pytest.mark.slow
def test_effects_quick_judges_each_row_from_its_own_numbers(tmp_path):
    """The quick budget decides nothing (rows may fail); the verdicts must follow from the measured numbers."""
    import json

    from prunekit.bench import run_suite
    from prunekit.bench.effects import TARGET

    out = run_suite("effects", tmp_path, "quick", methods=("crisp", "growing", "dpp", "bridgeout"))
    saved = json.loads((tmp_path / "effects.json").read_text())
    rows = {r["effect"].split(":")[0]: r for r in saved["rows"]}
    assert set(rows) == {"crisp", "growing", "dpp", "bridgeout"}
    dense = saved["runs"]["dense"]["acc"]
    for m in ("crisp", "growing"):
        rep, r = saved["runs"][m]["method_report"], rows[m]
        ok = (abs(rep["relaxation_macs_ratio"] - TARGET) <= 0.05 and rep["calibration_flips"] <= 0.10
              and saved["runs"][m]["acc"] >= dense - 0.02)
        if m == "growing":
            ok = ok and r["blocks_seed"] != r["blocks_final"]
        assert r["pass"] == ok
    assert rows["dpp"]["pass"] == (saved["runs"]["dpp"]["method_report"]["mask_moved"] >= 0.25)
    bo, sgd = rows["bridgeout"]["bridgeout_curve"], rows["bridgeout"]["sgd_curve"]
    assert rows["bridgeout"]["pass"] == all(bo[f] > sgd[f] for f in ("0.4", "0.6"))
    md = (tmp_path / "effects.md").read_text()
    assert md == out["markdown"] and md.count("PASS") + md.count("FAIL") == 4
    assert saved["passed"] == all(r["pass"] for r in saved["rows"])


def test_pareto_table_shows_what_the_method_decided_itself():
    from prunekit.bench.pareto import PRESETS
    from prunekit.bench.pareto.report import pareto_markdown, summarize

    crisp = {**_row("crisp", 0.5, 0.8), "relaxation_macs_ratio": 0.62, "calibration_flips": 0.125}
    summary = summarize([_row("dense", None, 0.9, macs=1.0), crisp, _row("l1", 0.5, 0.7)])
    md = pareto_markdown(summary, PRESETS["smoke"], "smoke")
    head = next(line for line in md.splitlines() if line.startswith("| method"))
    assert "| own rule | calib. flips |" in head
    crisp_line = next(line for line in md.splitlines() if line.startswith("| crisp"))
    assert "| 0.620 | 12.5% |" in crisp_line
    l1_line = next(line for line in md.splitlines() if line.startswith("| l1"))
    assert "| 0.500 | - | - |" in l1_line  # no own-rule numbers: shown as missing, not as zero


def test_effects_refuses_unknown_preset_fields_and_methods(tmp_path):
    from prunekit.bench.effects import bench_effects

    with pytest.raises(ConfigError, match="no preset field epoch"):
        bench_effects(tmp_path, "quick", methods=("crisp",), epoch=3)
    with pytest.raises(ConfigError, match="got slimming"):
        bench_effects(tmp_path, "quick", methods=("slimming",))
    assert not list(tmp_path.iterdir())  # refused before any training or file
