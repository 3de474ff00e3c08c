"""Mask metrics on hand-built cases, and the per-layer rows for every gate kind."""

from __future__ import annotations

import math
import time

import pytest
import torch
from conftest import make_tiny_cnn
from torch import nn

from prunekit.errors import ConfigError
from prunekit.gates import list_gates
from prunekit.gates.dpp import DPPGate, DPPMask
from prunekit.metrics import (
    binary_confidence,
    binary_entropy_bits,
    confidence,
    confidence_diversity,
    diversity,
    flip_rate,
    gate_histogram,
    gate_layer_rows,
    inclusion_probabilities,
    mean_row_entropy,
    nm_structure,
    selection_probabilities,
    sparsity,
)


def _h(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -p * math.log(p) - (1 - p) * math.log(1 - p)


def test_one_hot_rows_are_fully_confident():
    p = torch.eye(5)[[0, 3, 3, 1]]
    assert confidence(p) == pytest.approx(1.0)
    assert mean_row_entropy(p) == pytest.approx(0.0)


def test_uniform_rows_have_zero_confidence_and_diversity():
    p = torch.full((6, 8), 1 / 8)
    assert confidence(p) == pytest.approx(0.0, abs=1e-6)
    assert diversity(p) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("k,n", [(2, 6), (3, 8), (5, 16), (8, 64)])
def test_a_decided_k_of_n_row_scores_one_and_a_uniform_row_zero(k, n):
    decided = torch.full((3, n), -30.0)
    for m in range(3):
        decided[m, torch.randperm(n, generator=torch.Generator().manual_seed(m))[:k]] = 30.0
    p = inclusion_probabilities(decided, k)
    assert torch.allclose(p.sum(-1), torch.full((3,), float(k)), atol=1e-4)
    assert confidence(p) == pytest.approx(1.0, abs=1e-6)
    # the softmax entropy would cap this decided row at 1 − log k / log N (what METHODS.md calls wrong)
    assert 1 - mean_row_entropy(selection_probabilities(decided)) / math.log(n) == pytest.approx(
        1 - math.log(k) / math.log(n), abs=1e-4)
    uniform = inclusion_probabilities(torch.zeros(3, n), k)
    assert torch.allclose(uniform, torch.full((3, n), k / n))
    assert confidence(uniform) == pytest.approx(0.0, abs=1e-6) and diversity(uniform) == pytest.approx(0.0, abs=1e-6)


def test_inclusion_probabilities_sum_to_k_per_bank_and_follow_the_logits():
    torch.manual_seed(0)
    phi = torch.randn(5, 16) * 2
    p = inclusion_probabilities(phi, 8, banks=4)
    assert torch.allclose(p.reshape(5, 4, 4).sum(-1), torch.full((5, 4), 2.0), atol=1e-5)
    assert ((p >= 0) & (p <= 1)).all()
    q = inclusion_probabilities(phi, 3)
    assert torch.equal(q.argsort(-1), phi.argsort(-1))  # monotone in φ within a row
    assert torch.equal(inclusion_probabilities(phi, 16), torch.ones(5, 16))  # k = N: no choice
    assert confidence(torch.ones(5, 16)) == 1.0 and diversity(torch.ones(5, 16)) == 0.0
    # sharper logits: more confident
    cs = [confidence(inclusion_probabilities(phi * s, 3)) for s in (0.1, 1.0, 10.0, 100.0)]
    assert cs[0] < cs[1] < cs[2] < cs[3] and cs[3] > 0.95
    # a masked-out candidate (DPP gate's removed structures, Φ = −1e4) is decided
    masked = phi[:1].clone()
    masked[0, :4] = -1e4
    pm = inclusion_probabilities(masked, 6)
    assert pm[0, :4].max() < 1e-6 and pm.sum() == pytest.approx(6.0, abs=1e-4)
    with pytest.raises(ConfigError, match="k must be in"):
        inclusion_probabilities(phi, 17)
    with pytest.raises(ConfigError, match="banks=3"):
        inclusion_probabilities(phi, 6, banks=3)


def test_identical_rows_have_zero_diversity():
    row = torch.softmax(torch.tensor([2.0, -1.0, 0.5, 0.0, 3.0]), 0)
    assert diversity(row.expand(7, 5)) == pytest.approx(0.0, abs=1e-6)
    assert diversity(torch.eye(4)[[2, 2, 2]]) == pytest.approx(0.0, abs=1e-6)
    p = inclusion_probabilities(torch.randn(1, 9).expand(4, 9), 4)
    assert diversity(p) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("m,n", [(2, 8), (3, 8), (4, 4), (5, 16)])
def test_disjoint_one_hot_rows(m, n):
    p = torch.eye(n)[:m]
    # p̄ has m entries 1/m: D = m·h(1/m) / (N·h(1/N)); 1 once the rows cover every candidate (m = N)
    assert diversity(p) == pytest.approx(m * _h(1 / m) / (n * _h(1 / n)), abs=1e-6)
    assert confidence(p) == pytest.approx(1.0)


def test_decided_rows_that_share_the_candidates_evenly_have_diversity_one():
    # k = 3 of 6: two patterns, each used by half of the rows → p̄ = 1/2 = k/N
    p = torch.tensor([[1.0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]] * 2)
    assert confidence_diversity(p) == pytest.approx((1.0, 1.0))


def test_half_confident_rows():
    # every row spreads its one pick evenly over 2 of 4 candidates
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])
    c, d = confidence_diversity(p)
    base = 4 * _h(0.25)
    assert c == pytest.approx(1 - 2 * _h(0.5) / base)
    assert d == pytest.approx((base - 2 * _h(0.5)) / base)  # p̄ is uniform: D = C here
    assert (c, d) == pytest.approx((confidence(p), diversity(p)))


def test_probabilities_from_logits_and_degenerate_shapes():
    phi = torch.tensor([[0.0, math.log(3.0)]])
    assert torch.allclose(selection_probabilities(phi), torch.tensor([[0.25, 0.75]]))
    assert confidence(torch.ones(3, 1)) == 1.0 and diversity(torch.ones(3, 1)) == 0.0
    with pytest.raises(ConfigError, match="shape"):
        confidence(torch.ones(2, 2, 2))


def test_binary_gate_entropy_in_bits():
    assert binary_entropy_bits(torch.full((10,), 0.5)) == pytest.approx(1.0)
    assert binary_entropy_bits(torch.tensor([0.0, 1.0, 1.0])) == pytest.approx(0.0)
    assert binary_confidence(torch.tensor([0.0, 1.0, 0.5, 0.5])) == pytest.approx(0.5)


def test_sparsity_flip_rate_histogram_and_nm_structure():
    a = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    b = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    assert sparsity(a) == 0.5
    assert flip_rate(a, b) == pytest.approx(2 / 8)
    with pytest.raises(ConfigError):
        flip_rate(a, b[:1])
    h = gate_histogram(torch.tensor([0.0, 0.04, 0.5, 1.0]), bins=4)
    assert h["edges"] == [0.0, 0.25, 0.5, 0.75, 1.0] and h["counts"] == [2, 0, 1, 1]
    info = nm_structure(torch.tensor([[1, 1, 0, 0, 0, 1, 0, 1]]), banks=2)
    assert info == {"pattern": "2:4 per bank", "k": 2, "n": 4, "exact": True}
    assert nm_structure(torch.tensor([[1, 1, 1, 0, 0, 1, 0, 0]]), banks=2)["exact"] is False


def _tiny() -> nn.Module:
    return make_tiny_cnn((8, 8), classes=3)


@pytest.mark.parametrize("kind", list_gates())
def test_gate_layer_rows_for_every_gate_kind(kind):
    from prunekit.augment import augment

    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    gated = augment(_tiny(), x[:1], gate=kind)
    gated.train()
    gated(x)
    gated(x)
    state: dict = {}
    rows = gate_layer_rows(gated, state=state)
    rows = gate_layer_rows(gated, state=state)  # second call: flip rates of binary gates exist
    names = {h.name for h in gated.groups}
    assert {r["layer"] for r in rows} == names
    for layer in names:
        mine = {r["name"]: r for r in rows if r["layer"] == layer}
        assert {"gate_mean", "gate_hist", "gate_values", "keep_ratio", "entropy", "confidence", "sparsity",
                "flip_rate"} <= set(mine)
        assert 0.0 <= mine["confidence"]["value"] <= 1.0
        assert mine["confidence"]["value"] == pytest.approx(1 - mine["entropy"]["value"])
        assert mine["keep_ratio"]["value"] + mine["sparsity"]["value"] == pytest.approx(1.0)
        assert sum(mine["gate_hist"]["data"]["counts"]) == 8 == len(mine["gate_values"]["data"])
        if kind == "dpp":
            assert mine["keep_ratio"]["value"] == 0.5 and "diversity" in mine
    for r in rows:
        assert set(r) <= {"layer", "name", "value", "data"} and isinstance(r["value"], float)


def test_block_gates_are_named_after_their_branch():
    from prunekit.augment import augment
    from prunekit.models import create_model

    torch.manual_seed(2)
    x = torch.randn(1, 3, 16, 16)
    gated = augment(create_model("resnet20", num_classes=3), x, gate="crisp", block_gate="crisp")
    assert gated.block_gates, "resnet20 has residual branches"
    layers = {r["layer"] for r in gate_layer_rows(gated)}
    assert {f"block:{b.name}" for b in gated.branches} <= layers
    assert {h.name for h in gated.groups} <= layers


def test_rows_for_weight_masks_report_diversity_per_layer():
    torch.manual_seed(1)
    from torch.nn.utils import parametrize

    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    for layer in (model[0], model[2]):
        parametrize.register_parametrization(layer, "weight", DPPMask(layer.weight.shape, "weight", keep=0.5))
    mask = model[0].parametrizations.weight[0]
    assert mask.k == 3
    with torch.no_grad():  # rows of Φ: decided 3-of-6 choices, two patterns used equally → C = D = 1
        mask.logits.copy_(torch.full((4, 6), -20.0))
        mask.logits[0::2, :3] = 20.0
        mask.logits[1::2, 3:] = 20.0
    model.train()
    model(torch.randn(3, 6))
    model(torch.randn(3, 6))
    rows = {(r["layer"], r["name"]): r["value"] for r in gate_layer_rows(model)}
    assert rows[("0", "confidence")] == pytest.approx(1.0, abs=1e-6)
    assert rows[("0", "diversity")] == pytest.approx(1.0, abs=1e-6)
    assert rows[("0", "sparsity")] == 0.5 and ("2", "flip_rate") in rows


def test_dpp_gate_rows_use_the_k_of_n_confidence_and_binary_gates_their_bits():
    from prunekit.augment import augment

    torch.manual_seed(3)
    x = torch.randn(2, 3, 8, 8)
    dpp = augment(_tiny(), x[:1], gate="dpp", gate_options={"keep": 0.5})
    first, second = dpp.groups[0].gate, dpp.groups[1].gate
    with torch.no_grad():
        first.dpp.logits.copy_(torch.tensor([[9.0, -9, 9, -9, 9, -9, 9, -9]]) * 3)  # decided 4 of 8
        second.dpp.logits.zero_()  # undecided
    rows = {(r["layer"], r["name"]): r["value"] for r in gate_layer_rows(dpp)}
    g1, g2 = dpp.groups[0].name, dpp.groups[1].name
    assert rows[(g1, "confidence")] == pytest.approx(1.0, abs=1e-6)
    assert rows[(g2, "confidence")] == pytest.approx(0.0, abs=1e-6)
    assert rows[(g1, "diversity")] == 0.0  # one row
    # removed structures (keep buffer) count as decided
    second.set_mask(torch.tensor([True] * 6 + [False] * 2))
    p = second.probabilities()
    assert p[0, 6:].max() < 1e-6 and p.sum() == pytest.approx(4.0, abs=1e-4)
    # binary gates: 1 − mean binary entropy in bits of the expected gate values
    crisp = augment(_tiny(), x[:1], gate="crisp")
    for h in crisp.groups:
        mine = {r["name"]: r["value"] for r in gate_layer_rows(crisp) if r["layer"] == h.name}
        assert mine["confidence"] == pytest.approx(binary_confidence(h.gate.expected().detach() * h.gate.keep))


def test_metrics_are_cheap_for_resnet50_sized_filter_masks():
    widths = [64] * 10 + [128] * 12 + [256] * 20 + [512] * 10 + [1024] * 5 + [2048] * 3
    gates = nn.ModuleList(DPPGate(w) for w in widths)
    gate_layer_rows(gates)
    t0 = time.perf_counter()
    rows = gate_layer_rows(gates)
    elapsed = time.perf_counter() - t0
    assert len({r["layer"] for r in rows}) == len(widths)
    assert elapsed < 0.5  # the benchmark (prunekit.bench.metrics) measures the real number; target 50 ms
