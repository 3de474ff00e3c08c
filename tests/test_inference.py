"""The inference form (BatchNorm folded, channels_last) computes what the slim network computes, and its ONNX
export runs in ONNX Runtime with the same outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.inference import fold_batchnorm, optimize_for_inference


def _trained_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so that a wrong fold cannot pass by accident."""
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


def _slim_resnet20() -> tuple[nn.Module, torch.Tensor]:
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    gated = pk.augment(_trained_bn(pk.create_model("resnet20", num_classes=10, width=8)), x)
    g = torch.Generator().manual_seed(1)
    for h in gated.groups:
        keep = torch.zeros(h.size, dtype=torch.bool)
        keep[torch.randperm(h.size, generator=g)[: max(1, h.size // 2)]] = True
        h.set_mask(keep)
    return pk.collapse(gated, x), x


def _bn_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_form_folds_every_batchnorm_and_keeps_the_outputs(one_thread, channels_last):
    slim, x = _slim_resnet20()
    assert _bn_count(slim) > 0
    inf = optimize_for_inference(slim, x, channels_last=channels_last)
    assert _bn_count(inf) == 0
    assert inf.inference_info["bn_folded"] == _bn_count(slim)
    assert inf.inference_info["channels_last"] is channels_last
    with torch.no_grad():
        ref, out = slim.eval()(x), inf(x)
    assert torch.allclose(ref, out, atol=1e-5, rtol=0), float((ref - out).abs().max())
    assert _bn_count(slim) > 0, "the input network must be left unchanged (save_slim keeps the trainable form)"


def test_auto_layout_chooses_one_and_stays_exact(one_thread):
    slim, x = _slim_resnet20()
    inf = optimize_for_inference(slim, x, channels_last="auto", batch_size=4)
    assert inf.inference_info["channels_last"] in (True, False)
    with torch.no_grad():
        assert torch.allclose(slim.eval()(x), inf(x), atol=1e-5, rtol=0)


class _Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return y if float(y.sum()) > -1e9 else -y


def test_untraceable_model_keeps_its_batchnorm_and_says_so(caplog):
    model = _trained_bn(_Branchy())
    out, folded = fold_batchnorm(model)
    assert folded == 0 and _bn_count(out) == 1
    assert "not folded" in caplog.text
    x = torch.randn(2, 3, 8, 8)
    inf = optimize_for_inference(model, x, channels_last=False)
    assert inf.inference_info["bn_folded"] == 0
    with torch.no_grad():
        assert torch.equal(model(x), inf(x))


def test_bad_arguments_are_named():
    slim, x = _slim_resnet20()
    with pytest.raises(ConfigError, match="channels_last.*'fast'"):
        optimize_for_inference(slim, x, channels_last="fast")
    with pytest.raises(ConfigError, match="atol must be > 0, got 0"):
        optimize_for_inference(slim, x, atol=0)


def test_onnx_runtime_runs_the_inference_form_with_the_same_outputs(tmp_path, one_thread):
    ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is the optional extra prunekit[onnx]")
    from prunekit.latency import measure_latency_onnx

    slim, x = _slim_resnet20()
    inf = optimize_for_inference(slim, x, channels_last=False)
    path = pk.export_onnx(inf, x, tmp_path / "slim.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(y), slim.eval()(x), atol=1e-4, rtol=0)
    lat = measure_latency_onnx(inf, x, (1, 8), warmup=1, repeats=2)
    assert set(lat) == {1, 8} and all(v > 0 for v in lat.values())
