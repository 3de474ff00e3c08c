"""Fake quantisation: grid levels, straight-through gradient, composition with DPP masks, size in bits."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit.errors import ConfigError
from prunekit.gates.dpp import DPPMask, deterministic_mask
from prunekit.quant import (
    FakeQuantize,
    bake_,
    channel_scales,
    fake_quantize,
    layer_bits,
    model_size_bits,
    qmax,
    quantize_,
)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_levels_are_a_symmetric_per_channel_grid(bits):
    torch.manual_seed(0)
    w = torch.randn(6, 5, 3, 3) * torch.logspace(-2, 1, 6).view(6, 1, 1, 1)
    q = fake_quantize(w, bits)
    scale = channel_scales(w, bits).view(6, 1, 1, 1)
    levels = q / scale
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert levels.abs().max() <= qmax(bits) + 1e-4
    for c in range(6):
        assert q[c].unique().numel() <= 2**bits - 1
    # the largest magnitude of every channel is exactly representable, and rounding error is ≤ half a step
    torch.testing.assert_close(q.abs().amax(dim=(1, 2, 3)), w.abs().amax(dim=(1, 2, 3)))
    assert ((q - w).abs() <= scale / 2 + 1e-6).all()


def test_two_bit_grid_is_minus_one_zero_one():
    w = torch.tensor([[-1.0, -0.4, 0.2, 0.6, 1.0]])
    assert torch.equal(fake_quantize(w, 2), torch.tensor([[-1.0, 0.0, 0.0, 1.0, 1.0]]))


def test_zeros_stay_zero_and_zero_rows_are_safe():
    w = torch.tensor([[0.0, 0.3, -0.7], [0.0, 0.0, 0.0]])
    q = fake_quantize(w, 4)
    assert q[0, 0] == 0 and torch.equal(q[1], torch.zeros(3)) and torch.isfinite(q).all()


def test_straight_through_gradient_is_identity():
    torch.manual_seed(1)
    w = torch.randn(4, 7, requires_grad=True)
    c = torch.randn(4, 7)
    (fake_quantize(w, 3) * c).sum().backward()
    assert torch.equal(w.grad, c)


def test_bad_bit_widths_are_refused():
    for bits in (1, 17, 4.5):
        with pytest.raises(ConfigError, match="bits"):
            qmax(bits)


def test_quantize_composes_with_a_dpp_mask_on_the_real_weight():
    torch.manual_seed(2)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    w0 = conv.weight.detach().clone()
    mask = DPPMask(conv.weight.shape, "kernel", keep=0.5)
    parametrize.register_parametrization(conv, "weight", mask)
    quantize_(conv, 4)
    quantize_(conv, 4)  # idempotent: one quantiser per weight
    assert [type(p).__name__ for p in conv.parametrizations.weight] == ["DPPMask", "FakeQuantize"]
    assert layer_bits(conv) == 4
    conv.eval()
    a = mask.expand(deterministic_mask(mask.logits, mask.k))
    expect = fake_quantize(w0 * a, 4)
    torch.testing.assert_close(conv.weight, expect)
    assert (conv.weight[a.expand_as(w0) == 0] == 0).all()
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(conv(x), nn.functional.conv2d(x, expect, conv.bias, padding=1))
    conv.train()
    conv(x).sum().backward()
    assert conv.parametrizations.weight.original.grad.abs().sum() > 0 and mask.logits.grad.abs().sum() > 0


def test_quantize_respects_filter_fn_and_bake_keeps_values():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    quantize_(model, 3, filter_fn=lambda m, name: name == "0")
    assert layer_bits(model[0]) == 3 and layer_bits(model[2]) is None
    q = model[0].weight.detach().clone()
    bake_(model)
    assert not parametrize.is_parametrized(model[0]) and torch.equal(model[0].weight, q)
    assert isinstance(model[0].weight, nn.Parameter)


def test_size_in_bits_counts_kept_weights_scales_and_index_overhead():
    fc = nn.Linear(8, 4)
    dense = model_size_bits(fc)
    assert dense["bits"] == dense["dense_bits"] == (32 + 4) * 32 and dense["ratio"] == 1.0
    quantize_(fc, 4)
    q = model_size_bits(fc)
    assert q["bits"] == 32 * 4 + 4 * 32 + 4 * 32  # weights, per-channel scales, biases
    fc2 = nn.Linear(8, 4)
    parametrize.register_parametrization(fc2, "weight", DPPMask(fc2.weight.shape, "weight", keep=0.5))
    quantize_(fc2, 4)
    s = model_size_bits(fc2)
    # 4 of 8 kept per row: 16 weights × 4 bits; index overhead per row min(8-bit bitmap, 4 × 3 bits) = 8
    assert s["kept_weights"] == 16 and s["mask_bits"] == 4 * 8
    assert s["bits"] == 16 * 4 + 4 * 32 + 4 * 8 + 4 * 32


def test_size_of_a_filter_gated_model_counts_removed_channels_as_gone():
    from prunekit.augment import augment

    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 4, 1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    gated = augment(model, torch.randn(1, 3, 6, 6), gate="dpp", gate_options={"keep": 0.5})
    (group,) = gated.groups
    group.set_mask(torch.tensor([1, 0, 1, 0, 1, 0, 1, 0], dtype=torch.bool))
    size = model_size_bits(gated)
    assert size["kept_weights"] == 4 * 3 * 9 + 4 * 4
    assert size["total_weights"] == 8 * 3 * 9 + 4 * 8


def test_fake_quantize_module_repr():
    assert "bits=5" in repr(FakeQuantize(5))
