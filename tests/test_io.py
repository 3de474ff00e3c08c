"""Slim-model files: safe formats, refusal of corrupt/foreign/mismatched files, ONNX export."""

from __future__ import annotations

import json

import pytest
import torch

import prunekit as pk


@pytest.fixture(scope="module")
def slim() -> torch.nn.Module:
    model = pk.create_model("resnet20", num_classes=10).eval()
    gated = pk.augment(model, torch.randn(1, 3, 32, 32))
    g = torch.Generator().manual_seed(0)
    for h in gated.groups:
        h.set_mask(torch.rand(h.size, generator=g) < 0.6)
        if not h.hard_mask().any():
            h.set_mask(torch.arange(h.size) == 0)
    gated.groups[2].set_mask(torch.zeros(gated.groups[2].size, dtype=torch.bool))  # a removed branch too
    return pk.collapse(gated)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip_is_exact_and_weights_only(slim, tmp_path, suffix) -> None:
    path = pk.save_slim(slim, tmp_path / f"slim{suffix}")
    if suffix == ".pt":
        blob = torch.load(path, weights_only=True)  # no pickled modules: the safe loader reads it
        spec = json.loads(blob["spec"])
        assert spec["base"]["name"] == "resnet20" and spec["layers"]
    loaded = pk.load_slim(path)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), slim(x))
    assert pk.count_params(loaded) == pk.count_params(slim)
    assert sorted(n for n, s in loaded.pk_collapse["layers"].items() if s["type"] != "resize") == slim.pk_collapse["removed"]


def test_corrupt_and_foreign_files_are_refused(slim, tmp_path) -> None:
    path = pk.save_slim(slim, tmp_path / "slim.pt")
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(pk.CheckpointError, match="cannot read slim model"):
        pk.load_slim(tmp_path / "trunc.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(pk.CheckpointError, match="not a prunekit slim model"):
        pk.load_slim(tmp_path / "foreign.pt")
    with pytest.raises(pk.CheckpointError, match="does not exist"):
        pk.load_slim(tmp_path / "missing.pt")


def test_mismatched_weights_are_refused(slim, tmp_path) -> None:
    path = pk.save_slim(slim, tmp_path / "slim.pt")
    blob = torch.load(path, weights_only=True)
    key = next(k for k, v in blob["state_dict"].items() if v.dim() == 4)
    blob["state_dict"][key] = torch.zeros(1, 1, 3, 3)
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(pk.CheckpointError, match="shape mismatch"):
        pk.load_slim(tmp_path / "bad.pt")


def test_pickled_module_file_is_refused(tmp_path) -> None:
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled module: weights_only refuses it
    with pytest.raises(pk.CheckpointError):
        pk.load_slim(tmp_path / "module.pt")


def test_save_needs_a_spec(tmp_path) -> None:
    with pytest.raises(pk.ConfigError, match="pk_spec"):
        pk.save_slim(torch.nn.Linear(2, 2), tmp_path / "x.pt")


def test_onnx_export_matches(slim, tmp_path) -> None:
    onnx = pytest.importorskip("onnx", reason="onnx is not installed")
    path = pk.export_onnx(slim, torch.randn(1, 3, 32, 32), tmp_path / "slim.onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert model.graph.input[0].name == "input"


def test_latency_and_compare(slim) -> None:
    x = torch.randn(1, 3, 32, 32)
    lat = pk.measure_latency(slim, x, (1, 4), repeats=3, warmup=1)
    assert set(lat) == {1, 4} and all(v > 0 for v in lat.values())
    base = pk.create_model("resnet20")
    res = pk.compare(base, slim, example_input=x, batch_sizes=(1,), repeats=3)
    assert res["slim"]["macs"] < res["original"]["macs"]
    assert res["ratios"]["macs"] == pytest.approx(res["slim"]["macs"] / res["original"]["macs"])
    assert res["removed_blocks"] == slim.pk_collapse["removed"]
    assert all(after <= before for before, after in res["widths"].values())
