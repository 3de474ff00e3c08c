"""Live views: a run's metrics read incrementally, and figures built once per data version for all sessions.

Live views read only the rows logged since their last refresh (:func:`live_metrics`) and key every figure on
the version of the rows it draws (:func:`frame_version`), so a refresh that finds nothing new rebuilds
nothing (:func:`~prunekit.app_support._process.cached_figure`). The Explore page's run table with collapse
measurements (:func:`runs_for_explore`) lives here too: it is the trade-off chart's data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from prunekit.app_support._form import own_threshold
from prunekit.app_support._process import cached_figure, st_cached
from prunekit.app_support._runs import ACTIVE, cached_store

# Live views refresh this often while a run trains (issue 8: ~1-2 s). A refresh that finds no new rows costs a
# few ms (cached figures); runs flush their metrics every 2 s, so charts are rebuilt at most that often.
LIVE_EVERY_S = 1.5


@dataclass(frozen=True)
class LiveSnapshot:
    """A run's row and its scalar metrics (``RunStore.metrics``' long table) as a live view last read them.

    Attributes:
        run_id: the run.
        info: its ``RunInfo``.
        metrics: columns ``step, epoch, name, value``, sorted by step.
        full_read: whether this snapshot read every row (False: only rows since the previous snapshot).
    """

    run_id: str
    info: Any
    metrics: pd.DataFrame
    full_read: bool = True

    @property
    def life(self) -> tuple[Any, ...]:
        """Identifies one life of the run: a resume (new pid, status change) may drop rows, so it starts over."""
        return _life(self.info)

    @property
    def last_step(self) -> int:
        return int(self.metrics["step"].iloc[-1]) if not self.metrics.empty else 0


def live_metrics(store: Any, run_id: str, previous: LiveSnapshot | None = None) -> LiveSnapshot:
    """The run's row and all its scalar metrics, reading only the rows at or after ``previous``'s last step.

    Rows of the last step are read again (end-of-epoch metrics arrive at the step of the last training log). A
    different run, an empty table or a new life of the run (status, pid or start time changed: a resumed run's
    store drops the rows after its checkpoint) reads everything. The result equals ``store.metrics(run_id)``.
    """
    info = store.get_run(run_id)
    if previous is None or previous.run_id != run_id or previous.life != _life(info) or previous.metrics.empty:
        return LiveSnapshot(run_id, info, store.metrics(run_id), full_read=True)
    since = previous.last_step
    new = store.metrics(run_id, since_step=since)
    old = previous.metrics[previous.metrics["step"] < since]
    metrics = new if old.empty else pd.concat([old, new], ignore_index=True) if not new.empty else old
    return LiveSnapshot(run_id, info, metrics.reset_index(drop=True), full_read=False)


def _life(info: Any) -> tuple[Any, ...]:
    return (info.status, info.pid, info.started)


def frame_version(df: pd.DataFrame | None) -> tuple[int, int, float]:
    """``(rows, last step, sum of values)``: changes whenever an append-only table of a run gains a row."""
    if df is None or df.empty:
        return (0, -1, 0.0)
    values = pd.to_numeric(df["value"], errors="coerce") if "value" in df else pd.Series(dtype=float)
    return (len(df), int(df["step"].max()), float(values.sum()))


# Name prefixes each training chart reads; its figure and its one-line reading read nothing else, so a chart
# is rebuilt only when one of its own series gained a row.
TRAINING_VIEWS: dict[str, tuple[str, ...]] = {
    "loss": ("loss",),
    "acc": ("acc/", "miou/"),
    "macs": ("macs_ratio/",),
    "temp": ("temperature", "lr"),
}


def training_figures(
    snap: LiveSnapshot, target: float | None = None, views: tuple[str, ...] = tuple(TRAINING_VIEWS)
) -> dict[str, tuple[Any, str]]:
    """``{view: (figure, reading)}`` of the training scalars (``viz.loss_figure`` + ``viz.explain_loss``, ...)."""
    from prunekit import viz

    builders = {
        "loss": lambda m: (viz.loss_figure(m), viz.explain_loss(m)),
        "acc": lambda m: (viz.accuracy_figure(m), viz.explain_accuracy(m)),
        "macs": lambda m: (viz.macs_figure(m, target), viz.explain_macs(m, target)),
        "temp": lambda m: (viz.temperature_figure(m), viz.explain_temperature(m)),
    }
    m = snap.metrics
    names = m["name"].astype(str) if not m.empty else pd.Series(dtype=str)
    out = {}
    for view in views:
        rows = m[names.str.startswith(TRAINING_VIEWS[view])] if not m.empty else m
        key = ("training", view, snap.run_id, snap.life, target if view == "macs" else None, frame_version(rows))
        out[view] = cached_figure(key, lambda b=builders[view]: b(m))
    return out


GATE_NAMES = ("gate_values", "gate_hist")
TREND_NAMES = ("confidence", "diversity", "entropy", "flip_rate")


def gate_figures(store: Any, snap: LiveSnapshot) -> dict[str, tuple[Any, str]]:
    """``{"violin": ..., "heat": ...}`` (figure, reading) of the gates at the latest logged step.

    The readings count channels at the run's own keep threshold (``own_threshold``; 0.5 for methods without
    one) and, once the run has ended, say that its rule decided every gate rather than "x % still undecided".
    """
    from prunekit import viz

    last = store.layer_metrics(snap.run_id, names=list(GATE_NAMES), step="last")
    own = own_threshold(snap.info.config or {})
    threshold = 0.5 if own is None else float(own)
    finished = snap.info.status not in ACTIVE
    key = ("gates", snap.run_id, snap.life, threshold, frame_version(last))
    return cached_figure(key, lambda: {
        "violin": (viz.gate_distribution_figure(last), viz.explain_gate_distribution(last, threshold, finished)),
        "heat": (viz.gate_heatmap_figure(last), viz.explain_gate_heatmap(last, threshold)),
    })


def trend_figures(store: Any, snap: LiveSnapshot) -> dict[str, tuple[Any, str]]:
    """``{name: (figure, reading)}`` of each per-layer trend the method logs (confidence, diversity, ...).

    The latest step's rows decide whether anything changed; the whole history is read only then.
    """
    from prunekit import viz

    last = store.layer_metrics(snap.run_id, names=list(TREND_NAMES), step="last")

    def build() -> dict[str, tuple[Any, str]]:
        trends = store.layer_metrics(snap.run_id, names=list(TREND_NAMES)) if not last.empty else last
        present = [n for n in TREND_NAMES if (trends["name"] == n).any()] if not trends.empty else []
        return {n: (viz.layer_trend_figure(trends, n), viz.explain_layer_trend(trends, n)) for n in present}

    return cached_figure(("trends", snap.run_id, snap.life, frame_version(last)), build)


def tradeoff(
    runs: pd.DataFrame, x: str, y: str, anchors: pd.DataFrame | None, x_label: str
) -> tuple[Any, str]:
    """(``viz.tradeoff_figure``, ``viz.explain_tradeoff``) cached on the content of the runs shown."""
    from prunekit import viz

    cols = [c for c in ("id", "name", "method", x, y) if c in runs]
    digest = int(pd.util.hash_pandas_object(runs[cols].astype(str), index=False).sum()) if not runs.empty else 0
    akey = None if anchors is None else int(pd.util.hash_pandas_object(anchors.astype(str), index=False).sum())
    key = ("tradeoff", x, y, x_label, akey, len(runs), digest)
    return cached_figure(key, lambda: (viz.tradeoff_figure(runs, x=x, y=y, anchors=anchors, x_label=x_label),
                                       viz.explain_tradeoff(runs, x=x, y=y)))


# -- the Explore page's runs: the trade-off chart's data ----------------------------------------------
LATENCY_FORMS = ("eager", "inference", "onnxruntime")


def runs_for_explore(store: Any) -> pd.DataFrame:
    """``list_runs`` plus the latest collapse measurements per run: the slim MACs ratio, its latency at batch 1 and
    64 (``latency_b1_ms``, ``latency_b64_ms``) and, where the collapse timed them, the slim network's latency in
    each deployed form (``latency/<eager|inference|onnxruntime>_b<batch>_ms``, ``prunekit.compare.latency_forms``)."""
    runs = store.list_runs()
    cols: dict[str, list[Any]] = {"macs_ratio/slim": []}
    keys = [f"latency/{f}_b{b}_ms" for f in LATENCY_FORMS for b in (1, 64)]
    for k in ("latency_b1_ms", "latency_b64_ms", *keys):
        cols[k] = []
    for rid in runs["id"]:
        res = store.collapse_results(rid)
        last = res[-1] if res else {}
        slim, orig = last.get("slim", {}) or {}, last.get("original", {}) or {}
        for b in (1, 64):
            lat_ms = slim.get(f"latency_b{b}_ms")
            if lat_ms is None and isinstance(slim.get("latency_ms"), dict):
                lat_ms = slim["latency_ms"].get(str(b), slim["latency_ms"].get(b))
            cols[f"latency_b{b}_ms"].append(lat_ms)
        forms = last.get("latency_forms") or {}
        for f in LATENCY_FORMS:
            after = (forms.get(f) or {}).get("after") or {}
            for b in (1, 64):
                cols[f"latency/{f}_b{b}_ms"].append(after.get(str(b), after.get(b)))
        cols["macs_ratio/slim"].append(slim["macs"] / orig["macs"] if slim.get("macs") and orig.get("macs") else None)
    return runs.assign(**cols)


def cached_runs_for_explore(workspace: str | None, ttl: float = 2.0) -> pd.DataFrame:
    """:func:`runs_for_explore` shared by all sessions for ``ttl`` seconds (``st.cache_data``)."""
    return st_cached(f"explore_runs_{ttl:g}", _runs_for_explore_at, ttl=ttl)(workspace)


def _runs_for_explore_at(workspace: str | None) -> pd.DataFrame:
    return runs_for_explore(cached_store(workspace))
