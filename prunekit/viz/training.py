"""Training curves of one run: task loss against the regulariser terms, accuracy, MACs kept, temperature.

Each builder reads ``RunStore.metrics`` (columns ``step, epoch, name, value``); see :mod:`prunekit.viz`.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from prunekit.methods import loss_help
from prunekit.viz.common import (
    _fig,
    _first,
    _fit_legend,
    _last,
    _line,
    _no_data,
    _pct,
    _reg_terms,
    _series,
    _style,
)


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
    return _fit_legend(fig) if (not task.empty or terms) else _no_data(fig)


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


def _role(terms: dict[str, float]) -> str:
    # each method says what its loss terms do (Method.loss_help, in its own file); a term is logged as loss/<name>
    roles = [r for k, r in loss_help().items() if any(t.split("/")[-1].startswith(k) for t in terms)]
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
    return _fit_legend(fig) if found else _no_data(fig)


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
    fig = _fig("MACs kept: expected, own rule and hard", "step", "MACs / dense MACs")
    labels = {
        "macs_ratio/expected": "expected (soft gates)",
        "macs_ratio/relaxation": "method's own rule (before calibration)",
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
    return _fit_legend(fig) if found else _no_data(fig)


def explain_macs(metrics: pd.DataFrame, target: float | None = None) -> str:
    exp, hard = _last(metrics, "macs_ratio/expected"), _last(metrics, "macs_ratio/hard")
    if exp is None and hard is None:
        return "No MACs measured yet (the dense baseline keeps every MAC)."
    parts = []
    if hard is not None:
        parts.append(f"the hard mask keeps {hard:.0%} of the dense MACs")
    if exp is not None:
        parts.append(f"the soft gates' expectation is {exp:.0%}")
    own = _last(metrics, "macs_ratio/relaxation")
    if own is not None:
        parts.append(f"the method's own rule (its threshold, zero groups or top-k) would keep {own:.0%}")
    text = "Right now " + ", ".join(parts)
    if exp is not None and hard is not None and abs(exp - hard) > 0.1:
        text += "; the gap means many gates are undecided (between 0 and 1)"
    if target is not None and own is not None and abs(own - target) > 0.05:
        text += (f"; the own rule is {abs(own - target):.0%} off the target, so a final calibration would pick part "
                 "of the mask by ranking instead of the method")
    if target is not None and hard is not None:
        text += f"; target {target:.0%} ({'reached' if hard <= target + 0.02 else 'not reached yet'})"
    return text + "."


def temperature_figure(metrics: pd.DataFrame) -> go.Figure:
    """Relaxation temperature (left) and learning rate (right) schedules; a method without a temperature gets a
    learning-rate chart that says so in its title (not an empty temperature axis)."""
    t, lr = _series(metrics, "temperature"), _series(metrics, "lr")
    if t.empty:
        fig = _fig("Learning rate (this method has no temperature)", "step", "learning rate")
        if lr.empty:
            return _no_data(fig)
        fig.add_trace(go.Scatter(x=lr["step"], y=lr["value"], name="lr", mode="lines", line={"dash": "dot"}))
        return _fit_legend(fig)
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    _style(fig, "Temperature and learning rate", "step", "temperature")
    fig.add_trace(go.Scatter(x=t["step"], y=t["value"], name="temperature", mode="lines"), secondary_y=False)
    if not lr.empty:
        fig.add_trace(
            go.Scatter(x=lr["step"], y=lr["value"], name="lr", mode="lines", line={"dash": "dot"}), secondary_y=True
        )
    fig.update_yaxes(title_text="learning rate", secondary_y=True)
    return _fit_legend(fig)


def explain_temperature(metrics: pd.DataFrame) -> str:
    a, b = _first(metrics, "temperature"), _last(metrics, "temperature")
    if b is None:
        text = "This method has no temperature: its gates are deterministic or it prunes by magnitude"
        lr0, lr1 = _first(metrics, "lr"), _last(metrics, "lr")
        if lr1 is None:
            return text + "."
        schedule = f"constant at {lr1:.3g}" if lr0 == lr1 else f"from {lr0:.3g} to {lr1:.3g}"
        return text + f"; the chart shows its learning rate instead, {schedule}."
    if a is not None and b < a:
        return f"The temperature cooled from {a:.3g} to {b:.3g}: lower temperature makes the soft gates behave more like the final on/off mask."
    if a is not None and b > a:
        return f"The sharpness rose from {a:.3g} to {b:.3g}: the gates are being driven towards hard 0/1 values."
    return f"The temperature is constant at {b:.3g}."
