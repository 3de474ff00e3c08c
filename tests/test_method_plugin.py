"""A new method written as one file appears everywhere without editing any other file (issue "One place per
concept"): ``prunekit list methods``, the CLI help and flags, the app's run form, the notebook widgets and
``bench pareto --methods``. The toy method lives in a temporary module, imported the way a user's plugin is.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from prunekit.cli import build_parser, main
from prunekit.methods import list_methods, method_class
from prunekit.methods.base import _METHODS

APP = Path(__file__).resolve().parents[1] / "app"
TOY_NAME = "toy-wiggle"
TOY_SOURCE = '''
import dataclasses

import torch

from prunekit.methods import Method, option, register_method


@register_method
class ToyWiggle(Method):
    """A toy method: dense training plus a tiny weight-norm term."""

    name = "toy-wiggle"
    summary = "a toy method written as one file, to check that prunekit picks it up everywhere"
    target_option = "target_macs"
    loss_help = {"wiggle": "the wiggle term nudges the weights towards zero"}
    decision_rule = "keeps every channel"

    @dataclasses.dataclass(frozen=True)
    class Config:
        target_macs: float = option(0.5, "the MACs to keep", unit="fraction of dense MACs", low=0, high=1,
                                    low_open=True)
        wiggle_strength: float = option(0.25, "how hard the toy wiggles", low=0, high=1, paper="0.3")

    def regularizer(self, model, step, epoch):
        w = next(p for p in model.parameters() if p.requires_grad)
        return {"wiggle": 1e-6 * self.config.wiggle_strength * w.pow(2).sum()}
'''


@pytest.fixture
def toy_method(tmp_path, monkeypatch):
    (tmp_path / "toy_wiggle_plugin.py").write_text(TOY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("toy_wiggle_plugin")
    yield TOY_NAME
    _METHODS._items.pop(TOY_NAME, None)  # the registry is process-wide: leave it as the other tests expect
    sys.modules.pop("toy_wiggle_plugin", None)


def test_toy_method_is_listed_with_its_own_description(toy_method, capsys):
    assert toy_method in list_methods()
    assert main(["list", "methods"]) == 0
    assert toy_method in capsys.readouterr().out.split()
    assert main(["list", "methods", "--details"]) == 0
    text = capsys.readouterr().out
    assert "a toy method written as one file" in text and "wiggle_strength (float, default 0.25)" in text
    assert "loss/wiggle: the wiggle term nudges the weights towards zero" in text


def test_toy_method_options_are_cli_flags(toy_method):
    from prunekit.cli.train import config_from_args

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    help_text = train.format_help()
    assert "--wiggle-strength" in help_text and "how hard the toy wiggles" in help_text
    args = parser.parse_args(["train", "--method", toy_method, "--wiggle-strength", "0.75", "--target-macs", "0.4"])
    cfg = config_from_args(args)
    assert cfg.method_options == {"wiggle_strength": 0.75, "target_macs": 0.4}
    assert cfg.method_config.wiggle_strength == 0.75 and cfg.target_macs == 0.4
    with pytest.raises(Exception, match=r"wiggle_strength must be in \[0, 1\], got 2.0"):
        config_from_args(parser.parse_args(["train", "--method", toy_method, "--wiggle-strength", "2"]))


def test_toy_method_in_the_app_form(toy_method, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("PRUNEKIT_HOME", str(tmp_path / "ws"))
    at = AppTest.from_file(str(APP / "pages" / "1_Runs.py"), default_timeout=60).run()
    assert toy_method in at.selectbox(key="form_method").options
    at.selectbox(key="form_method").set_value(toy_method).run()
    assert not at.exception, at.exception
    box = at.number_input(key=f"opt_{toy_method}_wiggle_strength")
    assert box.value == 0.25 and "how hard the toy wiggles" in box.help and "paper: 0.3" in box.help
    assert any("a toy method written as one file" in c.value for c in at.caption)


def test_toy_method_in_the_notebook_widgets(toy_method):
    from prunekit.widgets import MethodForm

    form = MethodForm(method=toy_method)
    assert toy_method in form.picker.options
    spec, box = form.inputs["wiggle_strength"]
    assert box.value == 0.25 and box.max == 1 and "how hard the toy wiggles" in box.tooltip
    box.value = 0.5
    assert form.options() == {"wiggle_strength": 0.5}
    assert method_class(toy_method).target_value(form.options()) == 0.5  # its default target


@pytest.mark.slow
def test_toy_method_in_bench_pareto(toy_method, tmp_path):
    """``bench pareto --methods`` accepts it, trains it at the preset's target through its target option, and the
    journal row carries the options it got (no table in the bench lists methods by name)."""
    from prunekit.bench.pareto import bench_pareto

    result = bench_pareto(tmp_path / "p", preset="smoke", methods=(toy_method,), datasets=("shapes",),
                          latency_repeats=1, latency_rounds=1, latency_min_seconds=0.0, num_threads=1)
    rows = [r for r in result["rows"] if r["method"] == toy_method]
    assert rows and all("error" not in r for r in rows), rows
    assert rows[0]["options"] == {"target_macs": 0.5}
    assert rows[0]["acc_test"] is not None
