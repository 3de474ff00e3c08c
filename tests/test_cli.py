"""The ``prunekit`` command: listing, a tiny end-to-end train + eval, help texts, and one-line errors."""

from __future__ import annotations

import argparse
import dataclasses
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


def test_method_flag_reaches_method_options():
    from prunekit.cli.train import METHOD_FLAGS, config_from_args
    from prunekit.methods import create_method, list_methods

    parser = build_parser()

    for method in list_methods():
        fields = {f.name for f in dataclasses.fields(type(create_method(method)).Config)}
        common = sorted(fields & set(METHOD_FLAGS))
        if common:
            field = common[0]
            flag, typ, _ = METHOD_FLAGS[field]
            value = {float: "0.5", int: "4", str: "filter"}[typ]
            args = parser.parse_args(["train", "--method", method, flag, value])
            assert config_from_args(args).method_options[field] == typ(value)
            return
    pytest.skip("no registered method takes one of the first-class flags yet")


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
