"""Vision transformers (issue 19): attention heads and MLP widths as gated groups, exact collapse, attention MACs,
save/load, converted attention modules, failures that name the layer, and a crisp run on the in-house ViT."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.swin_transformer import ShiftedWindowAttention

import prunekit as pk
from prunekit.heads import HeadAttention, MultiheadSelfAttention, WindowHeads, convert

pytestmark = pytest.mark.usefixtures("one_thread")

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _vit() -> nn.Module:
    torch.manual_seed(0)
    return pk.create_model("vit_tiny32", num_classes=10).eval()


def test_heads_and_mlp_widths_are_the_groups() -> None:
    gated = pk.augment(_vit(), X[:1])
    heads = [h for h in gated.groups if h.name.endswith(".attn")]
    mlps = [h for h in gated.groups if h.name.endswith(".mlp.0")]
    assert len(heads) == 4 and len(mlps) == 4 and len(gated.groups) == 8
    h = heads[0]
    assert h.size == 4 and h.critical  # the prune rule keeps one head
    dims = {(m.name, m.dim): len(m.idxs) for m in h.members}
    assert dims == {("blocks.0.attn.qkv", "out"): 192, ("blocks.0.attn.proj", "in"): 64, ("blocks.0.attn", "heads"): 4}
    assert mlps[0].size == 256
    # the embedding width feeds LayerNorms; the Q/K/V width is pruned by heads only
    reasons = " ".join(g.reason for g in gated.fixed_groups)
    assert "LayerNorm" in reasons and "pruned by whole heads" in reasons


def test_closing_heads_removes_them_exactly_and_updates_num_heads(tmp_path) -> None:
    model = _vit()
    gated = pk.augment(model, X[:1])
    gated.group("blocks.0.attn").set_mask(torch.tensor([True, False, True, False]))
    gated.group("blocks.2.attn").set_mask(torch.tensor([False, False, False, True]))
    with torch.no_grad():  # soft values on the survivors: folded into the projection's columns
        gated.group("blocks.0.attn").gate.logit.uniform_(-0.5, 1.0)
    slim = pk.collapse(gated)
    a0, a2 = slim.blocks[0].attn, slim.blocks[2].attn
    assert (a0.num_heads, a0.qkv.out_features, a0.proj.in_features) == (2, 96, 32)
    assert (a2.num_heads, a2.qkv.out_features, a2.proj.in_features) == (1, 48, 16)
    gated.eval()
    with torch.no_grad():
        assert (slim(X) - gated(X)).abs().max().item() <= 1e-5
    loaded = pk.load_slim(pk.save_slim(slim, tmp_path / "vit.pt"))
    assert loaded.blocks[2].attn.num_heads == 1
    with torch.no_grad():
        assert torch.equal(loaded(X), slim(X))


def test_macs_count_attention_matmuls() -> None:
    """Convention: Q·Kᵀ and A·V cost 2·T²·d MACs per head; linears T·C_in·C_out; the patch conv as a conv."""
    model = _vit()
    t, c, classes = 65, 64, 10
    patch = 64 * 3 * 16 * c
    block = t * c * 3 * c + 2 * t * t * c + t * c * c + 2 * t * c * 4 * c
    assert pk.count_macs(model, X[:1]) == patch + 4 * block + c * classes
    gated = pk.augment(model, X[:1])
    gated.group("blocks.1.attn").set_mask(torch.tensor([True, False, False, False]))
    slim = pk.collapse(gated)
    # three of four heads gone: their Q/K/V rows, projection columns and matrix products
    saved = 3 * (t * c * 3 * 16 + 2 * t * t * 16 + t * 16 * c)
    assert pk.count_macs(slim, X[:1]) == patch + 4 * block + c * classes - saved
    assert float(pk.relaxed_macs(gated, "hard")) == pytest.approx(pk.count_macs(slim, X[:1]), rel=1e-6)


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_is_converted_exactly(batch_first: bool) -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
    x = torch.randn(2, 5, 32) if batch_first else torch.randn(5, 2, 32)
    new = convert(mha)
    assert isinstance(new, MultiheadSelfAttention) and new.num_heads == 4
    with torch.no_grad():
        ref, _ = mha(x, x, x, need_weights=False)
        out, weights = new(x, x, x, need_weights=False)
    assert weights is None and torch.allclose(out, ref, atol=1e-6)
    with pytest.raises(pk.UnsupportedModelError, match="self-attention"):
        new(x, torch.zeros_like(x), x)


@pytest.mark.parametrize("shift", [[0, 0], [2, 2]])
def test_torchvision_window_attention_is_converted_exactly(shift) -> None:
    torch.manual_seed(0)
    attn = ShiftedWindowAttention(32, [4, 4], shift, num_heads=4).eval()
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
    x = torch.randn(2, 10, 10, 32)  # padded to 12×12: three windows a side
    with torch.no_grad():
        ref = attn(x)
        assert convert(attn) is attn and isinstance(attn, WindowHeads)
        assert torch.allclose(attn(x), ref, atol=1e-6)


def test_head_attention_checks_its_arguments() -> None:
    with pytest.raises(pk.UnsupportedModelError, match="num_heads"):
        HeadAttention(30, 4)
    assert HeadAttention(30, 4, head_dim=8).qkv.out_features == 96
    with pytest.raises(pk.ConfigError, match="image_size"):
        pk.create_model("vit_tiny32", image_size=30)


class _Scaled(nn.Module):
    """A conv followed by a per-channel buffer the dependency analysis cannot see: slicing the conv breaks it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.register_buffer("scale", torch.ones(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.scale.view(1, -1, 1, 1)


class _FailsLater(nn.Module):
    """Runs once (the dependency analysis), then fails: a stand-in for a gate whose shape does not fit."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("The size of tensor a (4) must match the size of tensor b (8)")
        return x


def _net(middle: nn.Module) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), middle, nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2),
    )  # fmt: skip


def test_failures_inside_augment_and_collapse_name_the_layer() -> None:
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(pk.UnsupportedModelError, match=r"layer '3' \(_FailsLater\).*size of tensor a"):
        pk.augment(_net(_FailsLater()), x)
    gated = pk.augment(_net(_Scaled()), x)
    for h in gated.groups:
        h.set_mask(torch.arange(h.size) % 2 == 0)
    with pytest.raises(pk.CollapseError, match=r"collapsed network fails in layer '3' \(_Scaled\)"):
        pk.collapse(gated)

    class Broken(nn.Module):
        def forward(self, x):
            return x.view(-1, 7)

    with pytest.raises(pk.UnsupportedModelError, match=r"cannot trace .* layer '3' \(Broken\)"):
        pk.augment(_net(Broken()), x)


def test_crisp_trains_the_small_vit_and_collapses_exactly() -> None:
    from prunekit.train.config import RunConfig, TrainConfig
    from prunekit.train.experiment import run_experiment

    cfg = RunConfig(
        model="vit_tiny32", dataset="shapes", method="crisp", method_options={"target_macs": 0.5},
        data_options={"num_samples": 64, "num_test": 16, "image_size": 32},
        train=TrainConfig(epochs=3, batch_size=16, lr=0.01, max_steps_per_epoch=2, log_every=1, num_threads=1,
                          device="cpu"),
    )  # fmt: skip
    result = run_experiment(cfg)
    gated = result["model"]
    assert any(h.name.endswith(".attn") for h in gated.groups)
    ratio = float(pk.macs_ratio(gated, "hard"))
    report = result["method_report"]
    assert 0 < ratio < 1 and report["ratio"] == pytest.approx(ratio, abs=1e-6)
    assert abs(ratio - 0.5) <= 0.1  # the target, by the own rule or its calibration
    slim = pk.collapse(gated)  # raises CollapseError if not exact
    x = gated.example_input[:1]
    assert pk.count_macs(slim, x) / pk.count_macs(gated, x) == pytest.approx(ratio, rel=1e-6)
