"""Model registry and zoo: forward shapes, parameter counts, torchvision by name, weights files, errors."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn

import prunekit.models as zoo
from prunekit.errors import CheckpointError, ConfigError
from prunekit.models import create_model, list_models

IN_HOUSE = list_models(include_torchvision=False)
CLASSIFIERS = [n for n in IN_HOUSE if zoo.model_task(n) == "classification"]
SEGMENTERS = [n for n in IN_HOUSE if zoo.model_task(n) == "segmentation"]


def _nparams(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registry_lists_in_house_and_torchvision():
    names = list_models()
    for n in ("resnet20", "resnet32", "resnet56", "resnet110"):
        assert n in names
    assert "tv:resnet50" in names and "tv:mobilenet_v3_small" in names
    # Only classification models: no detection/segmentation/video builders.
    assert not any(n.startswith("tv:fasterrcnn") or n.startswith("tv:deeplab") or n.startswith("tv:r3d") for n in names)
    assert set(IN_HOUSE) <= set(names) and not any(n.startswith("tv:") for n in IN_HOUSE)


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("in_channels", [3, 1])
def test_classifier_forward_shape(name, in_channels):
    model = create_model(name, num_classes=7, in_channels=in_channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    assert model.pk_task == "classification"


@pytest.mark.parametrize("name", CLASSIFIERS + SEGMENTERS)
def test_spec_rebuilds_same_architecture(name):
    model = create_model(name, num_classes=5, in_channels=2)
    spec = json.loads(json.dumps(model.pk_spec))  # must be JSON-serialisable
    assert spec["name"] == name and spec["num_classes"] == 5 and spec["in_channels"] == 2
    again = create_model(**spec)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    again.load_state_dict(model.state_dict())


@pytest.mark.parametrize(("name", "expected"), [("resnet20", 0.27e6), ("resnet56", 0.85e6)])
def test_cifar_resnet_parameter_count(name, expected):
    n = _nparams(create_model(name))
    assert abs(n - expected) / expected < 0.01, n


def test_cifar_resnet_structure():
    model = create_model("resnet110")
    blocks = [m for m in model.modules() if type(m).__name__ == "BasicBlock"]
    assert len(blocks) == 54  # 3 stages × 18
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 109  # stem + 2 per block; with the fc, 110 weighted layers
    # Option B shortcuts: exactly two 1×1 projections (stage 2 and 3 entries).
    proj = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert [(p.in_channels, p.out_channels, p.stride) for p in proj] == [(16, 32, (2, 2)), (32, 64, (2, 2))]


def test_cifar_resnet_traces_with_fx():
    gm = torch.fx.symbolic_trace(create_model("resnet20").eval())
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(gm(x), gm.forward(x))
    assert any(n.op == "call_function" and "add" in str(n.target) for n in gm.graph.nodes)


def test_bad_resnet_depth_and_options():
    from prunekit.models.cifar_resnet import CifarResNet

    with pytest.raises(ConfigError, match="depth"):
        CifarResNet(depth=21)
    with pytest.raises(ConfigError, match="resnet20"):
        create_model("resnet20", bogus=1)
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("resnet20", num_classes=0)
    with pytest.raises(ConfigError, match="in_channels"):
        create_model("resnet20", in_channels=0)


def test_unknown_name_lists_close_matches():
    with pytest.raises(ConfigError, match=r"unknown model 'resnet21'.*resnet20"):
        create_model("resnet21")
    with pytest.raises(ConfigError, match=r"tv:resnet50"):
        create_model("tv:resnt50")
    with pytest.raises(ConfigError, match=r"tv:mobilenet_v2"):
        create_model("mobilenet_v2")  # a torchvision name without the prefix


@pytest.mark.parametrize(
    ("name", "in_channels"),
    [
        ("tv:resnet18", 3),
        ("tv:mobilenet_v3_small", 3),
        ("tv:densenet121", 3),
        ("tv:resnet18", 1),
        ("tv:mobilenet_v3_small", 1),
    ],
)
def test_torchvision_models_at_32px(name, in_channels):
    model = create_model(name, num_classes=10, in_channels=in_channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 32, 32))
    assert out.shape == (2, 10)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == in_channels
    assert model.pk_spec == {"name": name, "num_classes": 10, "in_channels": in_channels, "kwargs": {}}


def test_torchvision_options_pass_through():
    model = create_model("tv:mobilenet_v2", num_classes=3, width_mult=0.5)
    assert model.pk_spec["kwargs"] == {"width_mult": 0.5}
    assert model.classifier[-1].out_features == 3
    with pytest.raises(ConfigError, match="tv:resnet18"):
        create_model("tv:resnet18", width_mult=0.5)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weights_file_round_trip(tmp_path, suffix):
    src = create_model("resnet20", num_classes=10)
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save(src.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    dst = create_model("resnet20", num_classes=10, weights=path)
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k


def test_weights_classifier_mismatch_is_left_fresh(tmp_path, caplog):
    src = create_model("tv:resnet18", num_classes=1000)
    path = tmp_path / "imagenet_like.pt"
    torch.save({"state_dict": src.state_dict()}, path)
    with caplog.at_level(logging.WARNING, logger="prunekit.models._weights"):
        dst = create_model("tv:resnet18", num_classes=10, weights=path)
    assert "fc.weight" in caplog.text
    assert dst.fc.out_features == 10
    assert torch.equal(dst.conv1.weight, src.conv1.weight)
    assert torch.equal(dst.layer4[1].bn2.running_var, src.layer4[1].bn2.running_var)


def test_weights_other_mismatch_names_the_keys(tmp_path):
    path = tmp_path / "r20.pt"
    torch.save(create_model("resnet20").state_dict(), path)
    with pytest.raises(CheckpointError, match=r"conv1\.weight"):
        create_model("resnet20", in_channels=1, weights=path)
    with pytest.raises(CheckpointError, match="missing"):
        create_model("resnet32", weights=path)
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        create_model("resnet20", weights=bad)
    with pytest.raises(ConfigError, match="weights"):
        create_model("resnet20", weights=tmp_path / "absent.pt")


@pytest.mark.parametrize(("width", "depth", "size"), [(16, 3, 32), (8, 2, 20), (4, 4, 48)])
def test_unet_forward_shape(width, depth, size):
    model = create_model("unet", num_classes=11, in_channels=3, width=width, depth=depth).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 11, size, size)
    assert model.pk_task == "segmentation" and model.pk_spec["kwargs"] == {"width": width, "depth": depth}
    ups = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(ups) == depth and ups[-1].out_channels == width


def test_unet_rejects_indivisible_sizes_and_traces():
    model = create_model("unet", num_classes=3)
    with pytest.raises(ConfigError, match=r"divisible by 2\*\*depth = 8, got 30×32"):
        model(torch.randn(1, 3, 30, 32))
    gm = torch.fx.symbolic_trace(model.eval())
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(gm(x), model(x))
    with pytest.raises(ConfigError, match="depth"):
        create_model("unet", depth=0)


def test_zoo_uses_only_standard_layers():
    allowed = (
        nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Linear, nn.MaxPool2d,
        nn.AdaptiveAvgPool2d, nn.Dropout, nn.Identity, nn.Sequential, nn.ModuleList,
        nn.LayerNorm, nn.GELU,  # vit_tiny32 (its attention is prunekit.heads.HeadAttention: qkv and proj Linears)
    )  # fmt: skip
    for name in IN_HOUSE:
        model = create_model(name)
        for m in model.modules():
            if not list(m.children()):
                assert isinstance(m, allowed), f"{name}: {type(m).__name__}"
            if hasattr(m, "inplace"):
                assert not m.inplace, f"{name}: in-place {type(m).__name__}"


def test_vgg_and_mobilenet_widths():
    vgg = create_model("vgg16", width_mult=0.25)
    convs = [m for m in vgg.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and convs[-1].out_channels == 128 and vgg.classifier.in_features == 128
    assert len([m for m in create_model("vgg11").modules() if isinstance(m, nn.Conv2d)]) == 8
    full, half = create_model("mobilenetv2"), create_model("mobilenetv2", width_mult=0.5)
    assert _nparams(half) < 0.6 * _nparams(full)
    # The CIFAR variant downsamples 32 -> 4 (8×), not 32×.
    feats = full.features(torch.randn(1, 3, 32, 32))
    assert feats.shape[-2:] == (4, 4)
