"""Post-training pruning curves: L2 filter pruning per group, collapse, evaluation without fine-tuning."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, TensorDataset

from prunekit.errors import ConfigError
from prunekit.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.one_thread)


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
    df = prune_curve(model, loader, fractions=fractions, latency_repeats=2, recalibrate_bn=False)
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
    df = prune_curve(model, loader, fractions=(0.0, 0.25, 0.5), latency_repeats=1, recalibrate_bn=False)
    assert df["accuracy"].iloc[1] == pytest.approx(df["accuracy"].iloc[0])
    assert df["channels"].tolist() == [8, 6, 4]
    assert df["params"].iloc[1] == df["params"].iloc[0] - 2 * (27 + 1 + 2 + 4)  # filter and bias, BN γ/β, classifier column


def test_bridgeout_model_is_accepted_and_bad_arguments_raise():
    from prunekit.curve import prune_curve
    from prunekit.methods.bridgeout import add_bridgeout_

    model = _tiny_resnet()
    add_bridgeout_(model, seed=0)
    model.train()  # noise on: the curve must still use the clean weights
    df = prune_curve(model, _data(), fractions=(0.0,), latency_repeats=1, recalibrate_bn=False)
    assert parametrize.is_parametrized(model.conv1) and model.training  # untouched
    xs, ys = torch.cat([x for x, _ in _data()]), torch.cat([y for _, y in _data()])
    with torch.no_grad():
        clean_acc = (model.eval()(xs).argmax(1) == ys).float().mean().item()  # eval mode: no noise
    assert df["accuracy"].iloc[0] == pytest.approx(clean_acc)
    with pytest.raises(ConfigError, match="fractions"):
        prune_curve(model, _data(), fractions=(1.0,))
    with pytest.raises(ConfigError, match="criterion"):
        prune_curve(model, _data(), criterion="l3")
    with pytest.raises(ConfigError, match="rule.*'layer'"):
        prune_curve(model, _data(), rule="layer")
    with pytest.raises(ConfigError, match="bn_batches.*0"):
        prune_curve(model, _data(), bn_batches=0)


def test_recalibrate_bn_re_estimates_statistics_and_leaves_weights_alone():
    from prunekit.bn import recalibrate_bn_

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5, momentum=0.3), nn.ReLU()).eval()
    bn = model[1]
    with torch.no_grad():
        bn.running_mean.fill_(7.0)  # stale statistics, as after removing filters upstream
        bn.running_var.fill_(9.0)
    weights = {k: v.clone() for k, v in model.named_parameters()}
    loader = _data(n=24, size=8)
    recalibrate_bn_(model, loader, batches=2)
    with torch.no_grad():
        out = model[0](torch.cat([x for x, _ in loader]))  # 2 equal batches: the cumulative mean is the overall mean
    assert torch.allclose(bn.running_mean, out.mean((0, 2, 3)), atol=1e-5)
    assert bn.running_var.max() < 5 and bn.momentum == 0.3 and not model.training
    assert int(bn.num_batches_tracked) == 2
    for k, v in model.named_parameters():
        assert torch.equal(v, weights[k]), k
    with pytest.raises(ConfigError, match="batches"):
        recalibrate_bn_(model, loader, batches=0)
    with pytest.raises(ConfigError, match="empty"):
        recalibrate_bn_(model, DataLoader(TensorDataset(torch.zeros(0, 3, 8, 8), torch.zeros(0)), batch_size=4))


def test_prune_curve_with_bn_loader_evaluates_re_estimated_networks():
    from prunekit.curve import prune_curve

    model, loader = _tiny_resnet(), _data()
    plain = prune_curve(model, loader, fractions=(0.0, 0.5), latency_repeats=1, recalibrate_bn=False)
    recal = prune_curve(model, loader, fractions=(0.0, 0.5), latency_repeats=1, bn_loader=loader, bn_batches=2)
    assert list(recal["macs"]) == list(plain["macs"])  # same networks, other statistics
    assert not torch.allclose(torch.tensor(recal["loss"].to_numpy()), torch.tensor(plain["loss"].to_numpy()))


def _loss(model: nn.Module, loader) -> float:
    from prunekit.train.evaluate import evaluate

    return evaluate(model, loader, "classification", "cpu")["loss"]


def test_prune_curve_re_estimates_bn_by_default():
    import copy

    from prunekit.bn import recalibrate_bn_
    from prunekit.curve import prune_curve

    model, loader, train = _tiny_resnet(), _data(), _data(n=36, size=8)  # stale statistics (see _tiny_resnet)
    fresh = copy.deepcopy(model)
    recalibrate_bn_(fresh, train, batches=None)
    stale_loss, fresh_loss = _loss(model, loader), _loss(fresh, loader)
    assert abs(stale_loss - fresh_loss) > 1e-3  # the two kinds of statistics are distinguishable

    default = prune_curve(model, loader, fractions=(0.0, 0.5), latency_repeats=1, bn_loader=train)
    assert default["loss"].iloc[0] == pytest.approx(fresh_loss, rel=1e-5)  # the unpruned point: re-estimated
    assert default.attrs["bn_recalibrated"] and default.attrs["bn_source"] == "bn_loader"
    off = prune_curve(model, loader, fractions=(0.0,), latency_repeats=1, recalibrate_bn=False)
    assert off["loss"].iloc[0] == pytest.approx(stale_loss, rel=1e-5) and not off.attrs["bn_recalibrated"]

    # no bn_loader: the evaluation images are used (with a warning), still re-estimated
    own = copy.deepcopy(model)
    recalibrate_bn_(own, loader, batches=None)
    fallback = prune_curve(model, loader, fractions=(0.0,), latency_repeats=1)
    assert fallback["loss"].iloc[0] == pytest.approx(_loss(own, loader), rel=1e-5)
    assert fallback.attrs["bn_source"] == "data_loader"


def _slim_convs(model: nn.Module, fraction: float, rule: str) -> dict[str, nn.Module]:
    """The collapsed network prune_curve evaluates at ``fraction``, rebuilt with the same public pieces."""
    from prunekit.augment import augment
    from prunekit.collapse import collapse
    from prunekit.curve import group_filter_scores, keep_mask_for_fraction, layer_filter_scores

    x = torch.randn(1, 3, 8, 8)
    gated = augment(model, x, gate="mask").eval()
    for g in gated.groups:
        s = layer_filter_scores(g) if rule == "per_layer" else group_filter_scores(g)
        g.set_mask(keep_mask_for_fraction(s, fraction) if s is not None else torch.ones(g.size, dtype=torch.bool))
    return dict(collapse(gated, x).named_modules())


@pytest.mark.parametrize("fraction", [0.3, 0.5])
def test_per_layer_rule_prunes_the_asked_fraction_of_every_conv_by_its_own_norms(fraction):
    import math

    from prunekit.curve import prune_curve

    model = _tiny_resnet()  # width 4: convs of 4, 8 and 16 filters
    slim = _slim_convs(model, fraction, "per_layer")
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert len(convs) == 21
    for name, conv in convs.items():
        n = conv.out_channels
        assert slim[name].out_channels == n - math.floor(fraction * n), name

    # an inner conv is pruned by its own filters' L2 norms: the kept filters are its largest ones, in order, and
    # their BN channels go with them (BN biases are distinct random values in _tiny_resnet)
    w = model.layer2[1].conv1.weight.detach()
    k = w.shape[0] - math.floor(fraction * w.shape[0])
    top = w.flatten(1).norm(dim=1).argsort(descending=True)[:k].sort().values
    assert torch.equal(slim["layer2.1.bn1"].bias.detach(), model.layer2[1].bn1.bias.detach()[top])
    # a residual group (stem + layer1's conv2s) loses the same fraction, ranked by the mean of member norms
    members = [model.conv1] + [b.conv2 for b in model.layer1]
    mean = torch.stack([m.weight.detach().flatten(1).norm(dim=1) for m in members]).mean(0)
    k = 4 - math.floor(fraction * 4)
    top = mean.argsort(descending=True)[:k].sort().values
    assert torch.equal(slim["conv1"].weight.detach(), model.conv1.weight.detach()[top])
    assert torch.equal(slim["layer1.2.bn2"].bias.detach(), model.layer1[2].bn2.bias.detach()[top])

    df = prune_curve(model, _data(), fractions=(fraction,), latency_repeats=1, rule="per_layer", recalibrate_bn=False)
    assert df.attrs["rule"] == "per_layer"
    assert df["params"].iloc[0] == sum(p.numel() for p in slim[""].parameters())


def test_per_layer_rule_scores_a_coupled_group_by_the_mean_of_member_norms_not_the_largest_member():
    from prunekit.augment import augment
    from prunekit.curve import group_filter_scores, layer_filter_scores

    model = _tiny_resnet()
    with torch.no_grad():  # stem: channel 0 large in that one member; layer1's conv2s: channel 1 larger in all three
        model.conv1.weight.mul_(0.01)
        model.conv1.weight[0] = 2.5  # norm 13.0 vs 6.0 per conv2 member: 13 > sqrt(3)·6, 13 < 3·6
        for b in model.layer1:
            b.conv2.weight.mul_(0.01)
            b.conv2.weight[1] = 1.0
    g = augment(model, torch.randn(1, 3, 8, 8), gate="mask").group("conv1")
    assert int(group_filter_scores(g).argmax()) == 0  # the concatenated norm follows the one large member
    assert int(layer_filter_scores(g).argmax()) == 1  # the mean of the four members' own norms does not


def test_per_layer_rule_leaves_linear_layers_whole_and_the_group_rule_prunes_them():
    from prunekit.curve import prune_curve

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 10), nn.ReLU(), nn.Linear(10, 4)).eval()
    per_layer = prune_curve(model, _data(), fractions=(0.5,), latency_repeats=1, rule="per_layer")
    group = prune_curve(model, _data(), fractions=(0.5,), latency_repeats=1, rule="group")
    assert per_layer["channels"].iloc[0] == 4 + 10  # conv halved, hidden linear neurons kept
    assert group["channels"].iloc[0] == 4 + 5


def test_recalibrate_bn_in_place_restores_every_module_mode_and_ignores_training_noise():
    import copy

    from prunekit.bn import recalibrate_bn_
    from prunekit.methods.bridgeout import add_bridgeout_

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6, momentum=0.2), nn.ReLU(), nn.Dropout(0.5),
                          nn.Conv2d(6, 6, 3), nn.BatchNorm2d(6))
    clean = copy.deepcopy(model)
    add_bridgeout_(model, p=0.5, q=1.0, seed=0)
    model.train()
    model[3].eval()  # a mixed state must come back as it was
    loader = _data(n=24, size=8)
    info = recalibrate_bn_(model, loader, batches=None)
    assert info == {"layers": 2, "batches": 2, "samples": 24}
    assert model.training and model[1].training and not model[3].training and model[1].momentum == 0.2
    recalibrate_bn_(clean, loader, batches=None)
    for a, b in ((model[1], clean[1]), (model[5], clean[5])):  # noise and dropout off while estimating
        assert torch.allclose(a.running_mean, b.running_mean, atol=1e-6)
        assert torch.allclose(a.running_var, b.running_var, atol=1e-6)

    one = copy.deepcopy(clean)
    assert recalibrate_bn_(one, loader, batches=1)["batches"] == 1
    assert not torch.allclose(one[1].running_mean, clean[1].running_mean)
    with pytest.raises(ConfigError, match="batches.*-1"):
        recalibrate_bn_(one, loader, batches=-1)
    before = one[1].running_mean.clone()
    with pytest.raises(ConfigError, match="batch of type str"):
        recalibrate_bn_(one, ["not a tensor"])
    assert torch.equal(one[1].running_mean, before)  # a failed re-estimation leaves the statistics as they were
    assert recalibrate_bn_(nn.Linear(3, 2), []) == {"layers": 0, "batches": 0, "samples": 0}
