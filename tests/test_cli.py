"""The ``prunekit`` command: listing, a tiny end-to-end train + eval, help texts, and one-line errors."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunekit.cli import build_parser, main
from prunekit.cli._common import HelpFormatter, parse_kv
from prunekit.cli.train import summary_rows
from prunekit.errors import ConfigError
from prunekit.methods import list_methods

# A few hundred tiny samples and at most two steps: seconds on a shared 2-core CPU.
TINY = ["--data-opt", "num_samples=128", "--data-opt", "num_test=32", "--epochs", "1", "--max-steps-per-epoch", "2",
        "--batch-size", "16", "--device", "cpu", "--no-progress"]


@pytest.fixture(autouse=True)
def _restore_torch_state():
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    yield
    torch.set_rng_state(state)
    torch.set_num_threads(threads)


def _assert_one_line_error(capsys, rc: int, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("prunekit: error: ")
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def test_list_models_datasets_methods(capsys):
    assert main(["list", "models"]) == 0
    models = capsys.readouterr().out.split()
    assert "resnet20" in models and "resnet56" in models
    assert main(["list", "datasets", "--json"]) == 0
    assert "shapes" in json.loads(capsys.readouterr().out)
    assert main(["list", "methods"]) == 0
    assert "dense" in capsys.readouterr().out.split()


@pytest.mark.slow  # ~3 s on an idle 2-core CPU, 20 s when the machine is shared
def test_train_then_eval_end_to_end(tmp_path: Path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--model", "resnet20", "--dataset", "shapes", *TINY, "--out", str(out)])
    table = capsys.readouterr().out
    assert rc == 0
    for row in ("acc/test", "params", "train time", "throughput"):
        assert row in table
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "completed" and result["steps"] == 2 and result["epochs"] == 1
    assert 0.0 <= result["metrics"]["acc/test"] <= 1.0 and "acc/val" in result["metrics"]
    assert result["params"] > 250_000  # ResNet-20, ~0.27M
    assert json.loads((out / "config.json").read_text())["model"] == "resnet20"
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["format"] == "prunekit-checkpoint" and ckpt["config"]["data_options"]["num_samples"] == 128

    assert main(["eval", str(out / "last.pt"), "--device", "cpu", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    # same weights, same test split: the accuracy the training run reported
    assert evaluated["metrics"]["acc/test"] == pytest.approx(result["metrics"]["acc/test"])
    assert evaluated["samples"] == 32


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["train", "--model", "resnet21"], ["unknown model 'resnet21'", "resnet20"]),
        (["train", "--dataset", "shapez"], ["unknown dataset 'shapez'", "shapes"]),
        (["train", "--epochs", "-1"], ["epochs must be >= 0, got -1"]),
        (["train", "--data-root", "/nonexistent/prunekit-data"], ["--data-root", "does not exist"]),
        (["train", "--in-channels", "1"], ["in_channels=1", "3-channel"]),
        (["train", "--num-classes", "3"], ["num_classes=3", "10 classes"]),
        (["train", "--method", "nope"], ["unknown method 'nope'"]),
        (["train", "--target-macs", "0.5"], ["--target-macs", "'dense'"]),
        (["train", "--method-opt", "foo"], ["--method-opt expects key=value"]),
        (["train", "--method-opt", "foo=1"], ["unknown option(s) for method 'dense': foo"]),
        (["train", "--epochs", "abc"], ["--epochs", "invalid int value"]),
        (["train", "--lr", "0"], ["lr must be > 0"]),
        (["train", "--device", "gpu7"], ["device"]),
        (["list", "things"], ["invalid choice"]),
        (["nonsense"], ["invalid choice"]),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, args, fragments):
    _assert_one_line_error(capsys, main(args), *fragments)


def test_one_channel_data_into_three_channel_model(capsys):
    from prunekit.data import list_datasets

    if "fashion-mnist" not in list_datasets():
        pytest.skip("fashion-mnist is not registered")
    _assert_one_line_error(capsys, main(["train", "--dataset", "fashion-mnist", "--in-channels", "3"]),
                           "in_channels=3", "1-channel")


def test_eval_refuses_foreign_and_missing_files(tmp_path: Path, capsys):
    foreign = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, foreign)
    _assert_one_line_error(capsys, main(["eval", str(foreign)]), "not a prunekit checkpoint")
    _assert_one_line_error(capsys, main(["eval", str(tmp_path / "missing.pt")]), "does not exist")


def test_debug_shows_traceback(capsys):
    assert main(["train", "--epochs", "-1", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "epochs must be >= 0" in err


@pytest.mark.slow  # a fresh interpreter imports torch: ~3 s idle, 15 s on a shared CPU
def test_console_script_errors_in_subprocess():
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "prunekit.cli", "train", "--model", "resnet21"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("prunekit: error: unknown model 'resnet21'")


def test_every_option_of_every_command_documents_its_default():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"train", "eval", "list"} <= set(sub.choices)
    for name, sp in sub.choices.items():
        formatter = HelpFormatter(prog=f"prunekit {name}")
        for action in sp._actions:
            if not action.option_strings or action.default is argparse.SUPPRESS:
                continue  # positionals, --help, --debug/--verbose
            text = formatter._get_help_string(action) or ""
            assert action.help, f"prunekit {name} {action.option_strings[0]} has no help"
            assert "default" in text, f"prunekit {name} {action.option_strings[0]}: {text!r}"


def test_help_exits_0(capsys):
    for cmd in (["--help"], ["train", "--help"], ["eval", "--help"], ["list", "--help"]):
        assert main(cmd) == 0
        assert "usage: prunekit" in capsys.readouterr().out


def test_parse_kv_values():
    assert parse_kv(["a=1", "b=0.5", "c=true", "d=none", "e=[1, 2]", "f=filter", "g-h=x"], "--opt") == {
        "a": 1, "b": 0.5, "c": True, "d": None, "e": [1, 2], "f": "filter", "g_h": "x"}


def _changed_value(spec):
    """A valid value of ``spec`` other than its default, as the command line would spell it."""
    if spec.kind == "bool":
        return str(not spec.default).lower(), (not spec.default)
    if spec.kind == "choice":
        other = next(c for c in spec.choices if c != spec.default) if len(spec.choices) > 1 else spec.default
        return str(other), other
    if spec.kind in ("int", "float"):
        lo = spec.low if spec.low is not None else 0
        hi = spec.high if spec.high is not None else lo + 4
        v = (lo + hi) / 2 if spec.kind == "float" else int(lo) + 1 if spec.high is None or lo + 1 <= hi else int(lo)
        return str(v), (float(v) if spec.kind == "float" else int(v))
    return None, None


@pytest.mark.parametrize("method", list_methods())
def test_every_method_option_is_a_typed_cli_flag(method):
    """Generated from the method's Config: each option's flag (or --method-opt when the name is a train flag such as
    --lr) reaches method_options with the option's type; a flag of another method is refused by name."""
    from prunekit.cli.train import config_from_args
    from prunekit.methods import method_class

    parser = build_parser()
    train_flags = {"--lr", "--seed", "--epochs"}
    for spec in method_class(method).options():
        text, value = _changed_value(spec)
        if text is None:
            continue
        flag = "--" + spec.name.replace("_", "-")
        argv = ["--method-opt", f"{spec.name}={text}"] if flag in train_flags else [flag, text]
        try:
            args = parser.parse_args(["train", "--method", method, *argv])
            cfg = config_from_args(args)
        except ConfigError as e:  # a cross-option rule of the method (e.g. DPP's target_macs needs granularity filter)
            assert spec.name in str(e) or "granularity" in str(e), e
            continue
        got = cfg.method_options[spec.name]
        assert got == value and type(got) is type(value), (spec.name, got, value)
    others = {s.name for m in list_methods() for s in method_class(m).options()} - {
        s.name for s in method_class(method).options()} - {"lr", "seed", "epochs"}
    if others:
        name = sorted(others)[0]
        args = parser.parse_args(["train", "--method", method, "--" + name.replace("_", "-"), "1"])
        with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')} is not an option of method '{method}'"):
            config_from_args(args)


def test_out_of_range_method_option_names_option_and_value():
    from prunekit.cli.train import config_from_args

    args = build_parser().parse_args(["train", "--method", "crisp", "--threshold", "1.5"])
    with pytest.raises(ConfigError, match=r"threshold must be in \(0, 1\), got 1.5"):
        config_from_args(args)
    args = build_parser().parse_args(["train", "--method", "crisp", "--threshold", "high"])
    with pytest.raises(ConfigError, match="--threshold must be a float, got 'high'"):
        config_from_args(args)


def test_list_methods_details_come_from_the_method_files(capsys):
    from prunekit.methods import method_class

    assert main(["list", "methods", "--details", "--json"]) == 0
    details = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    assert set(details) == set(list_methods())
    crisp = details["crisp"]
    assert crisp["summary"] == method_class("crisp").summary and crisp["target_option"] == "target_macs"
    assert "struct" in crisp["loss_terms"]
    threshold = next(o for o in crisp["options"] if o["name"] == "threshold")
    assert threshold["default"] == 0.25 and "(0, 1)" in threshold["help"]


@pytest.mark.slow
def test_train_background_is_a_run_in_the_store(tmp_path: Path, capsys):
    from prunekit.train.runner import get_handle

    ws = tmp_path / "ws"
    rc = main(["train", *TINY, "--background", "--workspace", str(ws), "--json"])
    assert rc == 0
    run_id = json.loads(capsys.readouterr().out)["id"]
    info = get_handle(run_id, ws).wait(timeout=240)
    assert info.status == "done", info.error
    assert info.config["model"] == "resnet20" and info.result is not None


def test_dpp_kernel_quant_reports_sparsity_and_size(capsys):
    rc = main(["train", *TINY, "--method", "dpp", "--granularity", "kernel", "--quant-bits", "4", "--keep", "0.5"])
    assert rc == 0
    text = capsys.readouterr().out
    sparsity = next(line for line in text.splitlines() if line.startswith("sparsity"))
    size = next(line for line in text.splitlines() if line.startswith("size"))
    assert abs(float(sparsity.split()[1]) - 0.5) < 0.05
    ratio = float(size.split("(")[1].split()[0])
    assert 0 < ratio < 0.25  # half the kernels at 4 bits instead of 32: well under a quarter of the size


def test_train_summary_says_what_the_method_decided_itself(capsys):
    rc = main(["train", *TINY, "--epochs", "3", "--method", "crisp", "--target-macs", "0.5", "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)["method_report"]
    rows = dict(summary_rows({"metrics": {}, "config": {"model": "m", "method": "crisp", "dataset": "d"},
                              "status": "completed", "epochs": 1, "steps": 2, "params": 10, "train_time_s": 1.0,
                              "throughput": 1.0, "method_report": report}, None))
    assert rows["own rule"].startswith(f"{report['relaxation_macs_ratio']:.3f} of dense MACs")
    flips = report["calibration_flips"]
    assert rows["calibration"] == (f"changed {flips:.1%} of the keep/remove decisions" if flips else "none needed")


def test_a_run_that_learned_nothing_or_missed_its_own_target_says_so():
    """Issue 20 item 1: a 'completed' run at chance, or one whose mask the calibration chose, carries a warning
    (``result["warnings"]``) that the CLI summary prints."""
    from prunekit.train.diagnose import run_warnings

    def result(acc, own, method="crisp"):
        return {"metrics": {"acc/test": acc}, "dataset": {"num_classes": 10},
                "config": {"method": method, "method_options": {"target_macs": 0.5}},
                "method_report": {"relaxation_macs_ratio": own}}

    assert run_warnings(result(0.90, 0.50)) == []
    chance = run_warnings(result(0.10, 0.50))
    assert len(chance) == 1 and "near chance (1/10 = 10.0%)" in chance[0] and "more epochs" in chance[0]
    assert not any("--epochs" in w for w in chance + run_warnings(result(0.90, 0.80)))  # the app shows them too
    missed = run_warnings(result(0.90, 0.80))
    assert len(missed) == 1 and "own rule kept 0.80 of the dense MACs against the target 0.5" in missed[0]
    assert run_warnings(result(0.90, 0.80, method="dense")) == []  # no target, nothing to miss
    latency = result(0.90, 0.80)  # a latency target: the MACs own rule is not compared with target_macs
    latency["config"]["method_options"] = {"target_latency": 5.0}
    latency["method_report"]["calibration_flips"] = 0.02
    assert run_warnings(latency) == []
    latency["method_report"]["calibration_flips"] = 0.25
    assert [w for w in run_warnings(latency) if "changed 25% of the keep/remove decisions" in w]
    r = {**result(0.10, 0.80), "status": "completed", "epochs": 2, "steps": 8, "params": 1000,
         "train_time_s": 1.0, "throughput": 10.0}
    r["config"].update(model="resnet20", dataset="shapes")
    r["warnings"] = run_warnings(r)
    rows = dict((k, v) for k, v in summary_rows(r, None) if k != "warning")
    warnings = [v for k, v in summary_rows(r, None) if k == "warning"]
    assert rows["status"].startswith("completed") and len(warnings) == 2


# -- the command answers at once (issue 20 item 11): nothing heavy before it is needed ------------------------------
HEAVY = ("torch", "torchvision", "pandas", "numpy", "plotly", "streamlit", "ipywidgets")
_PROBE = ("import json, sys\nfrom prunekit.cli import main\nrc = main(sys.argv[1:])\n"
          "print('PROBE ' + json.dumps([rc, sorted({m.split('.')[0] for m in sys.modules} & set(json.loads(%r)))]))")


@pytest.mark.parametrize("argv, rc", [
    (["--help"], 0), (["--version"], 0), (["eval", "--help"], 0),
    (["collapse", "--help"], 0), (["list", "--help"], 0), (["runs", "list", "--help"], 0), (["bench", "--help"], 0),
    (["nonsense"], 2), (["eval"], 2), (["list", "things"], 2), (["bench", "nosuch"], 2),
    (["train", "--model", "nosuch"], 2), (["train", "--dataset", "shapez"], 2), (["train", "--method", "nope"], 2),
    (["train", "--epochs", "abc"], 2), (["train", "--method-opt", "foo"], 2), (["sweep", "--model", "resnet21"], 2),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_help_and_argument_errors_import_no_heavy_library(argv, rc):
    """Checked on sys.modules in a fresh interpreter, not on the clock (`prunekit bench cli` times them). Not covered:
    `train --help` and an unknown flag of train/sweep, which need the method-option flags, generated from the
    methods' Configs in modules that import torch."""
    proc = subprocess.run([sys.executable, "-c", _PROBE % json.dumps(HEAVY), *argv], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    probe = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    assert probe, proc.stdout + proc.stderr
    got_rc, heavy = json.loads(probe[-1][len("PROBE "):])
    assert got_rc == rc, proc.stderr
    assert heavy == [], f"prunekit {' '.join(argv)} imported {heavy} before answering"
    if rc == 2:
        assert proc.stderr.startswith("prunekit: error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_light_names_are_the_registries_names(monkeypatch):
    """The names the CLI checks before importing torch (read from the source) are exactly the registries'."""
    from prunekit.cli import _names
    from prunekit.data import list_datasets
    from prunekit.models import list_models

    monkeypatch.setattr(_names, "_registered", lambda kind: [])  # the source alone, as in a fresh `prunekit`
    assert _names.known_names("model") == sorted([*list_models(include_torchvision=False), "tv:NAME", "timm:NAME"])
    assert _names.known_names("dataset") == sorted(list_datasets())
    assert _names.known_names("method") == sorted(list_methods())
    _names.check_name("model", "tv:resnet18")  # torchvision names are checked when the model is built
    _names.check_name("model", "timm:resnet18")  # timm's too (an optional extra)
    _names.check_name("dataset", "imagefolder:/some/where")
    with pytest.raises(ConfigError, match="unknown method 'crips'; did you mean crisp"):
        _names.check_name("method", "crips")


def test_train_help_still_lists_the_generated_method_flags_with_defaults(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert "method options" in text and "--target-macs" in text and "--threshold" in text
    assert "--epochs EPOCHS" in text and "training epochs (default: " in text
    assert "{" in text.split("--optimizer", 1)[1].split("\n", 1)[0]  # its choices, added with the defaults


@pytest.mark.slow  # two tiny trainings' worth: ~6 s idle
def test_collapse_a_run_folder_reports_the_run_it_collapsed(tmp_path: Path, capsys):
    """`prunekit collapse` loads the run with pk.load_run: the gated model is the one the run reported on (same
    test accuracy, same hard MACs), and the slim one computes the same outputs."""
    out = tmp_path / "run"
    rc = main(["train", *TINY, "--epochs", "2", "--method", "crisp", "--target-macs", "0.5", "--out", str(out), "--json"])
    assert rc == 0
    trained = json.loads(capsys.readouterr().out)
    assert main(["collapse", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["status"] == "completed" and r["max_diff"] < 1e-4
    assert r["acc/test"]["before"] == trained["metrics"]["acc/test"]
    assert abs(r["acc/test"]["after"] - r["acc/test"]["before"]) <= 1 / 32  # at most one of the 32 test images
    assert r["macs"]["after"] == pytest.approx(trained["macs"], rel=1e-6)
    assert Path(r["saved"]) == out / "slim.pt" and (out / "slim.pt").is_file()
    forms = r["latency_ms"]
    assert {"eager", "inference"} <= forms.keys()
    for form in forms.values():
        assert set(form["before"]) == set(form["after"]) == {"1", "64"}
        assert all(v > 0 for side in form.values() for v in side.values())


@pytest.mark.slow  # three fresh interpreters import torch for `list models`: ~5 s idle
def test_bench_cli_times_the_cases_and_says_what_they_imported(tmp_path: Path, monkeypatch):
    from prunekit.bench import cli as bench_cli

    monkeypatch.setattr(bench_cli, "CASES", {"--help": (("--help",), True), "list things": (("list", "things"), True),
                                             "list models": (("list", "models"), False)})
    r = bench_cli.bench_cli(tmp_path, repeats=1)
    saved = json.loads((tmp_path / "cli.json").read_text())
    assert saved["results"].keys() == {"--help", "list things", "list models"}
    res = saved["results"]
    assert res["--help"]["exit"] == 0 and res["list things"]["exit"] == 2 and res["list models"]["exit"] == 0
    assert res["--help"]["imports"] == [] and res["list things"]["imports"] == []
    assert "torch" in res["list models"]["imports"]  # listing models builds the registry: the column can tell
    assert res["list models"]["meets_target"] is None and isinstance(res["--help"]["meets_target"], bool)
    assert "| prunekit --help |" in r["markdown"] and (tmp_path / "cli.md").read_text() == r["markdown"]
