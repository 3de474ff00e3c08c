"""Collapse is exact across the zoo: random masks → slim net with the same outputs, MACs and params equal
to the relaxed cost at hard gates, and a save → load round trip that reproduces the outputs bit for bit."""

from __future__ import annotations

import pytest
import torch

import prunekit as pk
from prunekit.models import list_models

IN_HOUSE = [m for m in list_models(include_torchvision=False)]
# plain, residual, bottleneck, depthwise/inverted residual, SE, concat (DenseNet, GoogLeNet, SqueezeNet fire), grouped
TORCHVISION = [
    "tv:vgg11_bn",
    "tv:resnet18",
    "tv:resnet50",
    "tv:mobilenet_v2",
    "tv:mobilenet_v3_small",
    "tv:efficientnet_b0",
    "tv:mnasnet0_5",
    "tv:densenet121",
    "tv:googlenet",
    "tv:squeezenet1_1",
    "tv:resnext50_32x4d",
    "tv:regnet_x_400mf",
]
SLOW_TV = {"tv:densenet121", "tv:resnet50", "tv:resnext50_32x4d", "tv:googlenet", "tv:vgg11_bn", "tv:efficientnet_b0"}


def _input(name: str) -> torch.Tensor:
    size = 64 if name.startswith("tv:") else 32
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def _build(name: str) -> torch.nn.Module:
    kwargs = {"aux_logits": False, "init_weights": False} if name == "tv:googlenet" else {}
    return pk.create_model(name, num_classes=10, **kwargs).eval()


def _randomize_bn(model: torch.nn.Module, size: int = 32) -> None:
    """Non-trivial BN affine terms and statistics calibrated on random data, as in a trained network.

    The BN constant β − γμ/√(σ²+ε) of a closed channel is then far from 0, and outputs stay O(1)
    (identity statistics would let a 110-layer net's outputs grow to ~1e3, beyond fp32's 1e-4).
    """
    g = torch.Generator().manual_seed(3)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.weight.data.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.5)
        m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, size, size, generator=g))
    model.eval()


def _random_masks(gated: pk.GatedModel, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for h in gated.groups:
        mask = torch.rand(h.size, generator=g) > 0.5
        if not mask.any():
            mask[torch.randint(h.size, (1,), generator=g)] = True
        h.set_mask(mask)


def _params(name: str):
    return pytest.param(name, marks=pytest.mark.slow) if name in SLOW_TV else name


@pytest.mark.parametrize("name", IN_HOUSE + [_params(n) for n in TORCHVISION])
def test_random_masks_collapse_exactly(name: str, tmp_path) -> None:
    model = _build(name)
    x = _input(name)
    _randomize_bn(model, x.shape[-1])
    gated = pk.augment(model, x[:1])
    assert len(gated.groups) > 0
    _random_masks(gated)
    # one group with a single survivor
    gated.groups[-1].set_mask(torch.arange(gated.groups[-1].size) == 0)
    gated.eval()
    slim = pk.collapse(gated)
    with torch.no_grad():
        ref, out = gated(x), slim(x)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-4
    assert not any(isinstance(m, pk.GatedModel) for m in slim.modules())
    assert all(len(m._forward_hooks) == 0 for m in slim.modules())
    assert pk.count_macs(slim, x[:1]) < pk.count_macs(model, x[:1])
    if not slim.pk_collapse["dummy_channels"]:
        assert pk.count_macs(slim, x[:1]) == pytest.approx(float(pk.relaxed_macs(gated, "hard")), rel=1e-6)
        assert pk.count_params(slim) == pytest.approx(float(pk.relaxed_params(gated, "hard")), rel=1e-6)
    path = pk.save_slim(slim, tmp_path / "slim.pt")
    loaded = pk.load_slim(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), out)


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "tv:resnet18"])
def test_closed_branch_is_removed_and_exact(name: str) -> None:
    model = _build(name)
    x = _input(name)
    _randomize_bn(model, x.shape[-1])
    gated = pk.augment(model, x[:1])
    inner = [h for h in gated.groups if not h.critical]
    assert inner, "a residual net has non-critical inner groups"
    inner[0].set_mask(torch.zeros(inner[0].size, dtype=torch.bool))
    slim = pk.collapse(gated)
    info = slim.pk_collapse
    assert info["removed"], "the closed branch's layers are replaced"
    assert info["dummy_channels"] == []
    gated.eval()
    with torch.no_grad():
        assert (slim(x) - gated(x)).abs().max().item() <= 1e-4
    # the branch still adds BN's constant through the trunk: dropping it would change the output
    assert pk.count_macs(slim, x[:1]) == pytest.approx(float(pk.relaxed_macs(gated, "hard")), rel=1e-6)


def test_unet_concat_skips_collapse_exactly() -> None:
    model = pk.create_model("unet", num_classes=3).eval()
    _randomize_bn(model)
    x = torch.randn(2, 3, 32, 32)
    gated = pk.augment(model, x[:1])
    _random_masks(gated, seed=5)
    slim = pk.collapse(gated)
    gated.eval()
    with torch.no_grad():
        assert slim(x).shape == (2, 3, 32, 32)
        assert (slim(x) - gated(x)).abs().max().item() <= 1e-4
    # the decoder conv after a concatenation loses input channels from both inputs
    widths = pk.layer_widths(gated, slim)
    assert widths and all(after <= before for before, after in widths.values())


def test_classifier_outputs_are_never_pruned() -> None:
    model = pk.create_model("resnet20", num_classes=7)
    gated = pk.augment(model, torch.randn(1, 3, 32, 32))
    for h in gated.groups:
        for m in h.members:
            assert not (m.dim == "out" and isinstance(m.module, torch.nn.Linear))
    for h in gated.groups:
        h.set_mask(torch.arange(h.size) < max(1, h.size // 4))
    assert pk.collapse(gated)(torch.randn(3, 3, 32, 32)).shape == (3, 7)


def test_collapse_refuses_wrong_network(monkeypatch) -> None:
    import importlib

    C = importlib.import_module("prunekit.collapse")  # the package attribute is the function

    model = pk.create_model("resnet20")
    gated = pk.augment(model, torch.randn(1, 3, 32, 32))
    _random_masks(gated)
    # sabotage folding: a collapse that forgets the gate values must be refused, not returned
    monkeypatch.setattr(C, "fold_into_", lambda module, v, name: None)
    with pytest.raises(pk.CollapseError, match="differs"):
        pk.collapse(gated)


def test_collapse_needs_gated_model() -> None:
    with pytest.raises(pk.ConfigError, match="GatedModel"):
        pk.collapse(pk.create_model("resnet20"))


def test_collapse_with_soft_gate_values_folds_them() -> None:
    model = pk.create_model("vgg11").eval()
    _randomize_bn(model)
    x = torch.randn(2, 3, 32, 32)
    gated = pk.augment(model, x[:1])
    with torch.no_grad():
        for h in gated.groups:
            h.gate.logit.uniform_(-0.5, 1.0)  # soft values in (0.08, 0.99): must be folded, not dropped
    _random_masks(gated, seed=2)
    slim = pk.collapse(gated)
    gated.eval()
    with torch.no_grad():
        assert (slim(x) - gated(x)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", ["resnet20", "tv:mobilenet_v2"])
def test_block_gates_remove_whole_residual_blocks(name: str) -> None:
    model = _build(name)
    x = _input(name)
    _randomize_bn(model, x.shape[-1])
    gated = pk.augment(model, x[:1], gate="crisp", block_gate="bernoulli")
    assert len(gated.branches) == (9 if name == "resnet20" else 10)
    assert len(gated.block_gates) == len(gated.branches)
    # close two blocks; their inner groups are closed with them, for the cost model and for collapse
    for b in list(gated.block_gates)[:2]:
        b.set_mask(torch.zeros(1, dtype=torch.bool))
    slim = pk.collapse(gated)
    assert slim.pk_collapse["removed_blocks"] == [gated.branches[0].name, gated.branches[1].name]
    gated.eval()
    with torch.no_grad():
        assert (slim(x) - gated(x)).abs().max().item() <= 1e-4
    assert pk.count_macs(slim, x[:1]) == pytest.approx(float(pk.relaxed_macs(gated, "hard")), rel=1e-6)
    assert pk.count_macs(slim, x[:1]) < pk.count_macs(model, x[:1])


def test_slim_shares_no_tensor_with_the_gated_model() -> None:
    model = pk.create_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    gated = pk.augment(model, x[:1])
    _random_masks(gated)
    gated.groups[0].set_mask(torch.ones(gated.groups[0].size, dtype=torch.bool))  # some layers stay untouched
    slim = pk.collapse(gated)
    gated.eval()
    with torch.no_grad():
        before = gated(x).clone()
        for t in list(slim.parameters()) + list(slim.buffers()):
            t.add_(1)  # training the slim net must never change the gated one
        assert torch.equal(gated(x), before)
    ours = {t.untyped_storage().data_ptr() for t in list(gated.parameters()) + list(gated.buffers()) if t.numel()}
    assert not any(t.untyped_storage().data_ptr() in ours for t in list(slim.parameters()) + list(slim.buffers()) if t.numel())
