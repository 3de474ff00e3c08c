"""Batch Bridgeout (METHODS.md section 4): noise statistics, fresh masks, eval, gradients, install/remove."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit.errors import ConfigError
from prunekit.methods import create_method, list_methods
from prunekit.methods.bridgeout import (
    BridgeoutParam,
    _NoiseSource,
    add_bridgeout_,
    bridgeout_noise,
    lowest_norm_kernels,
    remove_bridgeout_,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.one_thread)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 1), nn.ReLU(),  # a 1×1 conv: not perturbed by default
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )


def test_noise_mean_zero_and_variance_matches_bridge_formula():
    p, q = 0.3, 1.5
    w = torch.linspace(-2, 2, 41)
    w[20] = 0.0
    param = BridgeoutParam(p, q, _NoiseSource(seed=0))
    big = w.expand(1000, 41)  # masks are elementwise, so 1000 rows × 20 calls = 20000 draws per weight
    draws = torch.cat([param(big) - big for _ in range(20)])  # [20000, 41]
    expected_var = p / (1 - p) * w.abs() ** q
    sd_of_mean = (expected_var / draws.shape[0]).sqrt()
    assert (draws.mean(0).abs() <= 5 * sd_of_mean + 1e-7).all()
    assert torch.allclose(draws.var(0), expected_var, rtol=0.05, atol=1e-6)
    assert torch.equal(draws[:, 20], torch.zeros(20000))  # w = 0: no noise


def test_mask_changes_every_step_and_is_reproducible_from_the_seed():
    model = _net()
    add_bridgeout_(model, seed=7)
    conv = model[0]
    w1, w2 = conv.weight.detach().clone(), conv.weight.detach().clone()
    assert not torch.equal(w1, w2)  # a fresh mask on every access (the reference reused one forever)
    x = torch.randn(2, 3, 6, 6)
    assert not torch.equal(model(x), model(x))

    other = _net()
    add_bridgeout_(other, seed=7)
    assert torch.equal(other[0].weight.detach(), w1)  # same seed, same sequence of masks
    other2 = _net()
    add_bridgeout_(other2, seed=8)
    assert not torch.equal(other2[0].weight.detach(), w1)


def test_one_mask_per_forward_shared_by_the_batch():
    model = _net()
    add_bridgeout_(model, seed=1)
    x = torch.randn(1, 3, 6, 6)
    out = model(x.repeat(4, 1, 1, 1))  # BN in train mode mixes the batch, but identical rows stay identical
    assert torch.allclose(out, out[:1].expand_as(out), atol=1e-6)


def test_no_noise_in_eval_mode():
    model = _net()
    add_bridgeout_(model, seed=0)
    model.eval()
    clean = model[0].parametrizations.weight.original
    assert torch.equal(model[0].weight, clean)
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(model(x), model(x))


def test_gradient_flows_through_the_noise_term():
    p, q = 0.3, 1.5
    w = torch.tensor([-1.5, -0.2, 0.0, 0.3, 2.0], requires_grad=True)
    m = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
    (w + bridgeout_noise(w, m, p, q)).sum().backward()
    factor = m / (1 - p) - 1
    analytic = 1 + q / 2 * w.detach().abs() ** (q / 2 - 1) * w.detach().sign() * factor
    analytic[2] = 1.0  # at w = 0 the noise and its gradient are zero (no inf·0 = NaN)
    assert torch.isfinite(w.grad).all()
    assert torch.allclose(w.grad, analytic)
    assert not torch.allclose(w.grad, torch.ones(5))  # the noise term contributes


def test_gradient_reaches_the_real_weight_through_the_parametrization():
    model = _net()
    add_bridgeout_(model, seed=0)
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    g = model[0].parametrizations.weight.original.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_default_filter_is_3x3_convs_only_and_custom_filter_works():
    model = _net()
    names = add_bridgeout_(model)
    assert names == ["0"]
    assert not parametrize.is_parametrized(model[3]) and not parametrize.is_parametrized(model[7])
    assert add_bridgeout_(model) == []  # idempotent
    other = _net()
    assert add_bridgeout_(other, filter_fn=lambda m, n: isinstance(m, nn.Conv2d)) == ["0", "3"]


def test_targeted_mode_perturbs_only_the_lowest_norm_kernels():
    torch.manual_seed(0)
    w = torch.randn(4, 8, 3, 3)
    mask = lowest_norm_kernels(w, 0.75)
    assert mask.shape == (4, 8, 1, 1) and torch.equal(mask.sum((1, 2, 3)), torch.full((4,), 6))
    norms = w.flatten(2).norm(dim=2)
    assert (norms[mask[..., 0, 0]].reshape(4, 6).max(1).values <= norms[~mask[..., 0, 0]].reshape(4, 2).min(1).values).all()
    param = BridgeoutParam(0.3, 1.5, _NoiseSource(0), targeted_fraction=0.75)
    noise = param(w) - w
    assert torch.equal(noise * ~mask, torch.zeros_like(w))
    assert (noise * mask).abs().sum() > 0


def test_method_prepare_finalize_and_generator_state_round_trip():
    assert "bridgeout" in list_methods()
    model = _net()
    clean = model[0].weight.detach().clone()
    method = create_method("bridgeout", seed=3)
    model = method.prepare(model, torch.randn(2, 3, 6, 6))
    assert parametrize.is_parametrized(model[0], "weight")
    _ = model[0].weight  # advance the generator once
    state = method.state_dict()
    nxt = model[0].weight.detach().clone()

    model2 = _net()
    m2 = create_method("bridgeout", seed=3)
    m2.load_state_dict(state)  # before prepare: applied when the layers exist
    model2 = m2.prepare(model2, torch.randn(2, 3, 6, 6))
    assert torch.equal(model2[0].weight.detach(), nxt)

    out = method.finalize(model)
    assert not parametrize.is_parametrized(out[0])
    assert isinstance(out[0].weight, nn.Parameter) and torch.equal(out[0].weight.detach(), clean)
    assert "0.weight" in out.state_dict()
    assert remove_bridgeout_(out) == []


def test_bad_options_raise_config_error():
    with pytest.raises(ConfigError, match="p must"):
        create_method("bridgeout", p=1.0)
    with pytest.raises(ConfigError, match="q must"):
        create_method("bridgeout", q=0)
    with pytest.raises(ConfigError, match="targeted_fraction"):
        create_method("bridgeout", targeted_fraction=1.5)


def test_removing_from_a_deep_copy_leaves_the_original_parametrized():
    import copy

    model = _net()
    add_bridgeout_(model, seed=0)
    twin = copy.deepcopy(model)
    assert remove_bridgeout_(twin) == ["0"]
    assert type(twin[0]) is nn.Conv2d and isinstance(twin[0].weight, nn.Parameter)
    x = torch.randn(2, 3, 6, 6)
    model.eval()
    assert torch.equal(model(x), twin.eval()(x))  # the original still works (and is still noisy in train mode)
    assert parametrize.is_parametrized(model[0], "weight")
    model.train()
    assert not torch.equal(model[0].weight, twin[0].weight)


# -- BatchNorm statistics after finalize (the loop's hook) -----------------------------------------------------


def _quadrants(n: int, seed: int):
    """Planted problem: the class is the image quadrant that carries a bright 4×4 patch (1 channel, 8×8)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.5 * torch.randn(n, 1, 8, 8, generator=g)
    for i, c in enumerate(y.tolist()):
        r, col = divmod(c, 2)
        x[i, 0, 4 * r:4 * r + 4, 4 * col:4 * col + 4] += 1.0
    return x, y


def _plain_net() -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for c_in in (1, 8, 8):
        layers += [nn.Conv2d(c_in, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


@pytest.fixture(scope="module")
def noise_setup():
    """A net trained densely on the planted problem (val acc ~0.98), and its loaders."""
    from torch.utils.data import DataLoader, TensorDataset

    from prunekit._device import torch_threads
    from prunekit.train.config import TrainConfig
    from prunekit.train.loop import Trainer

    (xt, yt), (xv, yv) = _quadrants(512, 0), _quadrants(256, 1)
    train = DataLoader(TensorDataset(xt, yt), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(xv, yv), batch_size=128)
    model = _plain_net()
    cfg = TrainConfig(epochs=4, batch_size=32, lr=0.05, momentum=0.9, nesterov=True, device="cpu", seed=0,
                      warmup_epochs=0)
    with torch_threads(1):
        result = Trainer(model, (train, val), cfg).fit()
    assert result["metrics"]["acc/val"] > 0.9
    return {k: v.clone() for k, v in model.state_dict().items()}, train, val


def _noise_tune(setup, hook: bool):
    """One epoch of Bridgeout (p = 0.5) at a tiny lr from the trained net: BN statistics gathered under noise."""
    from prunekit.train.config import TrainConfig
    from prunekit.train.loop import Trainer

    state, train, val = setup
    model = _plain_net()
    model.load_state_dict(state)
    method = create_method("bridgeout", p=0.5, q=1.5, seed=0)
    if not hook:
        method.recalibrate_bn_after_finalize = False
    model = method.prepare(model, torch.zeros(2, 1, 8, 8))
    cfg = TrainConfig(epochs=1, batch_size=32, lr=1e-3, momentum=0.9, nesterov=True, device="cpu", seed=0,
                      warmup_epochs=0, schedule="constant")
    trainer = Trainer(model, (train, val), cfg, method)
    return trainer, method, trainer.fit()


def test_bridgeout_asks_the_loop_to_re_estimate_bn_after_finalize():
    assert create_method("bridgeout").recalibrate_bn_after_finalize is True
    assert create_method("dense").recalibrate_bn_after_finalize is False
    assert create_method("bridgeout").decision_masks(_net()) is None  # post hoc: no decision rule while training


def test_loop_re_estimates_bn_after_finalize_and_the_final_eval_uses_it(noise_setup):
    from prunekit.train.evaluate import evaluate

    on, m_on, r_on = _noise_tune(noise_setup, hook=True)
    off, m_off, r_off = _noise_tune(noise_setup, hook=False)
    assert r_on["finalized"] and r_off["finalized"]
    for (name, p_on), (_, p_off) in zip(on.model.named_parameters(), off.model.named_parameters()):
        assert torch.equal(p_on, p_off), name  # same training; the hook changes no weight
    bn_on, bn_off = on.model[1], off.model[1]
    assert not torch.allclose(bn_on.running_var, bn_off.running_var, rtol=0.05)

    # the statistics are those of the clean network on the whole training epoch (16 batches < 50)
    _, train, val = noise_setup
    xs = torch.cat([x for x, _ in train])
    with torch.no_grad():
        assert torch.allclose(bn_on.running_mean, on.model[0](xs).mean((0, 2, 3)), atol=1e-5)
    assert m_on.report["bn_recalibrated"] is True and m_on.report["bn_batches"] == 16
    assert m_off.report["bn_recalibrated"] is False and m_on.report["post_hoc"] is True
    assert m_on.report["noisy_layers"] == 3

    # stale noise statistics wreck the clean net; re-estimated ones restore it, and the final eval reports that
    assert r_off["metrics"]["acc/val"] < 0.5, r_off["metrics"]
    assert r_on["metrics"]["acc/val"] > 0.9, r_on["metrics"]
    assert r_on["metrics"]["acc/val"] == pytest.approx(evaluate(on.model, val, "classification", "cpu")["acc"])
    assert [m.training for m in on.model.modules()] == [m.training for m in off.model.modules()]  # modes restored
