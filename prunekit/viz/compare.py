"""Across-runs views of :mod:`prunekit.viz`: the sparsity-accuracy trade-off with published anchors, kept
widths, and the slim-vs-original comparison."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from prunekit.viz.common import (
    _fig,
    _fit_legend,
    _no_data,
    _pct,
)

# Published anchor points (METHODS.md, CIFAR-10 ResNet-56, base ≈ 93.5%): (label, top-1 %, MACs reduction ×).
ANCHORS_RESNET56_CIFAR10: tuple[tuple[str, float, float], ...] = (
    ("DepGraph + sparse training", 93.77, 2.13),
    ("DepGraph + sparse training", 93.64, 2.57),
    ("DepGraph", 93.46, 2.11),
    ("DepGraph", 93.36, 2.51),
    ("BN-scale (slimming)", 93.29, 2.12),
    ("L1 norm", 92.93, 2.12),
    ("HRank", 93.17, 2.0),
)


# -- across runs ---------------------------------------------------------------------------------
def _is_fraction(x: str) -> bool:
    """Whether cost column ``x`` is a share of the dense network (``macs_ratio/...``) rather than a measurement."""
    return "ratio" in x or x.endswith("fraction")


def _cost_text(x: str, value: float) -> str:
    """A cost value in words: a share of the dense cost as a percentage, a latency in ms."""
    if _is_fraction(x):
        return f"keeps {value:.0%} of the dense cost"
    if x.endswith("_ms"):
        return f"takes {value:.3g} ms"
    return f"costs {value:.3g}"


def pareto_front(df: pd.DataFrame, x: str, y: str) -> pd.Series:
    """Boolean mask of the rows no other row beats (lower ``x`` cost and higher ``y`` quality)."""
    ok = df[[x, y]].notna().all(axis=1)
    front = pd.Series(False, index=df.index)
    pts = df.loc[ok, [x, y]].astype(float)
    for i, (xi, yi) in pts.iterrows():
        dominated = ((pts[x] <= xi) & (pts[y] >= yi) & ((pts[x] < xi) | (pts[y] > yi))).any()
        front[i] = not dominated
    return front


def anchor_points(model: str | None, dataset: str | None) -> pd.DataFrame:
    """METHODS.md anchor numbers where the setting matches (ResNet-56 on CIFAR-10), else empty.

    Returns columns ``label, acc (%), macs_ratio`` (kept fraction = 1 / reduction).
    """
    if model != "resnet56" or dataset != "cifar10":
        return pd.DataFrame(columns=["label", "acc", "macs_ratio"])
    return pd.DataFrame([{"label": a, "acc": acc, "macs_ratio": 1.0 / red} for a, acc, red in ANCHORS_RESNET56_CIFAR10])


def tradeoff_figure(
    runs: pd.DataFrame,
    x: str = "macs_ratio/hard",
    y: str = "acc/test",
    anchors: pd.DataFrame | None = None,
    x_label: str = "MACs kept (fraction of dense)",
) -> go.Figure:
    """Cost ``x`` vs accuracy ``y`` across runs coloured by method, Pareto front as a line, anchors as stars."""
    fig = _fig("Accuracy vs cost across runs", x_label, "accuracy (%)")
    if runs is None or runs.empty or x not in runs or y not in runs or runs[[x, y]].dropna().empty:
        fig = _no_data(fig, f"no finished runs with {x} and {y} yet")
    else:
        d = runs.dropna(subset=[x, y]).copy()
        d[y] = d[y].astype(float).map(_pct)
        label = d["name"].fillna(d["id"]) if "name" in d else d.get("id", pd.Series(index=d.index, dtype=str))
        for method, g in d.groupby(d["method"] if "method" in d else pd.Series("run", index=d.index)):
            fig.add_trace(
                go.Scatter(
                    x=g[x],
                    y=g[y],
                    mode="markers",
                    name=str(method),
                    text=label[g.index],
                    marker={"size": 10},
                    hovertemplate="%{text}<br>x=%{x:.3g}<br>acc=%{y:.2f}%",
                )
            )
        front = d[pareto_front(d, x, y)].sort_values(x)
        fig.add_trace(
            go.Scatter(
                x=front[x], y=front[y], mode="lines", name="Pareto front", line={"color": "black", "dash": "dash"}
            )
        )
    if anchors is not None and not anchors.empty and x.startswith("macs"):
        fig.add_trace(
            go.Scatter(
                x=anchors["macs_ratio"],
                y=anchors["acc"],
                mode="markers",
                name="published (METHODS.md)",
                text=anchors["label"],
                marker={"symbol": "star", "size": 12, "color": "gold", "line": {"width": 1}},
                hovertemplate="%{text}<br>%{y:.2f}%",
            )
        )
    if _is_fraction(x):  # a share of the dense cost: plotly's autorange pads one point to -0.5...1.5
        fig.update_xaxes(range=[0, 1.05], tickformat=".0%")
    else:
        fig.update_xaxes(rangemode="tozero")
    return _fit_legend(fig)


def explain_tradeoff(runs: pd.DataFrame, x: str = "macs_ratio/hard", y: str = "acc/test") -> str:
    if runs is None or runs.empty or x not in runs or y not in runs or runs[[x, y]].dropna().empty:
        return "Finish a few runs at different targets to see the trade-off between size and accuracy."
    d = runs.dropna(subset=[x, y])
    front = d[pareto_front(d, x, y)]
    best = front.loc[front[y].astype(float).idxmax()]
    return (
        f"{len(front)} of {len(d)} runs are on the Pareto front (no other run is both cheaper and more accurate); "
        f"the most accurate {_cost_text(x, float(best[x]))} at {_pct(float(best[y])):.1f}%."
    )


# -- collapse & compare --------------------------------------------------------------------------
_WIDTH_ROW = 18  # px per layer: every layer gets its own labelled row


def width_figure(widths: pd.DataFrame) -> go.Figure:
    """Per-layer widths before/after collapse (columns ``layer, before, after``), one labelled row per layer in
    depth order; layers collapse removed entirely are drawn in red at their original width."""
    fig = _fig("Layer widths: original vs slim", "channels", "")
    if widths is None or widths.empty:
        return _no_data(fig, "collapse a run to see its widths")
    layers = [str(v) for v in widths["layer"]]
    removed = widths["after"] == 0
    fig.add_trace(go.Bar(y=layers, x=widths["before"], orientation="h", name="original", marker_color="lightgray"))
    if removed.any():
        fig.add_trace(go.Bar(y=[str(v) for v in widths.loc[removed, "layer"]], x=widths.loc[removed, "before"],
                             orientation="h", name="removed entirely", marker_color="crimson"))
    fig.add_trace(go.Bar(y=layers, x=widths["after"], orientation="h", name="slim", marker_color="steelblue"))
    # a category axis skips labels when rows are dense; every layer is named here, none is left out
    fig.update_yaxes(tickmode="array", tickvals=layers, ticktext=layers, autorange="reversed", automargin=True)
    fig.update_layout(barmode="overlay", bargap=0.15, height=_WIDTH_ROW * len(layers) + 110,
                      margin={"l": 10, "t": 45})
    return _fit_legend(fig)


def explain_widths(widths: pd.DataFrame) -> str:
    if widths is None or widths.empty:
        return "Nothing collapsed yet."
    before, after = float(widths["before"].sum()), float(widths["after"].sum())
    gone = int((widths["after"] == 0).sum())
    return (
        f"Collapse physically removed {before - after:.0f} of {before:.0f} channels ({1 - after / max(before, 1):.0%}) "
        f"in the {len(widths)} layers it changed (all shown; layers it left whole are not listed); "
        f"{gone} layer(s) vanished entirely{' (red)' if gone else ''}. These weights no longer exist in the slim "
        "network: unlike a mask, they cost nothing."
    )


_COMPARE_ROWS = (
    ("params", "parameters"),
    ("macs", "MACs"),
    ("latency_b1_ms", "latency batch 1 (ms)"),
    ("latency_b64_ms", "latency batch 64 (ms)"),
    ("accuracy", "accuracy (%)"),
)


# latency of the dense network vs the slim one as deployed (``prunekit.compare.latency_forms``)
_LATENCY_FORMS = (("inference", "BN folded"), ("onnxruntime", "ONNX Runtime"))


def comparison_table(result: dict[str, Any]) -> pd.DataFrame:
    """Original vs slim table from ``prunekit.compare``'s result.

    Accepts ``{"original": {...}, "slim": {...}}`` with keys among params, macs, latency_b1_ms, latency_b64_ms
    (or ``latency_ms: {1: .., 64: ..}``), accuracy. Returns columns ``metric, original, slim, slim / original``.
    """
    orig, slim = dict(result.get("original", {})), dict(result.get("slim", {}))
    for side in (orig, slim):
        lat = side.pop("latency_ms", None)
        if isinstance(lat, dict):
            for bs, v in lat.items():
                side.setdefault(f"latency_b{int(bs)}_ms", v)
    rows = []
    for key, label in _COMPARE_ROWS:
        a, b = orig.get(key), slim.get(key)
        if a is None and b is None:
            continue
        if key == "accuracy":
            a, b = (None if v is None else _pct(float(v)) for v in (a, b))
        ratio = float(b) / float(a) if a not in (None, 0) and b is not None else math.nan
        rows.append({"metric": label, "original": a, "slim": b, "slim / original": ratio})
    for form, label in _LATENCY_FORMS:
        lat = (result.get("latency_forms") or {}).get(form)
        if not lat:
            continue
        for bs, a in lat["before"].items():
            b = lat["after"].get(bs)
            rows.append({"metric": f"latency batch {int(bs)}, {label} (ms)", "original": a, "slim": b,
                         "slim / original": float(b) / float(a) if a and b is not None else math.nan})
    if "max_abs_diff" in result:
        rows.append(
            {
                "metric": "max output difference",
                "original": math.nan,  # the reference: a ratio to it means nothing (shown as "—" in the app)
                "slim": result["max_abs_diff"],
                "slim / original": math.nan,
            }
        )
    return pd.DataFrame(rows, columns=["metric", "original", "slim", "slim / original"])


def explain_comparison(result: dict[str, Any]) -> str:
    t = comparison_table(result).set_index("metric")
    parts = []
    for label, word in (("MACs", "MACs"), ("latency batch 1 (ms)", "batch-1 latency"), ("parameters", "parameters")):
        if label in t.index and not math.isnan(t.loc[label, "slim / original"]):
            parts.append(f"{word} ×{t.loc[label, 'slim / original']:.2f}")
    text = "The slim network has " + (", ".join(parts) if parts else "no measurements yet")
    if "max output difference" in t.index:
        text += f"; its outputs differ from the masked network's by at most {float(t.loc['max output difference', 'slim']):.1e}"
    return text + " (MACs savings usually exceed the latency savings on real hardware)."
