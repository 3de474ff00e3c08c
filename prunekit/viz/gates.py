"""Per-layer gate views of :mod:`prunekit.viz`: distributions, heatmaps and per-layer trends of the gates."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from prunekit.viz.common import (
    _HEIGHT,
    _fig,
    _fit_legend,
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


def explain_gate_distribution(layers: pd.DataFrame, threshold: float = 0.5, finished: bool = False) -> str:
    """One sentence on how decided the gates are; ``threshold`` is the method's own keep rule (keep iff gate >
    threshold) and ``finished`` says the run has ended, so nothing is "still" undecided: its rule has decided."""
    gates = _gate_matrix(layers)
    if not gates:
        return "No per-channel gate values yet."
    allg = np.concatenate(list(gates.values()))
    off, on = float((allg < 0.1).mean()), float((allg > 0.9).mean())
    between = 1.0 - off - on
    kept = float((allg > threshold).mean())
    worst = min(gates, key=lambda k: float((gates[k] > threshold).mean()))
    hardest = f"layer {worst} is pruned hardest ({float((gates[worst] > threshold).mean()):.0%} kept)"
    if finished:
        return (
            f"The run has ended: {on:.0%} of the gates ended clearly on, {off:.0%} clearly off and {between:.0%} in "
            f"between; the method's rule (keep iff gate > {threshold:g}) decided all of them and keeps {kept:.0%} of "
            f"the channels; {hardest}."
        )
    return (
        f"{on:.0%} of channels are clearly on, {off:.0%} clearly off and {between:.0%} still undecided "
        f"({kept:.0%} above the keep threshold {threshold:g} right now); {hardest.replace('is pruned', 'is being pruned')}."
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
    return _fit_legend(fig)


def explain_layer_trend(layers: pd.DataFrame, name: str) -> str:
    """The latest value per layer (mean, and the lowest and highest layer when they differ) and the peak over the
    whole run, which is what the eye finds in the chart (a flip rate is 0 everywhere once the mask settled)."""
    rows = _layer_rows(layers, name, "last")
    if rows.empty:
        return f"No {name} logged: this method does not report it."
    v = rows.groupby(rows["layer"].astype(str))["value"].last()
    title = name.replace("_", " ").capitalize()
    text = f"{title} ({_LAYER_TREND_HELP.get(name, name)}): "
    if float(v.max() - v.min()) < 0.005:  # one value for all: "lowest in X, highest in X" would say nothing
        text += f"now {v.mean():.2f} in every layer"
    else:
        lo, hi = v.idxmin(), v.idxmax()
        text += f"now mean {v.mean():.2f}, lowest in {lo} ({v[lo]:.2f}), highest in {hi} ({v[hi]:.2f})"
    hist = _layer_rows(layers, name, None)
    hist = hist[pd.to_numeric(hist["value"], errors="coerce").notna()]
    if hist["step"].nunique() > 1:
        peak = hist.loc[pd.to_numeric(hist["value"]).idxmax()]
        if float(peak["value"]) - float(v.max()) >= 0.005:
            text += f"; it peaked at {float(peak['value']):.2f} in {peak['layer']} at step {int(peak['step'])}"
    if name == "flip_rate":
        text += "; near zero means the mask has settled" if v.mean() < 0.01 else "; masks are still changing"
    return text + "."


def mean_by_step(layers: pd.DataFrame, names: Iterable[str]) -> pd.DataFrame:
    """Layer-averaged value of each of ``names`` per step: columns ``step, name, value`` (for summary lines)."""
    if layers is None or layers.empty:
        return pd.DataFrame(columns=["step", "name", "value"])
    d = layers[layers["name"].isin(list(names))]
    return d.groupby(["step", "name"], as_index=False)["value"].mean()
