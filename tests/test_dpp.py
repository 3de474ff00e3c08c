"""DPP: the exact-k sampler, its relaxation and gradient, the three granularities, the method's hooks, and
the reference code's traps (temperature never decayed, masked copy unused, scrambled kernel axes, wrong
tiled-logit width)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_cnn
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, TensorDataset

from prunekit.errors import ConfigError
from prunekit.gates import create_gate
from prunekit.gates.dpp import (
    DPPGate,
    DPPMask,
    deterministic_mask,
    dpp_sample,
    gumbel_noise,
    keep_count,
    per_bank_k,
    row_entropy,
    sequential_softmax,
    sequential_softmax_loop,
    soft_marginals,
)
from prunekit.methods import create_method
from prunekit.methods.dpp import GATE_LR, DPPMethod, dpp_states, temperature
from prunekit.optim import SplitOptimizer


def _tiny_cnn() -> nn.Module:
    return make_tiny_cnn((8, 16), bias=False)


# -- sampler --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 7, 12])
def test_closed_form_relaxation_equals_the_sequential_softmax_loop(k):
    torch.manual_seed(0)
    phi = torch.randn(6, 12, dtype=torch.float64, requires_grad=True)
    g = gumbel_noise((6, 12), dtype=torch.float64)
    tau, eps = 0.7, 0.5
    ref = sequential_softmax_loop(phi, g, k, tau, eps)
    z = phi + eps * g
    fast = sequential_softmax(z / tau, z.detach().argsort(-1, descending=True), k)
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast.sum(-1), torch.full((6,), float(k), dtype=torch.float64))
    w = torch.randn(6, 12, dtype=torch.float64)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), phi)
    (g_fast,) = torch.autograd.grad((fast * w).sum(), phi)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-9, atol=1e-12)


def test_relaxation_is_stable_for_large_logits_and_small_tau():
    phi = torch.tensor([[300.0, -200.0, 50.0, 49.0, -1e3]], requires_grad=True)
    a = dpp_sample(phi, 3, tau=0.05, epsilon=0.0, noise=torch.zeros(1, 5))
    assert torch.equal(a.detach(), torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0]]))
    a.mul(torch.arange(5.0)).sum().backward()
    assert torch.isfinite(phi.grad).all()


@pytest.mark.parametrize("n,k,banks", [(10, 1, 1), (10, 5, 1), (10, 10, 1), (16, 8, 4), (12, 6, 3), (64, 2, 2)])
def test_exactly_k_ones_per_row_under_many_draws(n, k, banks):
    gen = torch.Generator().manual_seed(n * 100 + k)
    for draw in range(200):
        phi = torch.randn(5, n, generator=gen) * (0.1 + draw % 7)
        a = dpp_sample(phi, k, tau=1.0 + draw % 3, epsilon=0.05 * (draw % 4), banks=banks, generator=gen)
        assert set(a.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(a.sum(-1), torch.full((5,), float(k)))
        assert torch.equal(a.reshape(5, banks, -1).sum(-1), torch.full((5, banks), float(k // banks)))


def test_ties_still_give_exactly_k():
    a = dpp_sample(torch.zeros(4, 9), 4, tau=1.0, epsilon=0.0)
    assert torch.equal(a.sum(-1), torch.full((4,), 4.0))


def test_gradient_reaches_phi():
    torch.manual_seed(1)
    phi = torch.randn(3, 8, requires_grad=True)
    a = dpp_sample(phi, 3, tau=2.0, epsilon=0.1)
    (a * torch.randn(3, 8)).sum().backward()
    assert phi.grad is not None and torch.isfinite(phi.grad).all() and phi.grad.abs().sum() > 0


def test_hard_sample_is_topk_of_perturbed_logits_and_eval_is_topk_of_phi():
    torch.manual_seed(2)
    phi, g = torch.randn(4, 10), gumbel_noise((4, 10))
    a = dpp_sample(phi, 3, tau=1.0, epsilon=0.5, noise=g)
    expect = torch.zeros(4, 10).scatter_(-1, (phi + 0.5 * g).topk(3).indices, 1.0)
    assert torch.equal(a.detach(), expect)
    det = deterministic_mask(phi, 3)
    assert torch.equal(det, torch.zeros(4, 10).scatter_(-1, phi.topk(3).indices, 1.0))


def test_noise_makes_training_masks_vary_but_eval_is_fixed():
    torch.manual_seed(3)
    gate = DPPGate(32, keep=0.5, epsilon=2.0)
    gate.train()
    samples = {tuple(gate().tolist()) for _ in range(20)}
    assert len(samples) > 1
    gate.eval()
    assert len({tuple(gate().tolist()) for _ in range(5)}) == 1
    assert int(gate().sum()) == gate.k == 16


def test_bank_and_k_divisibility_errors_are_clear():
    with pytest.raises(ConfigError, match="banks=3 must divide the 10"):
        per_bank_k(10, 3, 3)
    with pytest.raises(ConfigError, match="banks=2 must divide k=3"):
        dpp_sample(torch.zeros(2, 8), 3, tau=1.0, banks=2)
    with pytest.raises(ConfigError, match="k must be in"):
        dpp_sample(torch.zeros(2, 8), 9, tau=1.0)
    with pytest.raises(ConfigError, match="tau must be > 0"):
        dpp_sample(torch.zeros(2, 8), 2, tau=0.0)
    assert keep_count(0.5, 16, banks=4) == 8 and keep_count(0.01, 16) == 1


def test_soft_marginals_sum_to_k_and_follow_phi():
    phi = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    m = soft_marginals(phi, 2, tau=0.5)
    assert torch.allclose(m.sum(), torch.tensor(2.0), atol=1e-5)
    assert m.min() >= 0 and m.max() <= 1
    # the first pick only collects step 1's mass, so it may sit below the second one; the chosen set leads
    assert set(m[0].topk(2).indices.tolist()) == {0, 1} and torch.all(m[0, 1:-1] >= m[0, 2:])


# -- granularities ----------------------------------------------------------------------------------------
def test_tiled_logits_have_the_full_width():
    mask = DPPMask((8, 16, 3, 3), "kernel", keep=0.5, banks=4)
    assert mask.logits.shape == (8, 16) and mask.k == 8  # not [8, 16/banks]
    w = DPPMask((4, 6, 3, 3), "weight", keep=0.5, banks=2)
    assert w.logits.shape == (4, 54)


def test_kernel_mask_removes_whole_kernels_on_the_right_axes():
    torch.manual_seed(4)
    conv = nn.Conv2d(6, 5, 3, bias=False)
    w0 = conv.weight.detach().clone()
    mask = DPPMask(conv.weight.shape, "kernel", keep=0.5)
    parametrize.register_parametrization(conv, "weight", mask)
    conv.eval()
    a = deterministic_mask(mask.logits, mask.k)  # [C_out, C_in]
    w = conv.weight.detach()
    for o in range(5):
        for i in range(6):
            expect = w0[o, i] if a[o, i] else torch.zeros(3, 3)
            assert torch.equal(w[o, i], expect)


def test_the_forward_uses_the_masked_weight():
    torch.manual_seed(5)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    w0 = conv.weight.detach().clone()
    x = torch.randn(2, 4, 8, 8)
    dense = conv(x).detach()
    mask = DPPMask(conv.weight.shape, "kernel", keep=0.5)
    parametrize.register_parametrization(conv, "weight", mask)
    conv.eval()
    a = mask.expand(deterministic_mask(mask.logits, mask.k))
    y = conv(x)
    torch.testing.assert_close(y, F.conv2d(x, w0 * a, conv.bias, padding=1))
    assert (y - dense).abs().max() > 1e-3  # not the unmasked kernel
    conv.train()  # training forward: the sampled mask, also on the real weight
    y_train = conv(x)
    torch.testing.assert_close(y_train, F.conv2d(x, w0 * mask.expand(mask.last_sample), conv.bias, padding=1))


def test_weight_granularity_on_linear_keeps_k_inputs_per_neuron_and_trains_phi():
    torch.manual_seed(6)
    fc = nn.Linear(10, 3)
    mask = DPPMask(fc.weight.shape, "weight", keep=0.4, epsilon=0.1)
    parametrize.register_parametrization(fc, "weight", mask)
    fc.train()
    fc(torch.randn(5, 10)).pow(2).sum().backward()
    assert mask.logits.grad.abs().sum() > 0
    assert torch.equal((fc.weight != 0).sum(1), torch.full((3,), 4))


def test_dpp_gate_is_registered_and_respects_set_mask():
    gate = create_gate("dpp", 10, keep=0.4)
    assert isinstance(gate, DPPGate) and gate.k == 4
    gate.set_mask(torch.tensor([True] * 5 + [False] * 5))
    gate.train()
    for _ in range(10):
        assert gate()[5:].sum() == 0 and gate().sum() <= 4
    gate.eval()
    assert gate()[5:].sum() == 0 and gate().sum() == 4


def test_frozen_masks_survive_a_state_dict_round_trip():
    torch.manual_seed(10)
    gate = DPPGate(12, keep=0.25)
    gate.dpp.freeze_()
    fresh = DPPGate(12, keep=0.25)
    fresh.load_state_dict(gate.state_dict())
    assert fresh.dpp.frozen and not fresh.dpp.logits.requires_grad
    fresh.train()
    assert torch.equal(fresh(), gate.eval()())
    back = DPPGate(12, keep=0.25)
    back.dpp.freeze_()
    back.load_state_dict(DPPGate(12, keep=0.25).state_dict())  # frozen ← unfrozen
    assert not back.dpp.frozen and back.dpp.logits.requires_grad


# -- the method -------------------------------------------------------------------------------------------
def test_temperature_schedule_is_linear_per_epoch():
    assert temperature(0, 5) == 5.0 and temperature(4, 5) == 0.5
    assert temperature(2, 5) == pytest.approx(2.75)
    assert temperature(0, 1) == 5.0


def test_tau_decays_across_epochs_through_the_training_loop():
    """The reference's schedule never ran; here the loop's on_epoch_start must move every gate's τ."""
    from prunekit.train.callbacks import Callback
    from prunekit.train.config import TrainConfig
    from prunekit.train.loop import Trainer

    torch.manual_seed(7)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
    method = create_method("dpp", granularity="kernel", keep=0.5, tau_start=4.0, tau_end=1.0)
    model = method.prepare(_tiny_cnn(), x[:2])
    seen: list[tuple[float, list[float]]] = []

    class Spy(Callback):
        def on_step_end(self, trainer, logs):
            states = dpp_states(trainer.model)
            if states:  # the re-log after finalize sees baked weights, no masks left
                seen.append((logs["temperature"], [float(s.tau) for s in states]))

    cfg = TrainConfig(epochs=4, batch_size=8, lr=0.01, log_every=2, device="cpu", max_steps_per_epoch=2)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    Trainer(model, (loader, None), cfg, method, callbacks=[Spy()]).fit()
    assert [t for t, _ in seen] == pytest.approx([4.0, 3.0, 2.0, 1.0])
    for t, taus in seen:
        assert taus and all(v == pytest.approx(t) for v in taus)


@pytest.mark.parametrize("granularity", ["filter", "kernel", "weight"])
def test_method_hooks_for_every_granularity(granularity):
    torch.manual_seed(8)
    x = torch.randn(4, 3, 8, 8)
    method = DPPMethod(granularity=granularity, keep=0.5)
    model = method.prepare(_tiny_cnn(), x[:1])
    states = dpp_states(model)
    assert states
    method.on_epoch_start(model, 0, 2)
    model.train()
    terms = method.regularizer(model, 0, 0)
    expect = sum(s.lambda_h * row_entropy(s.logits).sum() for s in states)
    torch.testing.assert_close(terms["entropy"], expect)
    fc_masks = [p for p in model.modules() if isinstance(p, DPPMask) and len(p.weight_shape) == 2]
    assert [s.lambda_h for s in fc_masks] == ([5e-5] if granularity == "weight" else [])
    assert all(s.lambda_h == 5e-3 for s in states if s not in fc_masks)
    (F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])) + terms["entropy"]).backward()
    assert all(s.logits.grad is not None and s.logits.grad.abs().sum() > 0 for s in states)
    groups = method.param_groups(model, type("T", (), {"lr": 0.1})())
    assert len(groups) == 2 and groups[1]["weight_decay"] == 0.0
    assert {id(p) for p in groups[1]["params"]} == {id(s.logits) for s in states}
    metrics = method.step_metrics(model)
    assert metrics["temperature"] == 5.0 and metrics["sparsity"] == pytest.approx(0.5, abs=0.15)
    model(x)  # a second sample so the flip rate exists
    names = {r["name"] for r in method.layer_metrics(model)}
    assert {"confidence", "diversity", "flip_rate", "sparsity", "keep_ratio", "gate_hist"} <= names
    final = method.finalize(model)
    final.eval()
    assert method.report["size"]["bits"] > 0
    assert 0.0 <= method.report["mask_moved"] <= 1.0 and method.report["calibration_flips"] == 0.0
    assert ("relaxation_macs_ratio" in method.report) == (granularity == "filter")
    if granularity == "filter":
        assert "macs_ratio/expected" in metrics and "macs_ratio/relaxation" in metrics
        assert all(int(h.hard_mask().sum()) == h.gate.k for h in final.groups)
    else:
        assert method.report["structure"] and all(r["exact"] for r in method.report["structure"])
        assert not any(parametrize.is_parametrized(m) for m in final.modules())  # baked into plain weights


def test_filter_dpp_collapses_exactly():
    from prunekit.collapse import collapse

    torch.manual_seed(9)
    x = torch.randn(4, 3, 8, 8)
    method = DPPMethod(granularity="filter", keep=0.5, quant_bits=4)
    gated = method.prepare(_tiny_cnn(), x[:1])
    opt = torch.optim.SGD(gated.parameters(), lr=0.1)
    gated.train()
    for epoch in range(2):
        method.on_epoch_start(gated, epoch, 2)
        loss = F.cross_entropy(gated(x), torch.tensor([0, 1, 2, 3])) + method.regularizer(gated, 0, epoch)["entropy"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    gated = method.finalize(gated)
    gated.eval()
    slim = collapse(gated)
    with torch.no_grad():
        torch.testing.assert_close(slim(x), gated(x), rtol=1e-5, atol=1e-5)
    convs = [m for m in slim.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8]


def test_config_errors_name_the_option():
    with pytest.raises(ConfigError, match="granularity"):
        create_method("dpp", granularity="block")
    with pytest.raises(ConfigError, match="keep"):
        create_method("dpp", keep=0.0)
    with pytest.raises(ConfigError, match="quant_bits"):
        create_method("dpp", quant_bits=1)


# -- Φ learns: optimizer, init, mask_moved, and a planted answer ----------------------------------------
def _train_cfg(**kw):
    from prunekit.train.config import TrainConfig

    return TrainConfig(**{"device": "cpu", "lr": 0.05, "batch_size": 64, "log_every": 1000, **kw})


def test_phi_has_its_own_adam_at_the_documented_gate_lr_without_weight_decay():
    x = torch.randn(2, 3, 8, 8)
    method = DPPMethod(granularity="filter", keep=0.5)
    assert method.config.gate_lr == GATE_LR == 0.03 and method.config.gate_optimizer == "adam"
    model = method.prepare(_tiny_cnn(), x)
    opt = method.make_optimizer(model, _train_cfg())
    assert isinstance(opt, SplitOptimizer)
    weights, phi = opt.optimizers
    assert isinstance(weights, torch.optim.SGD) and isinstance(phi, torch.optim.Adam)
    assert {id(p) for g in phi.param_groups for p in g["params"]} == {id(s.logits) for s in dpp_states(model)}
    assert all(g["lr"] == GATE_LR and g["weight_decay"] == 0.0 for g in phi.param_groups)
    assert all(g["lr"] == 0.05 for g in weights.param_groups)  # the weights keep the training lr
    same = DPPMethod(granularity="kernel", keep=0.5, gate_optimizer="same", gate_lr=0.2)
    m2 = same.prepare(_tiny_cnn(), x)
    assert same.make_optimizer(m2, _train_cfg()) is None
    assert same.param_groups(m2, _train_cfg())[1]["lr"] == 0.2
    with pytest.raises(ConfigError, match="gate_optimizer"):
        DPPMethod(gate_optimizer="sgd")
    with pytest.raises(ConfigError, match="init"):
        DPPMethod(init="zeros")


def test_norm_init_ranks_by_filter_norm_and_random_init_has_init_std():
    torch.manual_seed(11)
    x = torch.randn(2, 3, 8, 8)
    net = _tiny_cnn()
    with torch.no_grad():
        net[0].weight.mul_(torch.arange(1.0, 9.0)[:, None, None, None])  # filter norms grow with the index
    method = DPPMethod(granularity="filter", keep=0.25)
    gated = method.prepare(net, x)
    phi = gated.groups[0].gate.dpp.logits.detach()[0]
    assert torch.equal(phi.argsort(), torch.arange(8))
    assert method.config.init_std is None  # the spread of Φ is a third of the noise scale ε
    assert phi.std().item() == pytest.approx(gated.groups[0].gate.dpp.epsilon / 3, rel=1e-4)
    first = method.initial_topk[_path(gated, gated.groups[0].gate)]
    assert first[0].tolist() == [False] * 6 + [True] * 2  # the initial top-k was recorded at prepare
    kern = DPPMethod(granularity="kernel", keep=0.5, init="random", init_std=0.5)
    masked = kern.prepare(_tiny_cnn(), x)
    logits = torch.cat([s.logits.detach().flatten() for s in dpp_states(masked)])
    assert logits.std().item() == pytest.approx(0.5, rel=0.2)


def test_mask_moved_is_reported_and_survives_resume():
    torch.manual_seed(12)
    x = torch.randn(2, 3, 8, 8)
    method = DPPMethod(granularity="filter", keep=0.5)
    gated = method.prepare(_tiny_cnn(), x)
    assert method.mask_moved(gated) == 0.0
    gate = gated.groups[1].gate  # 16 channels, k = 8: swap the whole top-k
    with torch.no_grad():
        gate.dpp.logits.neg_()
    assert method.mask_moved(gated) == pytest.approx(8 / 12)  # 8 of the 4 + 8 kept structures moved
    resumed = DPPMethod(granularity="filter", keep=0.5)
    resumed.prepare(_tiny_cnn(), x)  # a fresh model: another initial Φ ...
    resumed.load_state_dict(method.state_dict())  # ... but the checkpoint's origin wins
    assert resumed.mask_moved(gated) == pytest.approx(8 / 12)
    metrics = method.step_metrics(gated)
    assert metrics["mask_moved"] == pytest.approx(8 / 12)
    assert 0 < metrics["macs_ratio/relaxation"] < 1
    final = method.finalize(gated)
    rep = method.report
    assert rep["mask_moved"] == pytest.approx(8 / 12) and rep["calibration_flips"] == 0.0
    assert rep["relaxation_macs_ratio"] == pytest.approx(metrics["macs_ratio/relaxation"])
    masks = method.decision_masks(final)
    assert [int(m.sum()) for m in masks] == [h.gate.k for h in final.groups]
    assert DPPMethod.recalibrate_bn_after_finalize is True


def _path(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def _planted(seed: int, n: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """8 input planes: planes 0-3 each carry one bit of the 16-class label (mean ±1), planes 4-7 pure noise."""
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(0, 2, (n, 4), generator=g)
    x = torch.randn(n, 8, 6, 6, generator=g)
    x[:, :4] += (2 * bits - 1).float()[:, :, None, None]
    return x, (bits * torch.tensor([1, 2, 4, 8])).sum(1)


def _planted_net() -> nn.Module:
    """The first conv copies plane i to channel i; the noise channels get 3× larger filters, so the filter-norm
    init puts exactly the four useless channels in the initial top-4."""
    conv1 = nn.Conv2d(8, 8, 1, bias=False)
    with torch.no_grad():
        conv1.weight.copy_(torch.diag(torch.tensor([1.0] * 4 + [3.0] * 4))[:, :, None, None])
    return nn.Sequential(conv1, nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 16))


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_answer_dpp_moves_its_mask_to_the_useful_channels(seed):
    """Half the first layer's channels carry only noise and start as the top-k of Φ; DPP's own rule (the
    noiseless top-k, no calibration) must end on the four informative channels, at the default settings."""
    from prunekit.train.loop import Trainer

    torch.manual_seed(seed)
    x, y = _planted(seed)
    method = DPPMethod(granularity="filter", keep=0.5)
    gated = method.prepare(_planted_net(), x[:2])
    gated.model[0].weight.requires_grad_(False)  # the planted copy stays a copy
    first = gated.groups[0]
    assert first.size == 8 and method.initial_topk[_path(gated, first.gate)][0].tolist() == [False] * 4 + [True] * 4
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    cfg = _train_cfg(epochs=12, seed=seed, num_threads=1)
    Trainer(gated, (loader, None), cfg, method).fit()
    assert method.report["calibration_flips"] == 0.0
    keep = first.hard_mask().bool()
    assert keep.tolist() == [True] * 4 + [False] * 4, first.gate.dpp.logits
    assert method.report["mask_moved"] >= 0.3  # all 4 of group 0 moved (group 1 has no planted answer)
    gated.eval()
    with torch.no_grad():
        acc = (gated(x).argmax(1) == y).float().mean().item()
    assert acc > 0.9  # the initial mask (noise channels only) cannot beat chance (1/16)
