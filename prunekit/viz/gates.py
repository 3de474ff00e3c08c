"""Per-layer gate views of :mod:`prunekit.viz`: distributions, heatmaps and per-layer trends of the gates."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from prunekit.viz.common import (
    _HEIGHT,
    _fig,
    _layer_order,
    _layer_rows,
    _no_data,
)

_LAYER_TREND_HELP = {
    "confidence": ("1 = every mask row or gate has decided what it keeps, 0 = still uniform "
                   "(DPP: 1 − Σ h(p) / (N·h(k/N)) over its k-of-N inclusion probabilities p)"),
    "diversity": ("how differently the rows of a layer choose: 0 = all rows keep the same candidates, "
                  "1 = decided rows that together keep every candidate equally often"),
    "entropy": "indecision, 1 − confidence (DPP: of the k-of-N inclusion probabilities; gates: bits per channel)",
    "flip_rate": "fraction of hard mask entries that changed since the previous log",
    "keep_ratio": "fraction of channels the hard mask keeps",
}


# -- per-layer gate views ------------------------------------------------------------------------
def _gate_matrix(layers: pd.DataFrame | None, step: int | str | None = "last") -> dict[str, np.ndarray]:
    rows = _layer_rows(layers, "gate_values", step)
    out: dict[str, np.ndarray] = {}
    for layer in _layer_order(rows) if not rows.empty else []:
        data = rows.loc[rows["layer"].astype(str) == layer, "data"].iloc[-1]
        if isinstance(data, (list, tuple, np.ndarray)) and len(data):
            out[layer] = np.asarray(data, dtype=float).ravel()
    return out


def gate_distribution_figure(layers: pd.DataFrame, step: int | str | None = "last") -> go.Figure:
    """One violin per layer of its gate values (falls back to ``gate_hist`` counts as a heat map)."""
    fig = _fig("Gate values per layer", "layer", "gate value")
    gates = _gate_matrix(layers, step)
    if gates:
        for layer, g in gates.items():
            fig.add_trace(
                go.Violin(y=g, name=layer, points=False, box_visible=True, meanline_visible=True, showlegend=False)
            )
        fig.update_yaxes(range=[-0.05, 1.05] if max(float(g.max()) for g in gates.values()) <= 1.0 else None)
        return fig
    hist = _layer_rows(layers, "gate_hist", step)
    if hist.empty:
        return _no_data(fig, "no gate values logged (this method has no gates)")
    names = _layer_order(hist)
    edges, z = None, []
    for layer in names:
        d = hist.loc[hist["layer"].astype(str) == layer, "data"].iloc[-1] or {}
        edges = d.get("edges", edges)
        z.append(d.get("counts", []))
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])] if edges else None
    fig.add_trace(
        go.Heatmap(z=np.asarray(z, dtype=float).T, x=names, y=centres, colorscale="Blues", colorbar={"title": "count"})
    )
    return fig


def explain_gate_distribution(layers: pd.DataFrame, threshold: float = 0.5) -> str:
    gates = _gate_matrix(layers)
    if not gates:
        return "No per-channel gate values yet."
    allg = np.concatenate(list(gates.values()))
    off, on = float((allg < 0.1).mean()), float((allg > 0.9).mean())
    undecided = 1.0 - off - on
    worst = min(gates, key=lambda k: float((gates[k] > threshold).mean()))
    return (
        f"{on:.0%} of channels are clearly on, {off:.0%} clearly off and {undecided:.0%} still undecided; "
        f"layer {worst} is being pruned hardest ({float((gates[worst] > threshold).mean()):.0%} kept)."
    )


def gate_heatmap_figure(layers: pd.DataFrame, step: int | str | None = "last") -> go.Figure:
    """Layer × channel heat map, each layer's gates sorted high → low so the cut-off reads as an edge."""
    fig = _fig("Gates by layer (channels sorted by gate)", "channel rank", "layer")
    gates = _gate_matrix(layers, step)
    if not gates:
        return _no_data(fig, "no gate values logged (this method has no gates)")
    width = max(len(g) for g in gates.values())
    z = np.full((len(gates), width), np.nan)
    for i, g in enumerate(gates.values()):
        z[i, : len(g)] = np.sort(g)[::-1]
    fig.add_trace(
        go.Heatmap(
            z=z,
            y=list(gates),
            colorscale="Viridis",
            zmin=0,
            zmax=max(1.0, float(np.nanmax(z))),
            colorbar={"title": "gate"},
        )
    )
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(height=max(_HEIGHT, 16 * len(gates) + 120))
    return fig


def explain_gate_heatmap(layers: pd.DataFrame, threshold: float = 0.5) -> str:
    gates = _gate_matrix(layers)
    if not gates:
        return "No per-channel gate values yet."
    kept = {k: int((g > threshold).sum()) for k, g in gates.items()}
    total = sum(len(g) for g in gates.values())
    return (
        f"Bright cells are open gates; where a row turns dark is that layer's cut-off. At threshold {threshold:g}, "
        f"{sum(kept.values())} of {total} channels would survive — until collapse they are only masked, not removed."
    )


def layer_trend_figure(layers: pd.DataFrame, name: str) -> go.Figure:
    """Per-layer metric ``name`` (confidence, diversity, entropy, flip_rate, ...) over steps, one line per layer."""
    help_ = _LAYER_TREND_HELP.get(name, name)
    fig = _fig(f"{name.replace('_', ' ').capitalize()} per layer", "step", name)
    rows = _layer_rows(layers, name, None)
    if rows.empty:
        return _no_data(fig, f"no {name} logged by this method")
    for layer in _layer_order(rows):
        s = rows[rows["layer"].astype(str) == layer].sort_values("step")
        fig.add_trace(
            go.Scatter(x=s["step"], y=s["value"], mode="lines", name=layer, hovertemplate=f"{layer}: %{{y:.3f}}")
        )
    fig.update_layout(meta={"help": help_})
    return fig


def explain_layer_trend(layers: pd.DataFrame, name: str) -> str:
    rows = _layer_rows(layers, name, "last")
    if rows.empty:
        return f"No {name} logged: this method does not report it."
    v = rows.groupby(rows["layer"].astype(str))["value"].last()
    lo, hi = v.idxmin(), v.idxmax()
    base = f"{name.replace('_', ' ').capitalize()} ({_LAYER_TREND_HELP.get(name, name)}): mean {v.mean():.2f}, lowest in {lo} ({v[lo]:.2f}), highest in {hi} ({v[hi]:.2f})"
    if name == "flip_rate":
        base += "; near zero means the mask has settled" if v.mean() < 0.01 else "; masks are still changing"
    return base + "."


def mean_by_step(layers: pd.DataFrame, names: Iterable[str]) -> pd.DataFrame:
    """Layer-averaged value of each of ``names`` per step: columns ``step, name, value`` (for summary lines)."""
    if layers is None or layers.empty:
        return pd.DataFrame(columns=["step", "name", "value"])
    d = layers[layers["name"].isin(list(names))]
    return d.groupby(["step", "name"], as_index=False)["value"].mean()
