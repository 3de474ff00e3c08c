"""Figures of the pareto/latency suites: accuracy vs MACs and latency vs MACs, one pair per dataset.

Written three ways so they open anywhere: one self-contained HTML page of plotly figures (plotly.js
embedded, no network needed), a dependency-free SVG per figure (renders in a markdown viewer, small
enough to commit beside BENCHMARKS.md), and a PNG per figure only when matplotlib is importable
(kaleido, plotly's image exporter, is not a dependency).
"""

from __future__ import annotations

import html
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from prunekit.viz import anchor_points, tradeoff_figure

logger = logging.getLogger(__name__)

_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#000000", "#aa6600")


def _frame(summary: Sequence[dict[str, Any]], dataset: str) -> pd.DataFrame:
    rows = [s for s in summary if s["dataset"] == dataset and "error" not in s]
    df = pd.DataFrame(rows)
    if not df.empty:
        df["name"] = [f"{m} @ {t}" if t is not None else m for m, t in zip(df["method"], df["target"])]
        df["id"] = df["name"]
    return df


def accuracy_figure(summary: Sequence[dict[str, Any]], dataset: str, model: str | None = None) -> go.Figure:
    """Test accuracy (%) vs kept MACs fraction, coloured by method, Pareto front dashed, paper anchors as stars."""
    df = _frame(summary, dataset)
    fig = tradeoff_figure(df, x="macs_ratio", y="acc_test", anchors=anchor_points(model, dataset))
    fig.update_layout(title=f"{dataset}: accuracy vs MACs")
    return fig


def latency_figure(summary: Sequence[dict[str, Any]], dataset: str, batch: int = 1) -> go.Figure:
    """Measured CPU latency (ms) vs kept MACs fraction, one marker per slim network."""
    df = _frame(summary, dataset)
    key = f"latency_ms_b{batch}"
    fig = go.Figure()
    if not df.empty and key in df:
        for method, g in df.groupby("method"):
            fig.add_trace(go.Scatter(x=g["macs_ratio"], y=g[key], mode="markers", name=str(method), text=g["name"],
                                     marker={"size": 10}, hovertemplate="%{text}<br>MACs %{x:.3f}<br>%{y:.2f} ms"))
    fig.update_layout(title=f"{dataset}: CPU latency (batch {batch}) vs MACs", xaxis_title="MACs kept (fraction of dense)",
                      yaxis_title="latency (ms)", height=360)
    return fig


def svg_scatter(series: dict[str, list[tuple[float, float]]], title: str, x_label: str, y_label: str,
                width: int = 640, height: int = 400) -> str:
    """A plain SVG scatter plot (no dependencies): one colour per series, legend on the right."""
    pts = [p for v in series.values() for p in v]
    left, right, top, bottom = 60, 150, 30, 45
    w, h = width - left - right, height - top - bottom
    if pts:
        x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
        y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    else:
        x0, x1, y0, y1 = 0.0, 1.0, 0.0, 1.0
    dx, dy = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    x0, x1, y0, y1 = x0 - 0.05 * dx, x1 + 0.05 * dx, y0 - 0.05 * dy, y1 + 0.05 * dy

    def sx(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * w

    def sy(v: float) -> float:
        return top + h - (v - y0) / (y1 - y0) * h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           'font-size="11">', f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="13">{html.escape(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#888"/>']
    for i in range(5):
        xv, yv = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        out.append(f'<text x="{sx(xv):.1f}" y="{top + h + 14}" text-anchor="middle">{xv:.3g}</text>')
        out.append(f'<text x="{left - 4}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.3g}</text>')
    out.append(f'<text x="{left + w / 2}" y="{height - 8}" text-anchor="middle">{html.escape(x_label)}</text>')
    out.append(f'<text x="14" y="{top + h / 2}" text-anchor="middle" transform="rotate(-90 14 {top + h / 2})">'
               f'{html.escape(y_label)}</text>')
    for i, (name, values) in enumerate(series.items()):
        c = _COLORS[i % len(_COLORS)]
        for x, y in values:
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4.5" fill="{c}" fill-opacity="0.8"/>')
        ly = top + 10 + 15 * i
        out.append(f'<circle cx="{left + w + 14}" cy="{ly}" r="4.5" fill="{c}"/>')
        out.append(f'<text x="{left + w + 24}" y="{ly + 4}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _series(summary: Sequence[dict[str, Any]], dataset: str, y: str, scale: float = 1.0) -> dict[str, list]:
    out: dict[str, list[tuple[float, float]]] = {}
    for s in summary:
        if s["dataset"] == dataset and "error" not in s and s.get(y) is not None:
            out.setdefault(s["method"], []).append((float(s["macs_ratio"]), scale * float(s[y])))
    return out


def _png(series: dict[str, list[tuple[float, float]]], title: str, x_label: str, y_label: str, path: Path) -> bool:
    if importlib.util.find_spec("matplotlib") is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, pts in series.items():
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=name)
    ax.set(title=title, xlabel=x_label, ylabel=y_label)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_pareto_plots(summary: Sequence[dict[str, Any]], out_dir: str | Path, title: str = "",
                       model: str | None = None) -> list[Path]:
    """Write ``pareto_plots.html`` (all figures, offline) and per dataset ``pareto_<ds>.svg``,
    ``latency_<ds>.svg`` (and ``.png`` with matplotlib). Returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    parts: list[str] = []
    datasets = list(dict.fromkeys(s["dataset"] for s in summary))
    for ds in datasets:
        for fig in (accuracy_figure(summary, ds, model), latency_figure(summary, ds)):
            parts.append(fig.to_html(full_html=False, include_plotlyjs=not parts))
        for kind, y, scale, label in (("pareto", "acc_test", 100.0, "test accuracy (%)"),
                                      ("latency", "latency_ms_b1", 1.0, "CPU latency, batch 1 (ms)")):
            series = _series(summary, ds, y, scale)
            name = f"{kind}_{ds.replace(':', '_').replace('/', '_')}"
            svg = out / f"{name}.svg"
            svg.write_text(svg_scatter(series, f"{title} {ds}: {label} vs MACs".strip(), "MACs kept (fraction of dense)",
                                       label))
            written.append(svg)
            if _png(series, f"{ds}: {label} vs MACs", "MACs kept (fraction of dense)", label, out / f"{name}.png"):
                written.append(out / f"{name}.png")
    page = out / "pareto_plots.html"
    page.write_text(f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
                    + "\n".join(parts) + "</body></html>")
    written.insert(0, page)
    logger.info("bench plots: %s", ", ".join(str(p) for p in written))
    return written
