"""The engine on the wider zoo (issue 19): ConvNeXt, ShuffleNetV2, ViT, Swin and timm's CNNs and transformers.

Random masks → collapse → max |slim − gated| ≤ 1e-4 → relaxed MACs/params at hard gates equal the counted ones →
save/load reproduces the outputs exactly. ``tests/test_collapse.py`` runs the same check over the in-house models
(``vit_tiny32`` included) and twelve torchvision CNNs; this file adds the models that need the Linear-feature gates,
head groups or the channel-shuffle fallback, and timm. Inputs are the smallest each model allows (a few
seconds each on a 2-core CPU; ViT-B/16 is the slowest at ~20 s).
"""

from __future__ import annotations

import pytest
import torch
from test_collapse import TORCHVISION as CNN_TV
from test_collapse import _random_masks, _randomize_bn

import prunekit as pk
from prunekit.bench.collapse import ZOO_TIMM, ZOO_TORCHVISION
from prunekit.models import list_models, model_task

pytestmark = pytest.mark.usefixtures("one_thread")

# name -> (input side, builder options): the zoo `prunekit bench collapse --preset zoo` times too
TORCHVISION, TIMM = ZOO_TORCHVISION, ZOO_TIMM
# Transformers: each attention module's heads are one gated group.
WITH_HEADS = {"tv:vit_b_16", "tv:swin_t", "timm:deit_tiny_patch16_224", "timm:vit_small_patch16_224",
              "timm:swin_tiny_patch4_window7_224"}  # fmt: skip
SLOW = {"tv:vit_b_16", "tv:convnext_tiny"}


def test_the_zoo_covers_the_issue() -> None:
    assert len(set(CNN_TV) | set(TORCHVISION)) >= 20 and len(TIMM) >= 10
    assert {"tv:convnext_tiny", "tv:shufflenet_v2_x0_5", "tv:vit_b_16", "tv:swin_t"} <= set(TORCHVISION)


def _case(name: str):
    return pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name


def _check(name: str, size: int, options: dict, tmp_path) -> pk.GatedModel:
    model = pk.create_model(name, num_classes=10, **options).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        _randomize_bn(model, size)
    gated = pk.augment(model, x[:1])
    _random_masks(gated)
    gated.eval()
    slim = pk.collapse(gated)
    with torch.no_grad():
        ref, out = gated(x), slim(x)
    assert (out - ref).abs().max().item() <= 1e-4
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in slim.modules())
    macs = pk.count_macs(slim, x[:1])
    assert macs < pk.count_macs(model, x[:1])
    if not slim.pk_collapse["dummy_channels"]:
        assert macs == pytest.approx(float(pk.relaxed_macs(gated, "hard")), rel=1e-6)
        assert pk.count_params(slim) == pytest.approx(float(pk.relaxed_params(gated, "hard")), rel=1e-6)
    loaded = pk.load_slim(pk.save_slim(slim, tmp_path / "slim.safetensors"))
    with torch.no_grad():
        assert torch.equal(loaded(x), out)
    return gated


def _convnext(gated: pk.GatedModel) -> None:
    """ConvNeXt gates its hidden width; the residual width stays whole with the reason."""
    dims = {h.name: h.size for h in gated.groups}
    # every CNBlock's Linear(C, 4C) → GELU → Linear(4C, C): 3 + 3 + 9 + 3 blocks
    assert len(dims) == 18 and dims["features.1.0.block.3"] == 384 and dims["features.7.2.block.3"] == 3072
    assert all(m.module.__class__.__name__ == "Linear" for h in gated.groups for m in h.members)
    assert gated.fixed_groups and all("LayerNorm" in g.reason for g in gated.fixed_groups)


def _shufflenet(gated: pk.GatedModel) -> None:
    """ShuffleNetV2 gates every group that does not cross a channel shuffle and keeps the others whole."""
    # the inner width of every block's branch2 (1×1 conv → depthwise → 1×1 conv), the stem and conv5
    assert len(gated.groups) == 16 + 2
    assert any("channel shuffle" in (g.reason or "") for g in gated.fixed_groups)
    for h in gated.groups:
        assert not any(m.name.endswith("branch1.2") and m.dim == "out" for m in h.members)  # crosses the shuffle


STRUCTURE = {"tv:convnext_tiny": _convnext, "tv:shufflenet_v2_x0_5": _shufflenet}


@pytest.mark.parametrize("name", [_case(n) for n in [*TORCHVISION, *TIMM]])
def test_random_masks_collapse_exactly(name: str, tmp_path) -> None:
    if name.startswith("timm:"):
        pytest.importorskip("timm")
    size, options = {**TORCHVISION, **TIMM}[name]
    gated = _check(name, size, options, tmp_path)
    heads = [h for h in gated.groups if any(m.dim == "heads" for m in h.members)]
    assert bool(heads) == (name in WITH_HEADS)
    STRUCTURE.get(name, lambda g: None)(gated)


def test_timm_names_build_without_weights_and_are_refused_when_unknown() -> None:
    pytest.importorskip("timm")
    model = pk.create_model("timm:resnet18", num_classes=7, in_channels=1).eval()
    assert model.pk_spec["name"] == "timm:resnet18" and model(torch.randn(1, 1, 32, 32)).shape == (1, 7)
    assert model_task("timm:resnet18") == "classification"
    with pytest.raises(pk.ConfigError, match="timm:resnet18"):
        pk.create_model("timm:resnet1")
    with pytest.raises(pk.ConfigError, match="never downloaded"):
        pk.create_model("timm:resnet18", pretrained=True)
    assert "timm:resnet18" in list_models(include_timm=True)
    assert not any(n.startswith("timm:") for n in list_models())


class _LayerScaled(torch.nn.Module):
    """conv → BN → ReLU → per-channel layer scale (a bare nn.Parameter) → conv: the scale is sliced with its channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.gamma = torch.nn.Parameter(torch.rand(8, 1, 1) + 0.5)
        self.conv2 = torch.nn.Conv2d(8, 6, 3, padding=1)
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gamma * self.bn(self.conv1(x)).relu()
        return self.fc(self.conv2(x).mean((2, 3)))


def test_layer_scale_is_sliced_with_its_channels(tmp_path, monkeypatch) -> None:
    import importlib

    model = _LayerScaled().eval()
    model.pk_spec = {"name": "layer_scaled", "num_classes": 3, "in_channels": 3, "kwargs": {}}
    # not a registered model (registering would leak into the other tests' registry): load_slim builds it directly
    monkeypatch.setattr(importlib.import_module("prunekit.io"), "create_model", lambda **_: _LayerScaled())
    x = torch.randn(2, 3, 8, 8)
    gated = pk.augment(model, x[:1])
    group = gated.group("conv1")
    assert any(m.dim == "param" and m.name == "gamma" for m in group.members)
    group.set_mask(torch.arange(8) % 3 != 0)  # keeps 5 of 8
    slim = pk.collapse(gated)
    assert slim.gamma.shape == (5, 1, 1) and slim.conv2.in_channels == 5
    assert slim.pk_collapse["layers"]["gamma"] == {"type": "param", "axis": 0, "size": 5}
    assert pk.count_params(slim) == pytest.approx(float(pk.relaxed_params(gated, "hard")))
    gated.eval()
    loaded = pk.load_slim(pk.save_slim(slim, tmp_path / "scaled.pt"))
    with torch.no_grad():
        assert (slim(x) - gated(x)).abs().max().item() <= 1e-5
        assert loaded.gamma.shape == (5, 1, 1) and torch.equal(loaded(x), slim(x))
