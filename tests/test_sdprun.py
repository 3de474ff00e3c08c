"""sDprun: group-sparse gRDA optimizer (METHODS.md section 3)."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.methods import create_method, list_methods
from prunekit.methods.sdprun import SDPrun, coupled_param_groups, sdprun_param_groups, sdprun_threshold
from prunekit.train.loop import lr_factor


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
    assert [p for p, _ in groups["0"]] == [model[0].weight, model[0].bias]  # a filter and its bias: one structure
    pgs = sdprun_param_groups(model, groups, c=1e-3, mu=0.51)
    assert pgs[0]["params"] == [model[0].weight, model[0].bias] and pgs[1]["c"] == 0.0
    assert pgs[0]["lr_schedule"] is False and pgs[1].get("lr_schedule", True)  # only dual averaging keeps its lr
    opt = SDPrun(pgs, lr=0.1, groups=groups)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(2, 2, 6, 6)).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        if n not in ("0.weight", "0.bias"):
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
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ConfigError, match=f"target_macs must be in \\(0, 1\\] or None, got {bad}"):
            create_method("sdprun", target_macs=bad)
    for name, bad in (("ramp", 1.5), ("gain", 0.0), ("max_rate", 0.0), ("start", 0.0), ("start", 1.5), ("lr", 0.0)):
        with pytest.raises(ConfigError, match=f"{name} must"):
            create_method("sdprun", **{name: bad})


class _Cfg:
    lr = 0.05


def _train(model: nn.Module, method, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float = 0.05,
           epochs: int = 1, batch: int | None = None, seed: int = 0):
    """The loop's hook order (prepare, make_optimizer, on_epoch_start, step, after_step) on one tensor dataset."""
    model = method.prepare(model, x[:2])
    cfg = _Cfg()
    cfg.lr = lr
    opt = method.make_optimizer(model, cfg)
    g = torch.Generator().manual_seed(seed)
    per_epoch = steps // epochs
    step = 0
    for epoch in range(epochs):
        method.on_epoch_start(model, epoch, epochs)
        for _ in range(per_epoch):
            idx = torch.randint(0, len(x), (batch,), generator=g) if batch else torch.arange(len(x))
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            method.after_step(model, step, epoch)
            step += 1
    return model, opt


def test_method_with_fixed_c_trains_a_tiny_cnn_and_reports_per_layer():
    assert "sdprun" in list_methods()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))
    x = torch.randn(16, 1, 6, 6)
    y = (x.mean((1, 2, 3)) > 0).long()
    method = create_method("sdprun", c=2.0, coupled=False, target_macs=None)
    model, opt = _train(model, method, x, y, 60)
    assert isinstance(opt, SDPrun)
    zero = opt.zero_groups()
    assert "0" in zero and 1 <= zero["0"].numel() < 6
    assert method.step_metrics(model)["sparsity"] == pytest.approx(zero["0"].numel() / 6)
    rows = method.layer_metrics(model)
    assert rows[0]["name"] == "keep_ratio" and rows[0]["layer"] == "0"
    assert torch.equal(model[0].weight.detach()[zero["0"]], torch.zeros(zero["0"].numel(), 1, 3, 3))
    assert torch.equal(model[0].bias.detach()[zero["0"]], torch.zeros(zero["0"].numel()))  # the bias is in its row


def test_groups_hold_every_parameter_of_a_coupled_channel_bn_included():
    from prunekit.models import create_model

    model = create_model("resnet20", width=4, num_classes=3)
    groups = coupled_param_groups(model, torch.randn(2, 3, 8, 8))
    # the stem and every layer1 block's conv2 write into one residual stream; their BNs sit on it
    stem = {id(p) for p, _ in groups["conv1"]}
    expected = [model.conv1.weight, model.bn1.weight, model.bn1.bias]
    for b in model.layer1:
        expected += [b.conv2.weight, b.bn2.weight, b.bn2.bias]
    assert stem == {id(p) for p in expected}
    inner = groups["layer1.0.conv1"]
    blk = model.layer1[0]
    assert [id(p) for p, _ in inner] == [id(blk.conv1.weight), id(blk.bn1.weight), id(blk.bn1.bias)]
    assert all(torch.equal(i, torch.arange(4)) for _, i in inner)
    assert all(p is not model.fc.weight and p is not model.fc.bias for ms in groups.values() for p, _ in ms)
    # every BN parameter of the net is sparsified with its channel, none is left to plain SGD
    pgs = sdprun_param_groups(model, groups, c=1e-3, mu=0.51)
    bn = {id(p) for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in (m.weight, m.bias)}
    assert bn <= {id(p) for p in pgs[0]["params"]}
    assert {id(p) for p in pgs[1]["params"]} == {id(model.fc.weight), id(model.fc.bias)}


def test_a_group_with_bn_reaches_exact_zero_where_the_conv_alone_does_not():
    """Pitfall 1: conv+BN is scale-invariant. Thresholding the filter alone shrinks it, its gradient grows as
    it shrinks, and the accumulator is pushed back up to just above τ: no channel dies and BN keeps every
    output at full scale. With γ/β in the group the threshold takes whole channels to an exact zero output."""
    def run(with_bn: bool):
        torch.manual_seed(0)
        conv, bn = nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        model = nn.Sequential(conv, bn, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        members = [(conv.weight, torch.arange(4))]
        if with_bn:
            members += [(bn.weight, torch.arange(4)), (bn.bias, torch.arange(4))]
        groups = {"c": members}
        opt = SDPrun(sdprun_param_groups(model, groups, c=2.0, mu=0.51), lr=0.05, groups=groups,
                     group_size_factor=False)
        x = torch.randn(32, 1, 6, 6, generator=torch.Generator().manual_seed(1))
        y = (x[:, 0, :3].mean((1, 2)) > 0).long()
        for _ in range(150):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            out = bn(conv(x)).abs().amax((0, 2, 3))
        return opt.zero_groups().get("c", torch.tensor([], dtype=torch.long)), out, opt

    zero, out, _ = run(True)
    assert 1 <= zero.numel() < 4
    assert torch.equal(out[zero], torch.zeros(zero.numel()))  # the whole channel outputs exactly 0
    assert (out[[j for j in range(4) if j not in zero.tolist()]] > 0.1).all()
    zero, out, opt = run(False)
    assert zero.numel() == 0 and (out > 1).all()  # nothing removed, every channel at full scale
    tau, norms = opt.tau(), opt.zero_thresholds()["c"]
    assert ((norms > tau) & (norms < 1.05 * tau)).all()  # every accumulator rides just above the threshold


class _Planted(nn.Module):
    """A known answer: ``noise`` convs read only inputs that carry pure noise, ``sig`` the two the label
    depends on; both feed BN → ReLU → conv2 → BN (as in a residual block, the channels' scale is free)."""

    def __init__(self) -> None:
        super().__init__()
        self.sig = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.noise = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(torch.cat([self.sig(x[:, :2]), self.noise(x[:, 2:])], 1)))
        h = torch.relu(self.bn2(self.conv2(h)))
        return self.head(h.mean((2, 3)))


def _planted_data(seed: int, n: int = 512):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 8, 8, generator=g)
    return x, (x[:, 0].mean((1, 2)) > x[:, 1].mean((1, 2))).long()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_noise_channels_are_the_ones_the_optimizer_zeroes_without_calibration(seed: int):
    from prunekit.bn import recalibrate_bn_
    from prunekit.collapse import collapse

    assert create_method("sdprun").recalibrate_bn_after_finalize
    torch.manual_seed(seed)
    x, y = _planted_data(seed)
    method = create_method("sdprun", target_macs=0.5)
    model, opt = _train(_Planted(), method, x, y, steps=200, lr=0.3, epochs=25, batch=64, seed=seed)
    zero = opt.zero_groups()
    noise = zero.get("noise", torch.tensor([])).numel()
    sig = zero.get("sig", torch.tensor([])).numel()
    assert noise >= 3 and sig <= 1, zero  # random choice of 4 of these 8 channels: P(noise >= 3) = 17/70
    metrics = method.step_metrics(model)
    assert metrics["macs_ratio/relaxation"] == pytest.approx(method.relaxation_ratio())
    # τ never decreases, so channels the loss stops defending may still die after the target is reached:
    # the optimizer lands at or somewhat below it (here one channel is 0.06-0.125 of the MACs)
    assert 0.3 <= metrics["macs_ratio/relaxation"] <= 0.55
    recalibrate_bn_(model, [(x, y)])  # what the loop does after finalize (recalibrate_bn_after_finalize)
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
        ref = model(x[:16])
    assert acc >= 0.9
    gated = method.finalize(model)
    rep = method.report
    assert rep["calibration_flips"] == 0.0 and rep["relaxation_macs_ratio"] == pytest.approx(metrics["macs_ratio/relaxation"])
    assert rep["zeroed_groups"] == sum(int((~m).sum()) for m in gated.hard_masks().values())
    slim = collapse(gated, x[:2]).eval()
    with torch.no_grad():  # the removed channels were exactly zero: the slim net computes what was trained
        assert torch.allclose(slim(x[:16]), ref, atol=1e-5)


def test_sdprun_groups_keep_a_constant_lr_under_the_loops_warmup_and_cosine():
    from torch.utils.data import DataLoader, TensorDataset

    from prunekit.train import Callback, TrainConfig, Trainer

    torch.manual_seed(0)
    x = torch.randn(64, 1, 6, 6)
    y = (x.mean((1, 2, 3)) > 0).long()
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    method = create_method("sdprun", target_macs=0.75, lr=0.02)
    model = method.prepare(model, x[:2])
    seen: list[tuple[float, float]] = []

    class Lrs(Callback):
        def on_step_end(self, trainer, logs):
            seen.append(tuple(g["lr"] for g in trainer.optimizer.param_groups))

    cfg = TrainConfig(epochs=4, batch_size=16, lr=0.05, optimizer="sdprun", momentum=0.0, weight_decay=0.0,
                      schedule="cosine", warmup_epochs=1, device="cpu", log_every=1)
    Trainer(model, DataLoader(TensorDataset(x, y), batch_size=16), cfg, method, callbacks=[Lrs()]).fit()
    sparse, plain = zip(*seen)
    assert set(sparse) == {0.02}  # gRDA's γ (the method's lr option): no warm-up, no decay
    assert min(plain) < 0.02 and max(plain) == pytest.approx(0.05)  # the classifier follows the loop's schedule
    assert plain[0] < plain[3]  # warm-up


def test_a_param_group_can_opt_out_of_the_lr_schedule():
    from torch.utils.data import DataLoader, TensorDataset

    from prunekit.methods.base import Method
    from prunekit.train import TrainConfig, Trainer

    class TwoGroups(Method):
        name = "two-groups-test"

        def param_groups(self, model, train_cfg):
            return [{"params": list(model[0].parameters())},
                    {"params": list(model[1].parameters()), "lr": 0.01, "lr_schedule": False}]

    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.1, schedule="cosine", warmup_epochs=1, device="cpu")
    trainer = Trainer(model, DataLoader(TensorDataset(x, y), batch_size=8), cfg, TwoGroups())
    trainer.fit()
    assert trainer.optimizer.param_groups[1]["lr"] == 0.01
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * lr_factor("cosine", 3, 3), abs=1e-12)


def _trained_tiny_resnet(steps: int = 40):
    from prunekit.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet20", width=4, num_classes=3)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 3, (16,))
    method = create_method("sdprun", target_macs=0.6, max_rate=0.05)
    model, opt = _train(model, method, x, y, steps)
    return model, method, opt, x


def test_coupled_channels_reach_zero_together_and_critical_groups_keep_one():
    model, method, opt, _ = _trained_tiny_resnet()
    zero = opt.zero_groups()
    assert 0 < opt.sparsity() < 1
    for name, idx in zero.items():
        for p, rows in dict(opt._structures)[name]:  # every member, BN γ/β included, is zero at those channels
            assert torch.equal(p.detach()[rows[idx]], torch.zeros_like(p[rows[idx]]))
    for g in method._twin.groups:
        if g.critical:
            assert str(g.name) not in zero or zero[str(g.name)].numel() < g.size, g.name


def test_finalize_masks_exactly_the_zero_channels_and_collapse_equals_the_trained_net():
    from prunekit.collapse import collapse

    model, method, opt, x = _trained_tiny_resnet()
    zero = opt.zero_groups()
    model.eval()
    with torch.no_grad():
        trained = model(x)
    gated = method.finalize(model)
    masks = gated.hard_masks()
    for name, idx in zero.items():
        assert not masks[name][idx].any(), name
    removed = sum(int((~m).sum()) for m in masks.values())
    assert removed == sum(int(v.numel()) for v in zero.values()) == method.report["zeroed_groups"]
    assert method.report["relaxation_macs_ratio"] < 1 and method.report["calibration_flips"] == 0.0
    slim = collapse(gated, x[:2])
    assert slim.pk_collapse["max_diff"] <= 1e-4
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert torch.allclose(slim.eval()(x), trained, atol=1e-5)
