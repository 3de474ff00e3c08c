"""round_to: hardware-friendly kept widths, honoured by every target-driven method and by calibration."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_cnn
from test_methods import TARGETED, _run

import prunekit.methods as pm
from prunekit.augment import augment
from prunekit.collapse import collapse
from prunekit.compare import layer_widths
from prunekit.errors import ConfigError
from prunekit.methods._gated import calibrate, mask_ratio, round_count, round_masks


def test_round_count_nearest_multiple_or_whole_group():
    assert [round_count(k, 64, 8) for k in (0, 1, 3, 4, 5, 12, 13, 60, 61, 64)] == [0, 8, 8, 8, 8, 16, 16, 64, 64, 64]
    assert round_count(9, 10, 8) == 10  # 8 and 10 (the whole group) are 1 away: ties keep more
    assert round_count(3, 6, 8) == 6  # a group narrower than round_to stays whole
    assert round_count(5, 12, 1) == 5


def test_round_masks_follow_the_rule_then_the_scores():
    mask = torch.tensor([True, False, True, True, False, False, False, False, False, False, True, False])
    scores = torch.arange(12, dtype=torch.float32)  # higher index = more important
    # 4 kept -> 8: the 4 kept stay, the 4 best removed ones (11, 9, 8, 7) join
    out = round_masks([mask], [scores], 8)[0]
    assert int(out.sum()) == 8 and bool(out[mask].all())
    assert out.nonzero().flatten().tolist() == [0, 2, 3, 7, 8, 9, 10, 11]
    # 9 kept of 16 -> 8: the lowest-scored kept one goes
    mask16 = torch.arange(16) < 9
    out16 = round_masks([mask16], [torch.arange(16, dtype=torch.float32)], 8)[0]
    assert out16.nonzero().flatten().tolist() == list(range(1, 9))


def test_calibrate_with_round_to_meets_target_with_multiples():
    g = augment(make_tiny_cnn((16, 24, 32)), torch.randn(2, 3, 8, 8), gate="mask")
    scores = [torch.rand(h.size, generator=torch.Generator().manual_seed(h.index)) for h in g.groups]
    masks, ratio = calibrate(g, scores, 0.5, round_to=8)
    assert all(int(m.sum()) % 8 == 0 for m in masks)
    assert ratio == pytest.approx(mask_ratio(g, masks)) and abs(ratio - 0.5) < 0.15


def test_round_to_is_an_option_of_every_target_method():
    for name in TARGETED:
        spec = next((s for s in pm.method_class(name).options() if s.name == "round_to"), None)
        assert spec is not None and spec.default == 1 and spec.low == 1 and spec.unit == "channels", name
    with pytest.raises(ConfigError, match="round_to"):
        pm.create("crisp", round_to=0)
    with pytest.raises(ConfigError, match="round_to"):
        pm.create("dpp", granularity="kernel", round_to=8)


@pytest.mark.parametrize("method", TARGETED)
def test_every_method_collapses_to_multiples_of_round_to(method):
    """Every registered method with a target (no list of names): collapsed widths are multiples of 8 or whole."""
    result, _ = _run(method, round_to=8)
    gated = result["model"]
    slim = collapse(gated)
    widths = layer_widths(gated, slim)
    for layer, (before, after) in widths.items():
        assert after % 8 == 0 or after == before, (method, layer, before, after)
    report = result["method_report"]
    if any(after not in (0, before) for before, after in widths.values()) or "rounding" in report:
        rounding = report["rounding"]
        assert rounding["round_to"] == 8
        assert rounding["shift"] == pytest.approx(rounding["ratio"] - rounding["ratio_unrounded"])
