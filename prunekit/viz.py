"""Plotly figure builders shared by the Streamlit app and the notebooks.

Every chart is a pure function ``DataFrame -> go.Figure`` plus an ``explain_*`` function that returns one
plain-language sentence reading the same data, for people learning pruning. Inputs are the run store's
long tables (``RunStore.metrics``: columns ``step, epoch, name, value``; ``RunStore.layer_metrics``: columns
``step, epoch, layer, name, value, data``; ``RunStore.list_runs``: one row per run). An empty or partial
table gives a figure with a "no data yet" note, never an exception, because live views poll runs that
have only just started.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

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
_HEIGHT = 320
_LAYER_TREND_HELP = {
    "confidence": "1 = every gate row has made up its mind, 0 = still uniform",
    "diversity": "how differently the rows of a layer choose (0 = all rows pick the same pattern)",
    "entropy": "gate entropy (bits of indecision per channel)",
    "flip_rate": "fraction of hard mask entries that changed since the previous log",
    "keep_ratio": "fraction of channels the hard mask keeps",
}


# -- small helpers -------------------------------------------------------------------------------
def _fig(title: str, x: str = "step", y: str = "") -> go.Figure:
    fig = go.Figure()
    _style(fig, title, x, y)
    return fig


def _style(fig: go.Figure, title: str, x: str, y: str) -> None:
    fig.update_layout(
        title={"text": title, "font": {"size": 15}},
        height=_HEIGHT,
        margin={"l": 50, "r": 20, "t": 45, "b": 40},
        legend={"orientation": "h", "y": -0.2},
        template="plotly_white",
    )
    fig.update_xaxes(title_text=x)
    fig.update_yaxes(title_text=y)


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


def loss_figure(metrics: pd.DataFrame) -> go.Figure:
    """Task loss (left axis) against each regulariser term (right axis; often orders of magnitude smaller)."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    _style(fig, "Loss: task vs regulariser", "step", "task loss")
    task = _series(metrics, "loss/task")
    if task.empty:
        task = _series(metrics, "loss")
    if not task.empty:
        fig.add_trace(go.Scatter(x=task["step"], y=task["value"], mode="lines", name="task"), secondary_y=False)
    terms = _reg_terms(metrics)
    for n in terms:
        s = _series(metrics, n)
        fig.add_trace(
            go.Scatter(x=s["step"], y=s["value"], mode="lines", name=n.split("/", 1)[1], line={"dash": "dot"}),
            secondary_y=True,
        )
    fig.update_yaxes(title_text="regulariser", secondary_y=True)
    return fig if (not task.empty or terms) else _no_data(fig)


def explain_loss(metrics: pd.DataFrame) -> str:
    task = _series(metrics, "loss/task")
    if task.empty:
        task = _series(metrics, "loss")
    if task.empty:
        return "No loss logged yet: the run has not finished its first logging interval."
    a, b = float(task["value"].iloc[0]), float(task["value"].iloc[-1])
    trend = "fell" if b < a else "rose" if b > a else "stayed"
    text = f"The task loss {trend} from {a:.3g} to {b:.3g} over {int(task['step'].iloc[-1])} steps"
    terms = {n.split("/", 1)[1]: _last(metrics, n) for n in _reg_terms(metrics)}
    terms = {k: v for k, v in terms.items() if v is not None}
    if not terms:
        return text + "; this method adds no regulariser, so the loss only measures mistakes."
    reg = sum(terms.values())
    share = reg / (reg + b) if reg + b > 0 else 0.0
    return text + f"; the regulariser ({', '.join(terms)}) adds {reg:.3g}, {share:.0%} of the total: " + _role(terms)


# What each regulariser term does, for the one-line readings (names as the methods log them).
_TERM_ROLES = {
    "entropy": "the entropy term makes each mask row confident (one clear choice instead of a spread)",
    "struct": "the structure term pulls the relaxed MACs towards the target",
    "prune_basis": "the prune basis pushes undecided gates to clearly on or off",
    "l1_channel": "the L1 terms shrink the masks of channels and blocks the budget cannot afford",
    "l0": "the L0 term lowers the expected number of open gates towards the budget",
    "bn_l1": "the L1 term on BatchNorm scales makes unimportant channels fade out",
}


def _role(terms: dict[str, float]) -> str:
    roles = [r for k, r in _TERM_ROLES.items() if any(t.startswith(k) for t in terms)]
    return ("; ".join(roles) if roles else "it is what pushes the gates towards the size target") + "."


def accuracy_figure(metrics: pd.DataFrame) -> go.Figure:
    """Train / validation / test accuracy (percent) over steps."""
    fig = _fig("Accuracy", "step", "accuracy (%)")
    found = False
    for n, kw in (("acc/train", {}), ("acc/val", {}), ("acc/test", {"mode": "lines+markers"}), ("miou/val", {})):
        s = _series(metrics, n)
        if not s.empty:
            found = True
            s = s.assign(value=s["value"].map(_pct))
            fig.add_trace(go.Scatter(x=s["step"], y=s["value"], name=n.split("/", 1)[1], mode=kw.get("mode", "lines")))
    return fig if found else _no_data(fig)


def explain_accuracy(metrics: pd.DataFrame) -> str:
    tr, va = _last(metrics, "acc/train"), _last(metrics, "acc/val")
    if tr is None and va is None:
        return "No accuracy logged yet."
    if va is None:
        return f"Training accuracy is {_pct(tr):.1f}%; validation accuracy appears at the end of each epoch."
    if tr is None:
        return f"Validation accuracy is {_pct(va):.1f}%."
    gap = _pct(tr) - _pct(va)
    verdict = (
        "a large gap: the network memorises the training set" if gap > 10 else "the two agree, no sign of overfitting"
    )
    return f"Training accuracy {_pct(tr):.1f}% vs validation {_pct(va):.1f}%: {verdict}."


def macs_figure(metrics: pd.DataFrame, target: float | None = None) -> go.Figure:
    """Expected (relaxed, what the regulariser sees) vs hard (what collapse would give) MACs ratio."""
    fig = _fig("MACs kept: expected vs hard", "step", "MACs / dense MACs")
    labels = {
        "macs_ratio/expected": "expected (soft gates)",
        "macs_ratio/hard": "hard mask",
        "macs_ratio/train": "spent in training",
    }
    found = False
    for n, label in labels.items():
        s = _series(metrics, n)
        if not s.empty:
            found = True
            _line(fig, s, label, line={"dash": "dot"} if n.endswith("expected") else {})
    if target is not None:
        fig.add_hline(y=target, line={"color": "gray", "dash": "dash"}, annotation_text=f"target {target:g}")
    fig.update_yaxes(rangemode="tozero")
    return fig if found else _no_data(fig)


def explain_macs(metrics: pd.DataFrame, target: float | None = None) -> str:
    exp, hard = _last(metrics, "macs_ratio/expected"), _last(metrics, "macs_ratio/hard")
    if exp is None and hard is None:
        return "No MACs measured yet (the dense baseline keeps every MAC)."
    parts = []
    if hard is not None:
        parts.append(f"the hard mask keeps {hard:.0%} of the dense MACs")
    if exp is not None:
        parts.append(f"the soft gates' expectation is {exp:.0%}")
    text = "Right now " + " and ".join(parts)
    if exp is not None and hard is not None and abs(exp - hard) > 0.1:
        text += "; the gap means many gates are undecided (between 0 and 1)"
    if target is not None and hard is not None:
        text += f"; target {target:.0%} ({'reached' if hard <= target + 0.02 else 'not reached yet'})"
    return text + "."


def temperature_figure(metrics: pd.DataFrame) -> go.Figure:
    """Relaxation temperature (left) and learning rate (right) schedules."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    _style(fig, "Temperature and learning rate", "step", "temperature")
    t, lr = _series(metrics, "temperature"), _series(metrics, "lr")
    if not t.empty:
        fig.add_trace(go.Scatter(x=t["step"], y=t["value"], name="temperature", mode="lines"), secondary_y=False)
    if not lr.empty:
        fig.add_trace(
            go.Scatter(x=lr["step"], y=lr["value"], name="lr", mode="lines", line={"dash": "dot"}), secondary_y=True
        )
    fig.update_yaxes(title_text="learning rate", secondary_y=True)
    return fig if not (t.empty and lr.empty) else _no_data(fig)


def explain_temperature(metrics: pd.DataFrame) -> str:
    a, b = _first(metrics, "temperature"), _last(metrics, "temperature")
    if b is None:
        return "This method has no temperature: its gates are deterministic or it prunes by magnitude."
    if a is not None and b < a:
        return f"The temperature cooled from {a:.3g} to {b:.3g}: lower temperature makes the soft gates behave more like the final on/off mask."
    if a is not None and b > a:
        return f"The sharpness rose from {a:.3g} to {b:.3g}: the gates are being driven towards hard 0/1 values."
    return f"The temperature is constant at {b:.3g}."


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


# -- across runs ---------------------------------------------------------------------------------
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
    return fig


def explain_tradeoff(runs: pd.DataFrame, x: str = "macs_ratio/hard", y: str = "acc/test") -> str:
    if runs is None or runs.empty or x not in runs or y not in runs or runs[[x, y]].dropna().empty:
        return "Finish a few runs at different targets to see the trade-off between size and accuracy."
    d = runs.dropna(subset=[x, y])
    front = d[pareto_front(d, x, y)]
    best = front.loc[front[y].astype(float).idxmax()]
    return (
        f"{len(front)} of {len(d)} runs are on the Pareto front (no other run is both cheaper and more accurate); "
        f"the most accurate keeps {float(best[x]):.0%} of the cost at {_pct(float(best[y])):.1f}%."
    )


# -- collapse & compare --------------------------------------------------------------------------
def width_figure(widths: pd.DataFrame) -> go.Figure:
    """Per-layer widths before/after collapse (columns ``layer, before, after``); removed layers in red."""
    fig = _fig("Layer widths: original vs slim", "layer", "channels")
    if widths is None or widths.empty:
        return _no_data(fig, "collapse a run to see its widths")
    fig.add_trace(go.Bar(x=widths["layer"], y=widths["before"], name="original", marker_color="lightgray"))
    colors = ["crimson" if a == 0 else "steelblue" for a in widths["after"]]
    fig.add_trace(go.Bar(x=widths["layer"], y=widths["after"], name="slim (removed = red)", marker_color=colors))
    fig.update_layout(barmode="overlay", bargap=0.15)
    return fig


def explain_widths(widths: pd.DataFrame) -> str:
    if widths is None or widths.empty:
        return "Nothing collapsed yet."
    before, after = float(widths["before"].sum()), float(widths["after"].sum())
    gone = int((widths["after"] == 0).sum())
    return (
        f"Collapse physically removed {before - after:.0f} of {before:.0f} channels ({1 - after / max(before, 1):.0%}); "
        f"{gone} layer(s) vanished entirely. These weights no longer exist in the slim network: unlike a mask, they cost nothing."
    )


_COMPARE_ROWS = (
    ("params", "parameters"),
    ("macs", "MACs"),
    ("latency_b1_ms", "latency batch 1 (ms)"),
    ("latency_b64_ms", "latency batch 64 (ms)"),
    ("accuracy", "accuracy (%)"),
)


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
    if "max_abs_diff" in result:
        rows.append(
            {
                "metric": "max output difference",
                "original": 0.0,
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


def mean_by_step(layers: pd.DataFrame, names: Iterable[str]) -> pd.DataFrame:
    """Layer-averaged value of each of ``names`` per step: columns ``step, name, value`` (for summary lines)."""
    if layers is None or layers.empty:
        return pd.DataFrame(columns=["step", "name", "value"])
    d = layers[layers["name"].isin(list(names))]
    return d.groupby(["step", "name"], as_index=False)["value"].mean()
