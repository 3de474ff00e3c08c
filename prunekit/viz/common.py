"""Small helpers shared by the figure builders of :mod:`prunekit.viz` (styling, empty figures, table reads)."""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd
import plotly.graph_objects as go

_HEIGHT = 320


# -- small helpers -------------------------------------------------------------------------------
def _fig(title: str, x: str = "step", y: str = "") -> go.Figure:
    fig = go.Figure()
    _style(fig, title, x, y)
    return fig


def _style(fig: go.Figure, title: str, x: str, y: str) -> None:
    fig.update_layout(
        title={"text": title, "font": {"size": 15}},
        height=_HEIGHT,
        margin={"l": 50, "r": 20, "t": 45, "b": _AXIS_BELOW},
        legend=_LEGEND,
        template="plotly_white",
    )
    fig.update_xaxes(title_text=x)
    fig.update_yaxes(title_text=y)


# The legend sits at the bottom edge of the figure (container coordinates) in a band of its own below the x-axis
# title. A legend placed in plot coordinates (y=-0.2) is anchored by its bottom edge, so a legend that wraps to a
# second row grows upwards over the axis title ("step") and tick labels, and narrow columns wrap it often.
_LEGEND = {"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom", "x": 0, "xanchor": "left"}
_AXIS_BELOW = 48  # px below the plot for tick labels and the x-axis title
_LEGEND_ROW = 20  # px per legend row
_LEGEND_WIDTH = 330  # px a legend row is assumed to have: a chart in one of two columns on a laptop screen


def _legend_rows(names: list[str], width: float = _LEGEND_WIDTH) -> int:
    """How many rows a horizontal legend of ``names`` needs at ``width`` px (≈ 40 px symbol + 6.5 px a character)."""
    rows, used = (1, 0.0) if names else (0, 0.0)
    for n in names:
        w = 40 + 6.5 * len(n)
        if used and used + w > width:
            rows, used = rows + 1, 0.0
        used += w
    return rows


def _fit_legend(fig: go.Figure) -> go.Figure:
    """Reserve a band below the x-axis title for the legend's rows and grow the figure by it, so the plot keeps
    its height and the legend never covers the axis title or the tick labels (call after adding the traces;
    calling it again gives the same layout)."""
    names = [str(t.name) for t in fig.data if t.name and t.showlegend is not False]
    if len(names) < 2 and fig.layout.showlegend is not True:  # plotly draws no legend for a single trace
        names = []
    band = _LEGEND_ROW * _legend_rows(names) + (6 if names else 0)
    above = (fig.layout.height or _HEIGHT) - (fig.layout.margin.b if fig.layout.margin.b is not None else _AXIS_BELOW)
    fig.update_layout(legend=_LEGEND, margin={"b": _AXIS_BELOW + band}, height=math.ceil(above + _AXIS_BELOW + band))
    return fig


def _no_data(fig: go.Figure, note: str = "no data yet") -> go.Figure:
    fig.add_annotation(text=note, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font={"size": 14})
    return fig


def _series(df: pd.DataFrame | None, name: str) -> pd.DataFrame:
    """Rows of scalar ``name`` as [step, value] sorted by step (last value kept per step)."""
    if df is None or df.empty or "name" not in df:
        return pd.DataFrame(columns=["step", "value"])
    s = df.loc[df["name"] == name, ["step", "value"]].dropna()
    return s.drop_duplicates("step", keep="last").sort_values("step")


def _names(df: pd.DataFrame | None, prefix: str) -> list[str]:
    if df is None or df.empty or "name" not in df:
        return []
    return sorted(n for n in df["name"].unique() if isinstance(n, str) and n.startswith(prefix))


def _last(df: pd.DataFrame | None, name: str) -> float | None:
    s = _series(df, name)
    return None if s.empty else float(s["value"].iloc[-1])


def _first(df: pd.DataFrame | None, name: str) -> float | None:
    s = _series(df, name)
    return None if s.empty else float(s["value"].iloc[0])


def _line(fig: go.Figure, s: pd.DataFrame, label: str, **kw: Any) -> None:
    fig.add_trace(go.Scatter(x=s["step"], y=s["value"], mode="lines", name=label, **kw))


def _pct(x: float) -> float:
    """Accuracy in percent whether the store kept a fraction (0..1) or a percentage."""
    return x * 100.0 if abs(x) <= 1.0 else x


def _layer_rows(layers: pd.DataFrame | None, name: str, step: int | str | None = "last") -> pd.DataFrame:
    """Per-layer rows named ``name`` at ``step`` ("last" = each layer's latest, None = all steps)."""
    if layers is None or layers.empty or "name" not in layers:
        return pd.DataFrame(columns=["step", "epoch", "layer", "name", "value", "data"])
    rows = layers[layers["name"] == name]
    if step == "last" and not rows.empty:
        rows = rows[rows["step"] == rows["step"].max()]
    elif step is not None and step != "last":
        rows = rows[rows["step"] == step]
    return rows


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _layer_order(rows: pd.DataFrame) -> list[str]:
    # The store returns layers sorted as text; numbers compared as numbers restore depth order
    # (layer2.0 before layer10.0) for the usual dotted module names.
    return sorted(dict.fromkeys(rows["layer"].astype(str)), key=_natural_key)


# -- training scalars ----------------------------------------------------------------------------
_NOT_TERMS = ("loss/task", "loss/train", "loss/val", "loss/test")


def _reg_terms(metrics: pd.DataFrame | None) -> list[str]:
    """``loss/<term>`` names of regulariser terms (not the task loss measured on a split)."""
    return [n for n in _names(metrics, "loss/") if n not in _NOT_TERMS]
