"""Plotly figure builders shared by the Streamlit app and the notebooks.

Every chart is a pure function ``DataFrame -> go.Figure`` plus an ``explain_*`` function that returns one
plain-language sentence reading the same data, for people learning pruning. Inputs are the run store's
long tables (``RunStore.metrics``: columns ``step, epoch, name, value``; ``RunStore.layer_metrics``: columns
``step, epoch, layer, name, value, data``; ``RunStore.list_runs``: one row per run). An empty or partial
table gives a figure with a "no data yet" note, never an exception, because live views poll runs that
have only just started.

One module per kind of view: :mod:`~prunekit.viz.training` (one run's curves: loss, accuracy, MACs,
temperature), :mod:`~prunekit.viz.gates` (per-layer gate distributions, heat maps and trends),
:mod:`~prunekit.viz.compare` (across runs: trade-off with published anchors, kept widths, slim vs original),
:mod:`~prunekit.viz.network` (the network as a graph of layers with its coupled-channel groups coloured: its data
is computed from a gated model by :func:`network_graph`), :mod:`~prunekit.viz.sensitivity` (layer sensitivity);
:mod:`~prunekit.viz.common` holds their styling and table helpers. Every builder is importable from here.
"""

from prunekit.viz.compare import (
    ANCHORS_RESNET56_CIFAR10,
    anchor_points,
    comparison_table,
    explain_comparison,
    explain_tradeoff,
    explain_widths,
    pareto_front,
    tradeoff_figure,
    width_figure,
)
from prunekit.viz.gates import (
    explain_gate_distribution,
    explain_gate_heatmap,
    explain_layer_trend,
    gate_distribution_figure,
    gate_heatmap_figure,
    layer_trend_figure,
    mean_by_step,
)
from prunekit.viz.network import (
    GroupInfo,
    NetworkGraph,
    Node,
    explain_network,
    group_colours,
    group_table,
    network_figure,
    network_graph,
    with_collapse,
    with_keep,
)
from prunekit.viz.sensitivity import explain_sensitivity, sensitivity_figure
from prunekit.viz.training import (
    accuracy_figure,
    explain_accuracy,
    explain_loss,
    explain_macs,
    explain_temperature,
    loss_figure,
    macs_figure,
    temperature_figure,
)

__all__ = [
    "loss_figure",
    "explain_loss",
    "accuracy_figure",
    "explain_accuracy",
    "macs_figure",
    "explain_macs",
    "temperature_figure",
    "explain_temperature",
    "gate_distribution_figure",
    "explain_gate_distribution",
    "gate_heatmap_figure",
    "explain_gate_heatmap",
    "layer_trend_figure",
    "explain_layer_trend",
    "mean_by_step",
    "ANCHORS_RESNET56_CIFAR10",
    "pareto_front",
    "anchor_points",
    "tradeoff_figure",
    "explain_tradeoff",
    "width_figure",
    "explain_widths",
    "comparison_table",
    "explain_comparison",
    "GroupInfo",
    "NetworkGraph",
    "Node",
    "network_graph",
    "with_keep",
    "with_collapse",
    "group_colours",
    "group_table",
    "network_figure",
    "explain_network",
    "sensitivity_figure",
    "explain_sensitivity",
]
