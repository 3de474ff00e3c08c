"""Layer sensitivity (``prunekit.layer_sensitivity``'s table) as a heat map: group × fraction removed → accuracy drop."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from prunekit.viz.common import _fig, _no_data, _pct

_ROW_PX = 22  # px per group row


def sensitivity_figure(df: pd.DataFrame | None) -> go.Figure:
    """Heat map of the accuracy drop (percentage points) with rows = groups in network order, columns = the
    share of the group's channels removed. Darker is more sensitive."""
    fig = _fig("Layer sensitivity: accuracy drop when one group alone loses channels", "share of the group removed",
               "group")
    if df is None or df.empty or not {"group", "fraction", "drop"} <= set(df.columns):
        return _no_data(fig, "no sensitivity computed yet")
    groups = list(dict.fromkeys(df["group"]))
    table = df.pivot_table(index="group", columns="fraction", values="drop", aggfunc="last").reindex(groups)
    z = table.to_numpy() * 100.0 if df["drop"].abs().max() <= 1.0 else table.to_numpy()
    sizes = df.drop_duplicates("group").set_index("group")["size"] if "size" in df else None
    labels = [f"{g} ({int(sizes[g])})" if sizes is not None else g for g in groups]
    fig.add_trace(go.Heatmap(
        z=z, x=[f"{f:.0%}" for f in table.columns], y=labels, colorscale="Reds", zmin=0,
        colorbar={"title": {"text": "drop (pts)"}},
        hovertemplate="%{y}<br>%{x} of its channels removed<br>accuracy drop %{z:.1f} points<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed", title_text="")
    fig.update_layout(height=max(260, 110 + _ROW_PX * len(groups)))
    return fig


def explain_sensitivity(df: pd.DataFrame | None) -> str:
    """One sentence: which group is the most and which the least sensitive at half of its channels."""
    if df is None or df.empty:
        return "No sensitivity computed yet."
    half = df.loc[(df["fraction"] - 0.5).abs() == (df["fraction"] - 0.5).abs().min()]
    f = float(half["fraction"].iloc[0])
    worst = half.loc[half["drop"].idxmax()]
    best = half.loc[half["drop"].idxmin()]
    base = df.attrs.get("baseline")
    ranked = {"gate": "by the run's gate values", "l2": "by the L2 norm of their filters"}.get(
        df.attrs.get("ranking", ""), "weakest first")
    start = f"Starting from {_pct(base):.1f} % accuracy, each" if base is not None else "Each"
    return (f"{start} group lost its weakest channels ({ranked}) while every other group stayed whole, BatchNorm "
            f"statistics re-estimated. At {f:.0%} removed, {worst['group']} costs the most "
            f"({_pct(worst['drop']):.1f} points) and {best['group']} the least ({_pct(best['drop']):.1f}): "
            "groups that cost little are where pruning is cheap; a method that prunes them hardest agrees.")
