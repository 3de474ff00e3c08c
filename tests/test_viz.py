"""Figure builders on synthetic store tables: the right traces, robust to empty input, readable explanations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from prunekit import viz


def _metrics() -> pd.DataFrame:
    rows = []
    for step in range(0, 100, 10):
        ep = step // 50
        rows += [
            (step, ep, "loss", 2.5 - step / 100),
            (step, ep, "loss/task", 2.3 - step / 100),
            (step, ep, "loss/struct", 0.2 * (1 - step / 100)),
            (step, ep, "acc/train", 0.3 + step / 200),
            (step, ep, "macs_ratio/expected", 1.0 - step / 200),
            (step, ep, "macs_ratio/hard", 1.0 - step / 150),
            (step, ep, "temperature", 5.0 - step / 25),
            (step, ep, "lr", 0.1),
        ]
    rows += [(49, 0, "acc/val", 0.5), (99, 1, "acc/val", 0.7), (99, 1, "loss/val", 1.5), (99, 1, "loss/test", 1.6)]
    return pd.DataFrame(rows, columns=["step", "epoch", "name", "value"])


def _layers(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for step in (10, 20, 30):
        for i, width in enumerate((16, 16, 32)):
            g = rng.uniform(size=width)
            g[: width // 2] = 0.0
            layer = f"layer{i}"
            rows += [
                (step, 0, layer, "gate_values", float(g.mean()), g.tolist()),
                (
                    step,
                    0,
                    layer,
                    "gate_hist",
                    None,
                    {"edges": [0, 0.5, 1.0], "counts": [width // 2, width - width // 2]},
                ),
                (step, 0, layer, "confidence", 0.1 * step / 10 + 0.05 * i, None),
                (step, 0, layer, "diversity", 0.5, None),
                (step, 0, layer, "flip_rate", 0.1 / step, None),
            ]
    return pd.DataFrame(rows, columns=["step", "epoch", "layer", "name", "value", "data"])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


EMPTY_M = pd.DataFrame(columns=["step", "epoch", "name", "value"])
EMPTY_L = pd.DataFrame(columns=["step", "epoch", "layer", "name", "value", "data"])


def test_loss_figure_separates_task_and_regulariser():
    fig = viz.loss_figure(_metrics())
    names = [t.name for t in fig.data]
    assert names == ["task", "struct"]
    assert fig.data[1].yaxis == "y2"  # regulariser on its own axis: it is much smaller than the task loss
    text = viz.explain_loss(_metrics())
    assert "fell" in text and "struct" in text


@pytest.mark.parametrize(
    "builder",
    [viz.loss_figure, viz.accuracy_figure, viz.macs_figure, viz.temperature_figure],
)
def test_scalar_figures_on_empty_and_none(builder):
    for df in (EMPTY_M, None):
        fig = builder(df)
        assert isinstance(fig, go.Figure)
        assert len(fig.data) == 0
        assert any("no data" in a.text for a in fig.layout.annotations)


@pytest.mark.parametrize("explain", [viz.explain_loss, viz.explain_accuracy, viz.explain_macs, viz.explain_temperature])
def test_explanations_are_one_line_on_empty_and_full(explain):
    for df in (EMPTY_M, _metrics()):
        text = explain(df)
        assert isinstance(text, str) and text and "\n" not in text


def test_accuracy_in_percent_and_gap_reading():
    fig = viz.accuracy_figure(_metrics())
    train = next(t for t in fig.data if t.name == "train")
    assert max(train.y) == pytest.approx(100 * (0.3 + 90 / 200))
    assert "validation 70.0%" in viz.explain_accuracy(_metrics())


def test_macs_figure_target_line_and_reading():
    fig = viz.macs_figure(_metrics(), target=0.5)
    assert {t.name for t in fig.data} == {"expected (soft gates)", "hard mask"}
    assert any(s.y0 == 0.5 for s in fig.layout.shapes)
    text = viz.explain_macs(_metrics(), target=0.5)
    assert "40%" in text and "reached" in text  # hard = 1 - 90/150
    assert "own rule" not in text  # no relaxation series logged


def test_macs_figure_plots_the_methods_own_rule_and_says_when_it_misses():
    m = _metrics()
    own = pd.DataFrame([(s, s // 50, "macs_ratio/relaxation", 1.0 - s / 300) for s in range(0, 100, 10)],
                       columns=m.columns)
    m = pd.concat([m, own], ignore_index=True)
    fig = viz.macs_figure(m, target=0.5)
    trace = next(t for t in fig.data if t.name.startswith("method's own rule"))
    assert list(trace.y) == pytest.approx([1.0 - s / 300 for s in range(0, 100, 10)])
    text = viz.explain_macs(m, target=0.5)
    assert "own rule" in text and "70%" in text and "calibration" in text  # 1 - 90/300 = 0.7, 20 points off


def test_temperature_reading_direction():
    assert "cooled from 5 to 1.4" in viz.explain_temperature(_metrics())
    assert "no temperature" in viz.explain_temperature(EMPTY_M)


def test_a_method_without_temperature_gets_a_learning_rate_chart_that_says_so():
    """CRISP logs no temperature: the reading said "this method has no temperature" above a chart titled
    "Temperature and learning rate"; now the chart is the learning rate's and the reading says so."""
    m = _metrics()
    m = m[m["name"] != "temperature"]
    fig = viz.temperature_figure(m)
    assert "no temperature" in fig.layout.title.text and "Temperature and" not in fig.layout.title.text
    assert [t.name for t in fig.data] == ["lr"] and fig.layout.yaxis.title.text == "learning rate"
    text = viz.explain_temperature(m)
    assert "no temperature" in text and "learning rate instead, constant at 0.1" in text


def test_gate_views_use_latest_step(rng):
    layers = _layers(rng)
    fig = viz.gate_distribution_figure(layers)
    assert [t.name for t in fig.data] == ["layer0", "layer1", "layer2"]
    assert all(isinstance(t, go.Violin) for t in fig.data)
    last = layers[(layers.step == 30) & (layers.layer == "layer2") & (layers.name == "gate_values")].data.iloc[0]
    assert np.allclose(fig.data[2].y, last)
    heat = viz.gate_heatmap_figure(layers)
    z = np.asarray(heat.data[0].z, dtype=float)
    assert z.shape == (3, 32)
    assert np.isnan(z[0, 16:]).all()  # narrower layers are padded, not stretched
    assert np.all(np.diff(z[2]) <= 0)  # sorted high → low
    assert "channels would survive" in viz.explain_gate_heatmap(layers)
    assert "clearly off" in viz.explain_gate_distribution(layers)


def test_gate_distribution_falls_back_to_histogram(rng):
    layers = _layers(rng)
    hist_only = layers[layers.name == "gate_hist"]
    fig = viz.gate_distribution_figure(hist_only)
    assert isinstance(fig.data[0], go.Heatmap)
    assert np.asarray(fig.data[0].z).shape == (2, 3)  # bins × layers


def test_gate_views_without_gates():
    for f in (viz.gate_distribution_figure, viz.gate_heatmap_figure):
        fig = f(EMPTY_L)
        assert len(fig.data) == 0 and fig.layout.annotations
    assert "No per-channel" in viz.explain_gate_distribution(EMPTY_L)


@pytest.mark.parametrize("name", ["confidence", "diversity", "flip_rate"])
def test_layer_trends(rng, name):
    layers = _layers(rng)
    fig = viz.layer_trend_figure(layers, name)
    assert len(fig.data) == 3 and list(fig.data[0].x) == [10, 20, 30]
    text = viz.explain_layer_trend(layers, name)
    assert "layer" in text and "\n" not in text
    assert "does not report" in viz.explain_layer_trend(EMPTY_L, name)


def test_confidence_reading_names_extremes(rng):
    text = viz.explain_layer_trend(_layers(rng), "confidence")
    assert "lowest in layer0 (0.30)" in text and "highest in layer2 (0.40)" in text


def test_flip_rate_reading_on_a_settled_mask_gives_the_peak_not_one_layer_twice():
    """Every layer at 0 at the last step: the reading said "lowest in conv1 (0.00), highest in conv1 (0.00)" while
    the chart peaks at 0.7."""
    rows = [(s, 0, layer, "flip_rate", v, None) for s, vals in ((10, (0.7, 0.2)), (20, (0.1, 0.0)), (30, (0.0, 0.0)))
            for layer, v in zip(("conv1", "layer1.0"), vals)]
    text = viz.explain_layer_trend(pd.DataFrame(rows, columns=EMPTY_L.columns), "flip_rate")
    assert "lowest in" not in text and "now 0.00 in every layer" in text
    assert "peaked at 0.70 in conv1 at step 10" in text and "settled" in text


def test_gate_reading_on_a_finished_run_says_the_rule_decided(rng):
    """A finished run has nothing "still undecided": its method's rule (at its own threshold) decided every gate."""
    layers = _layers(rng)
    live = viz.explain_gate_distribution(layers, threshold=0.25)
    assert "still undecided" in live and "threshold 0.25" in live
    done = viz.explain_gate_distribution(layers, threshold=0.25, finished=True)
    assert "undecided" not in done and "run has ended" in done and "keep iff gate > 0.25" in done


def test_pareto_front():
    df = pd.DataFrame({"x": [0.3, 0.5, 0.4, 0.9, 0.5], "y": [0.80, 0.90, 0.70, 0.92, 0.85]})
    assert viz.pareto_front(df, "x", "y").tolist() == [True, True, False, True, False]


def test_tradeoff_figure_with_anchors():
    runs = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "name": [None, "half", "quarter"],
            "method": ["crisp", "crisp", "dpp"],
            "macs_ratio/hard": [1.0, 0.5, 0.25],
            "acc/test": [0.93, 0.92, 0.80],
        }
    )
    anchors = viz.anchor_points("resnet56", "cifar10")
    assert len(anchors) == 7 and anchors["macs_ratio"].between(0.3, 0.6).all()
    assert viz.anchor_points("resnet20", "shapes").empty
    fig = viz.tradeoff_figure(runs, anchors=anchors)
    names = [t.name for t in fig.data]
    assert names == ["crisp", "dpp", "Pareto front", "published (METHODS.md)"]
    front = fig.data[2]
    assert list(front.x) == [0.25, 0.5, 1.0]
    assert max(fig.data[0].y) == pytest.approx(93.0)  # fractions shown as percent beside the anchors
    assert "3 of 3 runs" in viz.explain_tradeoff(runs)
    assert "keeps 100% of the dense cost" in viz.explain_tradeoff(runs)
    assert tuple(fig.layout.xaxis.range) == (0, 1.05)  # a fraction: not plotly's -0.5...1.5 around one point
    empty = viz.tradeoff_figure(runs.iloc[:0])
    assert len(empty.data) == 0 and "Finish a few runs" in viz.explain_tradeoff(runs.iloc[:0])


def test_width_figure_marks_removed_layers():
    widths = pd.DataFrame({"layer": ["a", "b", "c"], "before": [16, 16, 32], "after": [8, 0, 32]})
    fig = viz.width_figure(widths)
    names = [t.name for t in fig.data]
    assert names == ["original", "removed entirely", "slim"]  # the legend names what is red, no "removed = red"
    removed = fig.data[1]
    assert list(removed.y) == ["b"] and list(removed.x) == [16] and removed.marker.color == "crimson"
    text = viz.explain_widths(widths)
    assert "removed 24 of 64" in text and "1 layer(s)" in text and "(red)" in text
    # nothing removed: nothing red is promised
    kept = viz.width_figure(widths.assign(after=[8, 4, 32]))
    assert [t.name for t in kept.data] == ["original", "slim"] and "red" not in viz.explain_widths(widths.assign(after=[8, 4, 32]))


def test_width_figure_names_every_layer():
    """48 layers: every one gets its own labelled row (a category axis silently skipped 20 of them)."""
    layers = [f"layer{i}.{j}.conv{k}" for i in range(1, 4) for j in range(8) for k in (1, 2)]
    fig = viz.width_figure(pd.DataFrame({"layer": layers, "before": 16, "after": 8}))
    assert list(fig.layout.yaxis.tickvals) == layers and list(fig.layout.yaxis.ticktext) == layers
    assert fig.layout.height >= 18 * len(layers)
    assert "48 layers it changed (all shown" in viz.explain_widths(pd.DataFrame({"layer": layers, "before": 16, "after": 8}))


def test_legends_sit_in_their_own_band_below_the_axis_title(rng):
    """A legend anchored in plot coordinates grew upwards over the "step" title when it wrapped; the legend now sits
    at the figure's bottom edge with a margin reserved for its rows, so the plot keeps its height."""
    from prunekit.viz.common import _AXIS_BELOW, _LEGEND_ROW, _legend_rows

    many = pd.DataFrame([(s, 0, f"layer{i}.{j}", "flip_rate", 0.1, None) for s in (10, 20) for i in range(3)
                         for j in range(7)], columns=["step", "epoch", "layer", "name", "value", "data"])
    figs = [viz.loss_figure(_metrics()), viz.accuracy_figure(_metrics()), viz.macs_figure(_metrics(), 0.5),
            viz.temperature_figure(_metrics()), viz.layer_trend_figure(many, "flip_rate")]
    for fig in figs:
        leg = fig.layout.legend
        assert (leg.yref, leg.y, leg.yanchor) == ("container", 0, "bottom"), fig.layout.title.text
        rows = _legend_rows([t.name for t in fig.data])
        assert fig.layout.margin.b >= _AXIS_BELOW + _LEGEND_ROW * rows
        assert fig.layout.height - fig.layout.margin.b >= 320 - _AXIS_BELOW  # the plot did not shrink
    assert _legend_rows([f"layer{i}.{j}" for i in range(3) for j in range(7)]) >= 5  # 21 names wrap


def test_comparison_table_and_reading():
    result = {
        "original": {"params": 1000, "macs": 4000, "latency_ms": {1: 2.0, 64: 40.0}, "accuracy": 0.9},
        "slim": {"params": 500, "macs": 1000, "latency_ms": {1: 1.0, 64: 20.0}, "accuracy": 0.9},
        "max_abs_diff": 1e-6,
    }
    t = viz.comparison_table(result)
    assert list(t["metric"]) == [
        "parameters",
        "MACs",
        "latency batch 1 (ms)",
        "latency batch 64 (ms)",
        "accuracy (%)",
        "max output difference",
    ]
    assert t.set_index("metric").loc["MACs", "slim / original"] == pytest.approx(0.25)
    assert t.set_index("metric").loc["accuracy (%)", "slim"] == pytest.approx(90.0)
    assert np.isnan(t.set_index("metric").loc["max output difference", "original"])  # the reference, not 0 vs 0
    text = viz.explain_comparison(result)
    assert "MACs ×0.25" in text and "1.0e-06" in text
    assert viz.comparison_table({}).empty


def test_comparison_table_shows_the_deployed_forms_latency():
    result = {"original": {"params": 1000}, "slim": {"params": 500},
              "latency_forms": {"eager": {"before": {"1": 3.0}, "after": {"1": 2.0}},
                                "inference": {"before": {"1": 2.0, "64": 40.0}, "after": {"1": 1.0, "64": 10.0}},
                                "onnxruntime": {"before": {"1": 0.5}, "after": {"1": 0.25}}}}
    t = viz.comparison_table(result).set_index("metric")
    assert t.loc["latency batch 64, BN folded (ms)", "slim / original"] == pytest.approx(0.25)
    assert t.loc["latency batch 1, ONNX Runtime (ms)", "slim"] == pytest.approx(0.25)
    assert not any("eager" in m for m in t.index)  # the eager row is compare's own latency row


def test_tradeoff_on_latency_reads_ms_not_a_fraction():
    """The latency axis said "keeps 5626 % of the cost" (56.26 ms formatted as a fraction)."""
    runs = pd.DataFrame({"id": ["a", "b"], "name": ["x", "y"], "method": ["crisp", "crisp"],
                         "latency_b1_ms": [56.26, 30.0], "acc/test": [0.9, 0.6]})
    text = viz.explain_tradeoff(runs, x="latency_b1_ms")
    assert "takes 56.3 ms at 90.0%" in text and "%  of" not in text and "5626" not in text
    fig = viz.tradeoff_figure(runs, x="latency_b1_ms", x_label="latency (ms)")
    assert fig.layout.xaxis.range is None and fig.layout.xaxis.rangemode == "tozero"


def test_mean_by_step(rng):
    m = viz.mean_by_step(_layers(rng), ["confidence"])
    assert list(m["step"]) == [10, 20, 30]
    assert m["value"].iloc[0] == pytest.approx((0.1 + 0.15 + 0.2) / 3)


# -- the network as a picture (prunekit.viz.network) -------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet20_graph():
    import torch

    from prunekit.augment import augment
    from prunekit.gates import mask_gate_name
    from prunekit.models import create_model

    gated = augment(create_model("resnet20", num_classes=10), torch.zeros(1, 3, 32, 32), gate=mask_gate_name())
    return gated, viz.network_graph(gated)


def test_network_graph_of_resnet20_colours_each_residual_group_across_its_blocks(resnet20_graph):
    gated, graph = resnet20_graph
    assert len(graph.groups) == len(gated.groups) + len(gated.fixed_groups)
    assert [n.id for n in graph.nodes][:3] == ["conv1", "layer1.0.conv1", "layer1.0.conv2"]  # execution order
    assert graph.node("conv1").layers == ("conv1", "bn1")  # a BN drawn with the conv it normalises
    # the stem's channels run through every sum of stage 1: one group, written by the stem and three convs
    stem = graph.node("conv1").group
    writers = {n.id for n in graph.nodes_of(stem) if n.kind == "conv"}
    assert writers == {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"}
    assert graph.groups[stem].residual and graph.groups[stem].critical
    inner = graph.node("layer1.0.conv1").group
    assert inner != stem and not graph.groups[inner].residual
    assert graph.node("layer1.0.conv2").reads == (inner,)
    adds = [n for n in graph.nodes if n.kind == "add"]
    assert len(adds) == 9 and all(n.group is not None for n in adds)
    # the identity shortcut: the stem feeds the first sum directly, skipping the block
    assert ("conv1", adds[0].id) in graph.edges and ("layer1.0.conv2", adds[0].id) in graph.edges
    assert graph.node("layer2.0.shortcut.0").group == graph.node("layer2.0.conv2").group  # projection shortcut
    assert graph.node("fc").group is None and graph.node("fc").reads  # the classes are never pruned
    ids = [n.id for n in graph.nodes]
    assert all(ids.index(s) < ids.index(t) for s, t in graph.edges)  # edges follow execution order
    assert all(graph.node(s).depth < graph.node(t).depth for s, t in graph.edges)


def test_network_graph_shows_concatenations_and_fixed_groups_with_their_reason():
    import torch
    from torch import nn

    from prunekit.augment import augment

    class CatNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.bn_a = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.b, self.gn_b = nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4)
            self.c, self.bn_c = nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6)
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            y = torch.cat([torch.relu(self.bn_a(self.a(x))), self.gn_b(self.b(x))], 1)
            return self.fc(torch.relu(self.bn_c(self.c(y))).mean((2, 3)))

    gated = augment(CatNet(), torch.randn(2, 3, 8, 8))
    graph = viz.network_graph(gated)
    assert len(graph.groups) == len(gated.groups) + len(gated.fixed_groups) == 3
    (cat,) = [n for n in graph.nodes if n.kind == "cat"]
    assert {s for s, t in graph.edges if t == cat.id} == {"a", "b"} and (cat.id, "c") in graph.edges
    fixed = graph.groups[graph.node("b").group]
    assert not fixed.prunable and "GroupNorm" in fixed.reason
    assert set(graph.node("c").reads) == {graph.node("a").group, fixed.id}
    table = viz.group_table(graph)
    assert table.set_index("group").loc[fixed.id, "kind"] == "kept whole"
    assert "GroupNorm" in table.set_index("group").loc[fixed.id, "kept whole because"]
    assert "kept whole" in viz.explain_network(graph)
    fig = viz.network_figure(graph)
    assert viz.group_colours(graph)[fixed.id] in {t.marker.color for t in fig.data if t.mode == "markers+text"}


def test_network_keep_ratios_and_collapse(resnet20_graph):
    _, graph = resnet20_graph
    with pytest.raises(ValueError, match="keep ratios must be in"):
        viz.with_keep(graph, {"G1": 1.5})
    kept = viz.with_keep(graph, {"layer1.0.conv1": 0.25, "G0": 1.0, "block:layer1.0.conv2": 0.0})
    inner = graph.node("layer1.0.conv1").group
    assert kept.groups[inner].keep == 0.25 and kept.groups["G0"].keep == 1.0
    assert graph.groups[inner].keep is None  # pure: the input graph is unchanged
    text = viz.explain_network(kept)
    assert "removed together" in text and f"{inner} (layer1.0.conv1) keeps the least, 25%" in text
    fig = viz.network_figure(kept)
    labels = [s for t in fig.data if t.mode == "markers+text" for s in t.text]
    assert f"layer1.0.conv1 [16] · {inner} keep 25%" in labels
    assert sum(1 for t in fig.data if t.mode == "markers+text") >= len(graph.groups)  # a trace per group
    slim = viz.with_collapse(kept, {"layer1.0.conv1": [16, 4], "layer1.0.bn1": [16, 4]},
                             ["layer1.1.conv1", "layer1.1.bn1", "layer1.1.conv2", "layer1.1.bn2"])
    assert slim.node("layer1.0.conv1").after == 4 and slim.node("layer1.1.conv2").after == 0
    assert slim.node("conv1").after == 16  # not listed: kept its width
    fig = viz.network_figure(slim)
    removed = [t for t in fig.data if t.name and t.name.endswith(" removed")]
    assert {s.split(" ")[0] for t in removed for s in t.text} == {"layer1.1.conv1", "layer1.1.conv2"}
    assert all(t.marker.color == "#d62728" for t in removed)
    assert "1 layers are thinner and 2 were removed" in viz.explain_network(slim)


def test_network_graph_refuses_a_model_without_gates():
    from torch import nn

    with pytest.raises(ValueError, match="GatedModel"):
        viz.network_graph(nn.Linear(2, 2))


def test_sensitivity_heatmap_rows_in_network_order_and_reading():
    df = pd.DataFrame({"group": ["conv1"] * 2 + ["layer1.0.conv1"] * 2, "size": [16, 16, 16, 16],
                       "fraction": [0.1, 0.5] * 2, "removed": [1, 8, 1, 8], "accuracy": [0.8, 0.5, 0.8, 0.79],
                       "drop": [0.0, 0.3, 0.0, 0.01]})
    df.attrs.update(baseline=0.8, ranking="gate")
    fig = viz.sensitivity_figure(df)
    (heat,) = fig.data
    assert list(heat.y) == ["conv1 (16)", "layer1.0.conv1 (16)"] and list(heat.x) == ["10%", "50%"]
    assert heat.z[0][1] == pytest.approx(30.0)  # percentage points
    text = viz.explain_sensitivity(df)
    assert "80.0 % accuracy" in text and "conv1 costs the most (30.0 points)" in text
    assert "layer1.0.conv1 the least (1.0)" in text and "gate values" in text
    assert viz.explain_sensitivity(None) == "No sensitivity computed yet."
    assert "no sensitivity" in str(viz.sensitivity_figure(pd.DataFrame()).layout.annotations[0].text)
