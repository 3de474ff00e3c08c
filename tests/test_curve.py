"""Post-training pruning curves: L2 filter pruning per group, collapse, evaluation without fine-tuning."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, TensorDataset

from prunekit.errors import ConfigError
from prunekit.models import create_model


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: extra intra-op threads only add synchronisation cost on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _data(n: int = 24, size: int = 8, classes: int = 4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=12)


def _tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=4, width=4)
    with torch.no_grad():  # non-trivial BN statistics so that removing a channel matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model.eval()


def test_keep_mask_removes_lowest_scores_and_keeps_one():
    from prunekit.curve import keep_mask_for_fraction

    s = torch.tensor([0.5, 0.1, 0.9, 0.3])
    assert keep_mask_for_fraction(s, 0.0).all()
    assert keep_mask_for_fraction(s, 0.5).tolist() == [True, False, True, False]
    assert keep_mask_for_fraction(s, 0.99).tolist() == [False, False, True, False]  # never all removed
    assert keep_mask_for_fraction(torch.tensor([1.0]), 0.9).tolist() == [True]


def test_group_scores_are_the_l2_norm_of_coupled_output_filters():
    from prunekit.augment import augment
    from prunekit.curve import group_filter_scores

    model = _tiny_resnet()
    gated = augment(model, torch.randn(1, 3, 8, 8), gate="bernoulli")
    g = gated.group("conv1")  # stem, coupled with every layer1 block's conv2 (residual sums)
    producers = [m for m in g.members if m.dim == "out" and isinstance(m.module, nn.Conv2d)]
    assert len(producers) == 4
    expected = torch.stack([m.module.weight.detach().flatten(1).pow(2).sum(1) for m in producers]).sum(0).sqrt()
    assert torch.allclose(group_filter_scores(g, "l2").float(), expected)
    l1 = torch.stack([m.module.weight.detach().flatten(1).abs().sum(1) for m in producers]).sum(0)
    assert torch.allclose(group_filter_scores(g, "l1").float(), l1)


def test_curve_is_monotone_in_macs_and_exact_with_respect_to_collapse():
    from prunekit.augment import augment
    from prunekit.curve import group_filter_scores, keep_mask_for_fraction, prune_curve

    model = _tiny_resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = _data()
    fractions = (0.0, 0.5, 0.75)
    df = prune_curve(model, loader, fractions=fractions, latency_repeats=2)
    assert list(df["fraction"]) == list(fractions)
    assert (df["macs"].diff().dropna() <= 0).all() and df["macs"].iloc[-1] < df["macs"].iloc[0]
    assert (df["params"].diff().dropna() <= 0).all()
    assert df["macs_ratio"].iloc[0] == pytest.approx(1.0) and df["params_ratio"].iloc[0] == pytest.approx(1.0)
    assert (df["max_diff"] <= 1e-4).all()
    assert (df["latency_ms_b1"] > 0).all()
    for k, v in model.state_dict().items():  # the input model is left alone
        assert torch.equal(v, before[k]), k

    xs = torch.cat([x for x, _ in loader])
    ys = torch.cat([y for _, y in loader])
    with torch.no_grad():
        assert df["accuracy"].iloc[0] == pytest.approx((model(xs).argmax(1) == ys).float().mean().item())
        # the 50% point equals the masked network built by hand (masking the BN output, not only the filter)
        gated = augment(model, xs[:1], gate="bernoulli").eval()
        for g in gated.groups:
            g.set_mask(keep_mask_for_fraction(group_filter_scores(g), 0.5))
        masked_acc = (gated(xs).argmax(1) == ys).float().mean().item()
    assert df["accuracy"].iloc[1] == pytest.approx(masked_acc)
    assert df["channels"].iloc[1] == sum(int(g.hard_mask().sum()) for g in gated.groups)


def test_zero_filters_are_the_first_to_go():
    from prunekit.curve import prune_curve

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    with torch.no_grad():
        model[0].weight[:2] = 0  # dead filters, whose BN still emits a constant β
        model[1].bias.zero_()  # ... made harmless, so removing them must not change the outputs
        model[1].running_mean.zero_()
    loader = _data()
    df = prune_curve(model, loader, fractions=(0.0, 0.25, 0.5), latency_repeats=1)
    assert df["accuracy"].iloc[1] == pytest.approx(df["accuracy"].iloc[0])
    assert df["channels"].tolist() == [8, 6, 4]
    assert df["params"].iloc[1] == df["params"].iloc[0] - 2 * (27 + 1 + 2 + 4)  # filter and bias, BN γ/β, classifier column


def test_bridgeout_model_is_accepted_and_bad_arguments_raise():
    from prunekit.curve import prune_curve
    from prunekit.methods.bridgeout import add_bridgeout_

    model = _tiny_resnet()
    add_bridgeout_(model, seed=0)
    df = prune_curve(model, _data(), fractions=(0.0,), latency_repeats=1)
    assert parametrize.is_parametrized(model.conv1)  # untouched
    assert 0 <= df["accuracy"].iloc[0] <= 1
    with pytest.raises(ConfigError, match="fractions"):
        prune_curve(model, _data(), fractions=(1.0,))
    with pytest.raises(ConfigError, match="criterion"):
        prune_curve(model, _data(), criterion="l3")


def test_recalibrate_bn_re_estimates_statistics_and_leaves_weights_alone():
    from prunekit.curve import recalibrate_bn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5, momentum=0.3), nn.ReLU()).eval()
    bn = model[1]
    with torch.no_grad():
        bn.running_mean.fill_(7.0)  # stale statistics, as after removing filters upstream
        bn.running_var.fill_(9.0)
    weights = {k: v.clone() for k, v in model.named_parameters()}
    loader = _data(n=24, size=8)
    recalibrate_bn(model, loader, batches=2)
    with torch.no_grad():
        out = model[0](torch.cat([x for x, _ in loader]))  # 2 equal batches: the cumulative mean is the overall mean
    assert torch.allclose(bn.running_mean, out.mean((0, 2, 3)), atol=1e-5)
    assert bn.running_var.max() < 5 and bn.momentum == 0.3 and not model.training
    assert int(bn.num_batches_tracked) == 2
    for k, v in model.named_parameters():
        assert torch.equal(v, weights[k]), k
    with pytest.raises(ConfigError, match="batches"):
        recalibrate_bn(model, loader, batches=0)
    with pytest.raises(ConfigError, match="empty"):
        recalibrate_bn(model, DataLoader(TensorDataset(torch.zeros(0, 3, 8, 8), torch.zeros(0)), batch_size=4))


def test_prune_curve_with_bn_loader_evaluates_re_estimated_networks():
    from prunekit.curve import prune_curve

    model, loader = _tiny_resnet(), _data()
    plain = prune_curve(model, loader, fractions=(0.0, 0.5), latency_repeats=1)
    recal = prune_curve(model, loader, fractions=(0.0, 0.5), latency_repeats=1, bn_loader=loader, bn_batches=2)
    assert list(recal["macs"]) == list(plain["macs"])  # same networks, other statistics
    assert not torch.allclose(torch.tensor(recal["loss"].to_numpy()), torch.tensor(plain["loss"].to_numpy()))
