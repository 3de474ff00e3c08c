"""The Model page's data: a run's network as a graph of layers and coupled-channel groups, with the live keep
ratio of each group and, after collapse, the kept widths.

The graph depends only on the architecture, so it is built from the run's config (model and input shape, no
checkpoint, no data) and shared by all sessions and runs of that architecture. The keep ratios come from the
per-layer rows the run logs (one row per group, named by its root layer), so they follow a run while it trains.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from prunekit.app_support._form import own_threshold
from prunekit.app_support._live import frame_version
from prunekit.app_support._process import app_threads, cached_figure, st_cached

# make_loaders keywords that do not change the images' shape (dataset_info does not take them)
_NOT_SHAPE = ("limit", "download")


def _architecture(config: dict[str, Any]) -> str:
    """What decides the graph: model, dataset (input shape, classes) and their options, as one cache key."""
    keys = ("model", "dataset", "data_root", "data_options", "num_classes", "in_channels")
    return json.dumps({k: config.get(k) for k in keys}, sort_keys=True, default=str)


def network_of(config: dict[str, Any]) -> Any:
    """The run's :class:`~prunekit.viz.NetworkGraph`, built once per architecture for the app process.

    Raises:
        ConfigError / DataNotFoundError: unknown model or dataset, or a dataset whose shape cannot be read here.
    """
    return st_cached("network", _network_at)(_architecture(config))


def _network_at(architecture: str) -> Any:
    import torch

    from prunekit.augment import augment
    from prunekit.data import dataset_info
    from prunekit.gates import mask_gate_name
    from prunekit.models import create_model
    from prunekit.viz import network_graph

    a = json.loads(architecture)
    options = {k: v for k, v in (a.get("data_options") or {}).items() if k not in _NOT_SHAPE}
    info = dataset_info(a["dataset"], a.get("data_root"), **options)
    with app_threads():
        model = create_model(a["model"], num_classes=a.get("num_classes") or info.num_classes,
                             in_channels=info.in_channels)
        gated = augment(model, torch.zeros(1, info.in_channels, *info.image_size), gate=mask_gate_name(),
                        inplace=True)
        return network_graph(gated)


def live_keep(layers: pd.DataFrame, threshold: float | None) -> dict[str, float]:
    """Each group's keep ratio from a run's latest per-layer rows (``gate_values``, ``keep_ratio``).

    The smaller of two readings: the share of the group's gates above the method's threshold (what its rule
    would keep if the run ended now; a sigmoid gate is never exactly 0 while training) and the logged
    ``keep_ratio`` (the share whose eval value is not zero: masks already fixed, hard-concrete gates at 0).

    Args:
        layers: rows of ``RunStore.layer_metrics(run, names=["gate_values", "keep_ratio"], step="last")``.
        threshold: the method's keep threshold (None: 0.5).
    """
    thr = 0.5 if threshold is None else float(threshold)
    out: dict[str, float] = {}
    if layers is None or layers.empty:
        return out
    for layer, rows in layers.groupby("layer"):
        readings = []
        for _, r in rows.iterrows():
            if r["name"] == "keep_ratio" and pd.notna(r["value"]):
                readings.append(float(r["value"]))
            elif r["name"] == "gate_values" and isinstance(r["data"], list) and r["data"]:
                readings.append(sum(float(v) > thr for v in r["data"]) / len(r["data"]))
        if readings:
            out[str(layer)] = min(1.0, max(0.0, min(readings)))
    return out


def network_views(store: Any, run_id: str, config: dict[str, Any]) -> dict[str, Any]:
    """The Model page's live view of a run, its figure cached per version of the rows it reads.

    Returns:
        ``{"graph", "figure", "reading", "table", "keep_known"}``: the graph with the keep ratios, its figure and
        reading, the group table, and whether any keep ratio is known.
    """
    from prunekit import viz

    graph = network_of(config)
    layers = store.layer_metrics(run_id, names=["gate_values", "keep_ratio"], step="last")
    keep = live_keep(layers, own_threshold(config))

    def build() -> tuple[Any, Any, str, pd.DataFrame]:
        g = viz.with_keep(graph, keep)
        return g, viz.network_figure(g), viz.explain_network(g), viz.group_table(g)

    key = ("network", _architecture(config), run_id, own_threshold(config), frame_version(layers))
    g, fig, reading, table = cached_figure(key, build)
    return {"graph": g, "figure": fig, "reading": reading, "table": table,
            "keep_known": any(gi.keep is not None for gi in g.groups.values())}


def collapsed_view(store: Any, run_id: str, config: dict[str, Any]) -> tuple[Any, str, Any] | None:
    """``(figure, reading, step)`` of the run's network after its latest collapse, or None when not collapsed."""
    from prunekit import viz
    from prunekit.app_support._loaded import widths_frame

    results = store.collapse_results(run_id)
    if not results:
        return None
    last = results[-1]

    def build() -> tuple[Any, str]:
        w = widths_frame(last)
        widths = {r["layer"]: [r["before"], r["after"]] for _, r in w.iterrows()}
        c = viz.with_collapse(network_of(config), widths, last.get("removed_blocks") or [])
        return viz.network_figure(c), viz.explain_network(c)

    fig, reading = cached_figure(("network-collapsed", _architecture(config), run_id, last.get("id")), build)
    return fig, reading, last.get("step")
