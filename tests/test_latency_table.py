"""The per-layer latency table: grid, interpolation, cache, the relaxed latency cost, and a latency-target run."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_cnn

import prunekit.latency_table as lt
import prunekit.methods as pm
from prunekit.augment import augment
from prunekit.cost import cost_model, gate_values
from prunekit.errors import ConfigError
from prunekit.methods._gated import calibrate, mask_ratio

X = torch.randn(1, 3, 8, 8)


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _table(model=None, **kw):
    return lt.build_latency_table(model or make_tiny_cnn((8, 12, 16)), X, 2, threads=1, rounds=1, repeats=1, **kw)


def _deterministic(d: dict) -> dict:
    """A table dict with made-up monotone times (one timed sample per point is noise): T = (c_in + 1)(c_out + 1) µs,
    0 at a zero width; no constant share."""
    for e in d["entries"].values():
        e["ms"] = [[(ci + 1) * (co + 1) * 1e-3 if ci and co else 0.0 for co in e["grid_out"]] for ci in e["grid_in"]]
    d["const_share"] = 0.0
    return d


def test_width_grid():
    assert lt.width_grid(64) == [0, 16, 32, 48, 64]
    assert lt.width_grid(12) == [0, 4, 8, 12]
    assert lt.width_grid(3) == [0, 1, 2, 3]
    assert lt.width_grid(10) == [0, 4, 8, 10]


def test_interpolation_exact_on_grid_points_monotone_and_differentiable():
    gi, go = torch.tensor([0.0, 4, 8, 12], dtype=torch.float64), torch.tensor([0.0, 8, 16], dtype=torch.float64)
    ms = lt._monotone(torch.rand(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    for a, ci in enumerate(gi):
        for b, co in enumerate(go):
            assert float(lt.interpolate(gi, go, ms, ci, co)) == pytest.approx(float(ms[a, b]), abs=1e-12)
    # monotone in each width, on a fine sweep
    xs = torch.linspace(0, 12, 49)
    for co in (0.0, 3.3, 8.0, 11.1, 16.0):
        v = torch.stack([lt.interpolate(gi, go, ms, x, co) for x in xs])
        assert bool((v[1:] >= v[:-1] - 1e-12).all())
    for ci in (0.0, 2.5, 9.7, 12.0):
        v = torch.stack([lt.interpolate(gi, go, ms, ci, y) for y in torch.linspace(0, 16, 49)])
        assert bool((v[1:] >= v[:-1] - 1e-12).all())
    # between grid points: the bilinear mean of the cell's corners, with a gradient
    n = torch.tensor(6.0, requires_grad=True)
    v = lt.interpolate(gi, go, ms, n, 12.0)
    assert float(v.detach()) == pytest.approx(float(ms[1:3, 1:3].mean()), rel=1e-9)
    v.backward()
    assert float(n.grad) == pytest.approx(float((ms[2, 1:3].mean() - ms[1, 1:3].mean()) / 4), rel=1e-6)


def test_table_is_cached_and_reused(monkeypatch, tmp_path):
    first = _table()
    assert first.timed and first.dense_ms > 0 and first.layer_sum_ms > 0
    files = list(lt.cache_dir().glob("*.json"))
    assert len(files) == 1

    def no_timing(*a, **k):
        raise AssertionError("a cached table was timed again")

    monkeypatch.setattr(lt, "_time_points", no_timing)
    second = _table()
    assert not second.timed and second.key == first.key and second.dense_ms == first.dense_ms
    for k, e in first.entries.items():
        assert torch.equal(second.entries[k].ms, e.ms)
    # another batch, thread count or input size is another table
    with pytest.raises(AssertionError, match="timed again"):
        lt.build_latency_table(make_tiny_cnn((8, 12, 16)), X, 3, threads=1, rounds=1, repeats=1)


def test_relaxed_latency_of_a_gated_model():
    net = make_tiny_cnn((8, 12, 16))
    gated = augment(net, torch.randn(2, 3, 8, 8), gate="mask")
    d = _table(make_tiny_cnn((8, 12, 16)), varying=lt.varying_dims(gated)).to_dict()
    table = lt.LatencyTable.from_dict(_deterministic(d))
    lt.attach_table(gated, table)
    ones = [torch.ones(h.size) for h in gated.groups]
    assert float(lt.latency_ratio_of(gated, ones)) == pytest.approx(1.0)
    # the stem's input (the image) and the classifier's output (the classes) are single grid points
    stem = table.entries[table.layers["0"]]
    assert stem.grid_in.tolist() == [3.0] and table.entries[table.layers["11"]].grid_out.tolist() == [4.0]
    values = [torch.full((h.size,), 0.5, requires_grad=True) for h in gated.groups]
    r = lt.latency_ratio_of(gated, values)
    r.backward()
    assert 0 < float(r.detach()) < 1 and all(float(v.grad.min()) > 0 for v in values)
    # a hard mask: the prediction is the table's at the kept widths; calibration meets a latency target
    masks, ratio = calibrate(gated, [torch.rand(h.size) for h in gated.groups], 0.6, "latency")
    assert ratio == pytest.approx(mask_ratio(gated, masks, "latency")) and abs(ratio - 0.6) < 0.2
    counts = cost_model(gated).channels(gate_values(gated, "hard"))
    assert table.predict_ms(counts) == pytest.approx(table.dense_ms)


def test_latency_options_and_errors():
    specs = {s.name: s for s in pm.method_class("crisp").options()}
    assert specs["target_latency"].unit == "ms" and specs["target_latency"].default is None
    assert "target_latency" in {s.name for s in pm.method_class("l0").options()}
    with pytest.raises(ConfigError, match="target_latency"):
        pm.create("crisp", target_latency=0)
    m = pm.create("crisp", target_latency=1e6)
    with pytest.raises(ConfigError, match="target_latency must be below"):
        m.prepare(make_tiny_cnn((8, 12, 16)), torch.randn(2, 3, 8, 8))
    with pytest.raises(ConfigError, match="no latency table"):
        lt.latency_ratio(augment(make_tiny_cnn((8,)), torch.randn(2, 3, 8, 8), gate="mask"))


@pytest.mark.parametrize("method", ["crisp", "l0", "growing"])
def test_latency_target_run_trains_and_reports_predicted_and_measured(method):
    from prunekit.train.callbacks import Callback
    from prunekit.train.config import RunConfig, TrainConfig
    from prunekit.train.experiment import build_experiment, run_experiment

    logs: list[dict] = []

    class Rec(Callback):
        def on_step_end(self, trainer, step_logs):
            logs.append(step_logs)

    cfg = RunConfig(model="resnet20", dataset="shapes", method=method,
                    method_options={"target_latency": 1e-3, "latency_threads": 1},
                    data_options={"num_samples": 64, "num_test": 32, "image_size": 16},
                    train=TrainConfig(epochs=3, batch_size=32, lr=0.05, max_steps_per_epoch=2, log_every=1,
                                      num_threads=1, device="cpu"))
    dense_ms = build_experiment(cfg).method.latency_info["dense_ms"]  # times the table once
    cfg.method_options["target_latency"] = dense_ms / 2
    result = run_experiment(cfg, callbacks=[Rec()])  # reads it from the cache
    lat = result["method_report"]["latency"]
    assert lat["batch"] == 1 and lat["threads"] == 1 and lat["table_cached"]
    assert lat["dense_ms"] == dense_ms and lat["target_ms"] == pytest.approx(dense_ms / 2)
    assert lat["predicted_ms"] > 0 and lat["measured_ms"] > 0 and lat["measured_dense_ms"] > 0
    assert lat["measured_ratio"] == pytest.approx(lat["measured_ms"] / lat["measured_dense_ms"])
    assert lat["prediction_error"] == pytest.approx(lat["predicted_ratio"] / lat["measured_ratio"] - 1)
    assert lat["predicted_ms"] == pytest.approx(result["method_report"]["ratio"] * dense_ms, rel=1e-6)
    assert "latency_ratio/expected" in logs[-1] and "latency_ratio/relaxation" in logs[-1]


def test_the_constant_share_is_fitted_to_a_reference_network():
    """ratio = c + (1 − c)·S(n): c, the share of the dense latency that does not shrink, is solved so that the table
    predicts the reference network's measured ratio; full width stays the dense latency."""
    from prunekit.methods import latency_reference

    d = _deterministic(_table().to_dict())
    base = lt.LatencyTable.from_dict(d)
    half = {n: (base._full(n)[0] / 2, base._full(n)[1] / 2) for n in base.layers}
    s = float(base.scalable(half))
    assert 0 < s < 1
    measured = 0.3 + 0.7 * s  # the truth: 30 % of the dense latency does not shrink
    d["const_share"] = lt.fit_const_share(base, half, measured)
    fitted = lt.LatencyTable.from_dict(d)
    assert fitted.const_share == pytest.approx(0.3) and fitted.const_ms == pytest.approx(0.3 * fitted.dense_ms)
    assert float(fitted.ratio(half)) == pytest.approx(measured, rel=1e-6)
    assert fitted.predict_ms({}) == pytest.approx(fitted.dense_ms)
    assert lt.fit_const_share(base, half, 0.0) == 0.0  # faster than the layers promise: no negative share
    # the reference of a gated model: half of every group, collapsed; its masks come back untouched
    gated = augment(make_tiny_cnn((8, 12, 16)), torch.randn(2, 3, 8, 8), gate="mask")
    counts, slim = latency_reference(gated)
    assert counts["3"] == (4.0, 6.0) and all(bool(h.gate.keep.all()) for h in gated.groups)
    assert slim[3].out_channels == 6
    table = _table(make_tiny_cnn((8, 12, 16)), varying=lt.varying_dims(gated), reference=(counts, slim))
    assert table.key["reference"] and 0 <= table.const_share < 1
