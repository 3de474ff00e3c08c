"""sDprun: group-sparse gRDA optimizer (METHODS.md section 3)."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.methods import create_method, list_methods
from prunekit.methods.sdprun import SDPrun, coupled_param_groups, sdprun_param_groups, sdprun_threshold


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: extra intra-op threads only add synchronisation cost on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _regression(seed: int = 0, n: int = 256, groups: int = 8, dim: int = 4):
    """y depends only on input groups 0 and 1; the weight [groups, dim] has one row per input group."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, groups, dim, generator=g)
    beta = torch.zeros(groups, dim)
    beta[:2] = torch.randn(2, dim, generator=g) + 1
    y = (x * beta).sum((1, 2)) + 0.01 * torch.randn(n, generator=g)
    return x, y, beta


def _fit(opt: SDPrun, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    loss = torch.tensor(0.0)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((x * w).sum((1, 2)) - y).pow(2).mean() / 2
        loss.backward()
        opt.step()
    return float(loss.detach())


def test_convex_toy_zeroes_irrelevant_groups_exactly_and_keeps_relevant():
    x, y, beta = _regression()
    w = nn.Parameter(torch.randn(8, 4, generator=torch.Generator().manual_seed(1)) * 0.5)
    opt = SDPrun([w], lr=0.05, c=0.05, mu=0.51)
    loss = _fit(opt, w, x, y, 400)
    norms = w.detach().norm(dim=1)
    assert torch.equal(w.detach()[2:], torch.zeros(6, 4))  # exactly zero, not merely small
    assert (norms[:2] > 1).all()
    assert torch.allclose(w.detach()[:2], beta[:2], atol=0.05)
    assert loss < 1e-2
    assert torch.equal(opt.zero_groups()["param0"], torch.arange(2, 8))
    assert opt.sparsity() == pytest.approx(6 / 8)


def test_threshold_follows_the_formula_with_constant_and_changing_lr():
    w = nn.Parameter(torch.ones(3, 2))
    c, mu = 1e-3, 0.51
    opt = SDPrun([w], lr=0.05, c=c, mu=mu)
    for n in range(1, 21):
        w.grad = torch.zeros_like(w)
        opt.step()
        assert opt.state[w]["tau"] == pytest.approx(sdprun_threshold(n, 0.05, c, mu), rel=1e-12)
    expected = opt.state[w]["tau"]
    opt.param_groups[0]["lr"] = 0.01  # τ grows by c·γ^(μ+1/2)·(n^μ − (n−1)^μ) with the current γ
    for n in range(21, 26):
        w.grad = torch.zeros_like(w)
        opt.step()
        expected += c * 0.01 ** (mu + 0.5) * (n**mu - (n - 1) ** mu)
    assert opt.state[w]["tau"] == pytest.approx(expected, rel=1e-12)
    assert opt.state[w]["n"] == 25


def test_soft_threshold_uses_group_size_factor_from_accumulator():
    w = nn.Parameter(torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.03, 0.04, 0.0, 0.0]]))
    for factor, expect_row1_zero in ((True, True), (False, False)):
        p = nn.Parameter(w.detach().clone())
        opt = SDPrun([p], lr=1.0, c=0.03, mu=0.5, group_size_factor=factor)
        p.grad = torch.zeros_like(p)
        opt.step()  # τ = 0.03; threshold 0.03·sqrt(4) = 0.06 with the factor
        thr = 0.03 * (2.0 if factor else 1.0)
        assert torch.allclose(p.detach()[0], w[0] * (1 - thr / 5.0))
        assert bool((p.detach()[1] == 0).all()) == expect_row1_zero
        assert torch.equal(opt.state[p]["accumulator"], w)  # the accumulator keeps the unthresholded value


def test_coupled_group_shares_one_norm():
    a = nn.Parameter(torch.tensor([[1.0, 0.0], [0.01, 0.0]]))
    b = nn.Parameter(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 10.0]]))
    opt = SDPrun([a, b], lr=1.0, c=0.1, mu=0.5, groups={"res": [(a, torch.tensor([0, 1])), (b, torch.tensor([0, 1]))]})
    a.grad, b.grad = torch.zeros_like(a), torch.zeros_like(b)
    opt.step()
    # a's row 1 alone would be thresholded away, but it shares a norm with b's large row 1
    assert (a.detach()[1] != 0).any()
    assert opt.structure_names() == ["res"]
    assert opt.zero_groups() == {}


def test_plain_sgd_for_c_zero_groups_and_param_groups_helper():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    groups = coupled_param_groups(model, None)
    assert set(groups) == {"0"}  # the classifier (last layer) is never sparsified
    pgs = sdprun_param_groups(model, groups, c=1e-3, mu=0.51)
    assert pgs[0]["params"] == [model[0].weight] and pgs[1]["c"] == 0.0
    opt = SDPrun(pgs, lr=0.1, groups=groups)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(2, 2, 6, 6)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        if n != "0.weight":
            assert torch.allclose(p.detach(), before[n] - 0.1 * grads[n]), n
            assert p not in opt.state or not opt.state[p]
    assert opt.state[model[0].weight]["n"] == 1


def test_state_dict_round_trip_gives_identical_next_step():
    x, y, _ = _regression(seed=3)
    w = nn.Parameter(torch.randn(8, 4, generator=torch.Generator().manual_seed(4)))
    opt = SDPrun([w], lr=0.05, c=0.05)
    _fit(opt, w, x, y, 30)
    buf = io.BytesIO()
    torch.save({"w": w.detach().clone(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    _fit(opt, w, x, y, 1)
    w2 = nn.Parameter(saved["w"])
    opt2 = SDPrun([w2], lr=0.05, c=0.05)
    opt2.load_state_dict(saved["opt"])
    assert opt2.state[w2]["n"] == 30
    _fit(opt2, w2, x, y, 1)
    assert torch.equal(w.detach(), w2.detach())
    assert torch.equal(opt.state[w]["accumulator"], opt2.state[w2]["accumulator"])
    assert opt.state[w]["tau"] == opt2.state[w2]["tau"]


def test_bad_arguments_raise_config_error_naming_them():
    w = nn.Parameter(torch.ones(2, 2))
    with pytest.raises(ConfigError, match="mu"):
        SDPrun([w], mu=1.5)
    with pytest.raises(ConfigError, match="c must"):
        SDPrun([w], c=-1)
    with pytest.raises(ConfigError, match="same number"):
        SDPrun([w], groups=[[(w, torch.tensor([0])), (w, torch.tensor([0, 1]))]])
    with pytest.raises(ConfigError, match="c must"):
        create_method("sdprun", c=-0.1)


def test_method_registered_and_trains_a_tiny_cnn():
    assert "sdprun" in list_methods()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))
    x = torch.randn(16, 1, 6, 6)
    y = (x.mean((1, 2, 3)) > 0).long()
    method = create_method("sdprun", c=2.0, coupled=False)
    model = method.prepare(model, x[:2])

    class _Cfg:
        lr = 0.05

    opt = method.make_optimizer(model, _Cfg())
    assert isinstance(opt, SDPrun)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    zero = opt.zero_groups()
    # conv+BN is scale invariant, so the gradient grows as a filter shrinks: only a strong c zeroes filters
    assert "0" in zero and 1 <= zero["0"].numel() < 6
    assert method.step_metrics(model)["sparsity"] == pytest.approx(zero["0"].numel() / 6)
    rows = method.layer_metrics(model)
    assert rows[0]["name"] == "keep_ratio" and rows[0]["layer"] == "0"
    assert torch.equal(model[0].weight.detach()[zero["0"]], torch.zeros(zero["0"].numel(), 1, 3, 3))


def _trained_tiny_resnet(c: float = 0.6, steps: int = 30):
    from prunekit.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet20", width=4, num_classes=3)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 3, (16,))
    method = create_method("sdprun", c=c)
    model = method.prepare(model, x[:2])

    class _Cfg:
        lr = 0.05

    opt = method.make_optimizer(model, _Cfg())
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, method, opt, x


def test_coupled_groups_from_the_engine_share_one_norm_and_zero_together():
    pytest.importorskip("prunekit.augment", reason="the channel-group engine is not in this tree")
    from prunekit.models import create_model

    model = create_model("resnet20", width=4, num_classes=3)
    groups = coupled_param_groups(model, torch.randn(2, 3, 8, 8))
    stem = groups["conv1"]  # the stem and every layer1 block's conv2 write into one residual stream
    expected = [model.conv1.weight] + [model.layer1[i].conv2.weight for i in range(3)]
    assert sorted(id(p) for p, _ in stem) == sorted(id(w) for w in expected)
    assert all(p is not model.fc.weight for ms in groups.values() for p, _ in ms)

    model, method, opt, _ = _trained_tiny_resnet()
    zero = opt.zero_groups()
    assert 0 < opt.sparsity() < 1
    residual = [n for n in zero if len(opt._structures[opt.structure_names().index(n)][1]) > 1]
    assert residual  # at least one coupled residual channel went to zero in all its convs at once
    for name in residual:
        for p, idx in dict(opt._structures)[name]:
            assert torch.equal(p.detach()[idx[zero[name]]], torch.zeros_like(p[idx[zero[name]]]))


def test_finalize_masks_exactly_the_zero_channels_and_collapse_is_exact():
    pytest.importorskip("prunekit.collapse", reason="the collapse engine is not in this tree")
    from prunekit.collapse import collapse

    model, method, opt, x = _trained_tiny_resnet()
    zero = opt.zero_groups()
    gated = method.finalize(model)
    masks = gated.hard_masks()
    for name, idx in zero.items():
        assert not masks[name][idx].any(), name
    assert sum(int((~m).sum()) for m in masks.values()) == sum(int(v.numel()) for v in zero.values())
    slim = collapse(gated, x[:2])
    assert slim.pk_collapse["max_diff"] <= 1e-4
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in model.parameters())
    gated.eval()
    with torch.no_grad():
        assert torch.allclose(slim.eval()(x), gated(x), atol=1e-5)
