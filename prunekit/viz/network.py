"""The network as a picture: layers in execution order, their connections, and the coupled-channel groups.

Two steps, so the data is testable without a browser and the figure without a model:

1. :func:`network_graph` reads a gated model (``prunekit.augment``'s :class:`~prunekit.augment.GatedModel`) into
   a plain :class:`NetworkGraph`: one node per conv/linear layer (a BatchNorm that only normalises one conv's
   output is drawn with it), one node per residual sum and concatenation, the edges of the traced autograd
   graph between them, and for each node the group whose channels it writes (``G<i>`` for
   ``gated.groups[i]``, ``F<j>`` for ``gated.fixed_groups[j]``, with the reason it is kept whole).
   :func:`with_keep` and :func:`with_collapse` add a run's keep ratios and a collapse's kept widths.
2. :func:`network_figure` draws it with plotly (top to bottom, one colour per group) and
   :func:`explain_network` reads it in one sentence for a teacher.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import torch
from torch import nn

from prunekit.augment import GatedModel, find_gated
from prunekit.errors import ConfigError
from prunekit.graph import BN_TYPES, CONV_TYPES, CONVT_TYPES

# Layers drawn as nodes; everything else (activations, pooling, reshapes) is walked through.
_DRAWN = CONV_TYPES + CONVT_TYPES + BN_TYPES + (nn.Linear,)
# autograd nodes that join several tensors: residual sums, concatenations, SE-style rescaling
_MERGES = {"AddBackward0": "add", "AddBackward1": "add", "CatBackward0": "cat", "MulBackward0": "mul"}
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
            "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1")
_FIXED = "#9e9e9e"  # groups kept whole
_NONE = "#444444"  # layers whose outputs no group owns (the classifier's classes)
_ROW_PX = 26  # vertical px per depth level
_LANE = 2.4  # x units between side-by-side branches: room for the labels to the right of each node


@dataclass(frozen=True)
class GroupInfo:
    """One coupled-channel group as the picture shows it.

    Attributes:
        id: ``G<i>`` (``gated.groups[i]``) or ``F<j>`` (``gated.fixed_groups[j]``).
        name: the group's root layer.
        size: channels in the group.
        prunable: False for a fixed group (kept whole).
        critical: stem, stride-2 or residual-sum group (always keeps a channel).
        residual: several layers write into the same channels (a residual sum ties them).
        reason: why a fixed group is kept whole (None for prunable groups).
        writers: layers whose outputs are the group's channels (convs, linears, BatchNorms).
        readers: layers that read the group's channels (their input slices go with the channels).
        keep: share of the group's channels kept (None: unknown).
    """

    id: str
    name: str
    size: int
    prunable: bool
    critical: bool
    residual: bool
    reason: str | None
    writers: tuple[str, ...]
    readers: tuple[str, ...]
    keep: float | None = None


@dataclass(frozen=True)
class Node:
    """A layer (or a merge of several tensors) of the network.

    Attributes:
        id: the layer's module name, or ``add#k`` / ``cat#k`` / ``mul#k`` for the k-th merge.
        kind: ``conv``, ``linear``, ``bn``, ``add``, ``cat`` or ``mul``.
        layers: the modules drawn as this node (a conv and the BatchNorm that normalises it).
        order: position in execution order (0 = first).
        depth: longest path from the input, in nodes (the picture's row).
        lane: column within its row (parallel branches side by side).
        width: output channels (features) before pruning.
        group: id of the group whose channels the node writes (None: no group, e.g. the classifier).
        reads: ids of the groups whose channels the node reads.
        after: output channels after collapse (None: not collapsed; 0: removed).
    """

    id: str
    kind: str
    layers: tuple[str, ...]
    order: int
    depth: int
    lane: int
    width: int | None
    group: str | None
    reads: tuple[str, ...] = ()
    after: int | None = None


@dataclass(frozen=True)
class NetworkGraph:
    """Nodes in execution order, edges ``(source id, target id)``, and the groups by id."""

    nodes: tuple[Node, ...]
    edges: tuple[tuple[str, str], ...]
    groups: dict[str, GroupInfo] = field(default_factory=dict)
    collapsed: bool = False
    removed_blocks: tuple[str, ...] = ()

    def node(self, node_id: str) -> Node:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(f"no node {node_id!r}")

    def nodes_of(self, group_id: str) -> list[Node]:
        """Nodes that write group ``group_id``'s channels."""
        return [n for n in self.nodes if n.group == group_id]


# -- from a gated model to the data --------------------------------------------------------------------
def _gated_of(model: nn.Module) -> GatedModel:
    gated = find_gated(model)
    if gated is None:
        raise ConfigError(f"model must be (or contain) a GatedModel from prunekit.augment, got {type(model).__name__}")
    return gated


def _width(module: nn.Module) -> int | None:
    for attr in ("out_channels", "out_features", "num_features"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    return None


def _kind(module: nn.Module) -> str:
    if isinstance(module, BN_TYPES):
        return "bn"
    return "linear" if isinstance(module, nn.Linear) else "conv"


def _trace(base: nn.Module, x: torch.Tensor) -> tuple[list[str], dict[str, set[str]], dict[str, str]]:
    """Run ``base`` once and read the autograd graph between its drawn layers.

    Returns:
        ``(order, inputs, merge_kind)``: drawn layers and merge nodes in execution order, each node's nearest
        upstream nodes, and the kind of each merge node.
    """
    names = {m: n for n, m in base.named_modules()}
    out_fn: dict[int, str] = {}  # id(grad_fn of a layer's output) -> layer
    calls: list[tuple[str, list[Any]]] = []
    keep_alive: list[Any] = []  # grad_fns must outlive the walk (their ids are keys)

    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        name = names[module]
        fns = [t.grad_fn for t in inputs if isinstance(t, torch.Tensor) and t.grad_fn is not None]
        calls.append((name, fns))
        if isinstance(output, torch.Tensor) and output.grad_fn is not None:
            out_fn.setdefault(id(output.grad_fn), name)
            keep_alive.append(output.grad_fn)
        keep_alive.extend(fns)

    handles = [m.register_forward_hook(hook) for m in base.modules() if isinstance(m, _DRAWN)]
    was_training = base.training
    try:
        base.eval()
        with torch.enable_grad():
            base(x.detach().clone().requires_grad_(True))
    finally:
        base.train(was_training)
        for h in handles:
            h.remove()

    merges: dict[int, str] = {}  # id(grad_fn) -> merge node id
    merge_kind: dict[str, str] = {}
    merge_inputs: dict[str, set[str]] = {}
    merge_first: dict[str, int] = {}
    memo: dict[int, set[str]] = {}

    def upstream(fn: Any, call: int) -> set[str]:
        """Nearest drawn layers or merges feeding ``fn`` (iterative: deep chains of reshapes are fine)."""
        if fn is None:
            return set()
        key = id(fn)
        if key in memo:
            return memo[key]
        if key in out_fn:
            return {out_fn[key]}
        found: set[str] = set()
        stack, seen = [fn], set()
        branches: list[set[str]] = []
        kind = _MERGES.get(type(fn).__name__)
        if kind is not None:
            branches = [upstream(nf, call) for nf, _ in fn.next_functions]
            if sum(bool(b) for b in branches) >= 2:
                if key not in merges:
                    mid = f"{kind}#{len(merges)}"
                    merges[key] = mid
                    merge_kind[mid] = kind
                    merge_inputs[mid] = set().union(*branches)
                    merge_first[mid] = call
                    keep_alive.append(fn)
                memo[key] = {merges[key]}
                return memo[key]
            memo[key] = set().union(*branches) if branches else set()
            return memo[key]
        while stack:
            f = stack.pop()
            if f is None or id(f) in seen:
                continue
            seen.add(id(f))
            if id(f) in out_fn and f is not fn:
                found.add(out_fn[id(f)])
                continue
            if f is not fn and type(f).__name__ in _MERGES:
                found |= upstream(f, call)
                continue
            stack.extend(nf for nf, _ in f.next_functions)
        memo[key] = found
        return found

    inputs: dict[str, set[str]] = {}
    first_call: dict[str, int] = {}
    for i, (name, fns) in enumerate(calls):
        first_call.setdefault(name, i)
        src = inputs.setdefault(name, set())
        for fn in fns:
            src |= upstream(fn, i)
        src.discard(name)
    inputs.update(merge_inputs)
    # a merge sits just before the first layer that reads it
    position = {n: float(i) for n, i in first_call.items()} | {m: c - 0.5 for m, c in merge_first.items()}
    order = sorted(position, key=position.__getitem__)
    return order, inputs, merge_kind


def network_graph(model: nn.Module, example_input: torch.Tensor | None = None) -> NetworkGraph:
    """The network's layers, their connections and their coupled-channel groups, as plain data.

    Args:
        model: a :class:`~prunekit.augment.GatedModel` (or a model containing one, as methods prepare it). Not
            modified: the wrapped network runs once without its gates to trace the connections.
        example_input: ``[N, C, H, W]`` input for the trace (default: the gated model's ``example_input``).

    Returns:
        a :class:`NetworkGraph` whose ``groups`` holds every group of ``gated.groups`` (ids ``G0..``) and of
        ``gated.fixed_groups`` (``F0..``), and whose nodes come in execution order.

    Raises:
        ValueError: ``model`` holds no GatedModel.
    """
    gated = _gated_of(model)
    base = gated.model
    x = gated.example_input[:1] if example_input is None else example_input
    order, inputs, merge_kind = _trace(base, x)
    modules = dict(base.named_modules())

    # groups, and which group each layer writes / reads
    groups: dict[str, GroupInfo] = {}
    writes: dict[str, str] = {}
    reads: dict[str, list[str]] = {}
    listed = [(f"G{h.index}", h.group) for h in gated.groups] + [(f"F{j}", g) for j, g in enumerate(gated.fixed_groups)]
    for gid, g in listed:
        writers = tuple(dict.fromkeys(m.name for m in g.members if m.dim == "out"))
        readers = tuple(dict.fromkeys(m.name for m in g.members if m.dim == "in"))
        groups[gid] = GroupInfo(id=gid, name=g.name, size=int(g.size), prunable=bool(g.prunable),
                                critical=bool(g.critical), residual=len(g.producers()) > 1,
                                reason=g.reason, writers=writers, readers=readers)
        for w in writers:
            writes.setdefault(w, gid)
        for r in readers:
            reads.setdefault(r, []).append(gid)

    # a BatchNorm fed by one conv that feeds nothing else is drawn with that conv
    consumers: dict[str, list[str]] = {}
    for n in order:
        for s in inputs.get(n, ()):
            consumers.setdefault(s, []).append(n)
    merged_into: dict[str, str] = {}
    for n in order:
        if n in modules and isinstance(modules[n], BN_TYPES):
            src = inputs.get(n, set())
            if len(src) == 1:
                (s,) = src
                if s in modules and not isinstance(modules[s], BN_TYPES) and consumers.get(s) == [n]:
                    merged_into[n] = s

    def rep(n: str) -> str:
        return merged_into.get(n, n)

    kept = [n for n in order if n not in merged_into]
    edges: list[tuple[str, str]] = []
    for n in kept:
        for s in sorted(inputs.get(n, ()), key=order.index):
            if rep(s) != n:
                edges.append((rep(s), n))
    for bn, conv in merged_into.items():  # the BN's own consumers read from the pair
        for c in consumers.get(bn, []):
            if (conv, rep(c)) not in edges and rep(c) != conv:
                edges.append((conv, rep(c)))
    edges = list(dict.fromkeys(edges))

    # depth = longest path from the input; lanes side by side within a depth
    depth: dict[str, int] = {}
    preds: dict[str, list[str]] = {}
    for s, t in edges:
        preds.setdefault(t, []).append(s)
    for n in kept:
        depth[n] = 1 + max((depth[p] for p in preds.get(n, ()) if p in depth), default=-1)
    lanes: dict[int, int] = {}
    nodes: list[Node] = []
    for i, n in enumerate(kept):
        lane = lanes.get(depth[n], 0)
        lanes[depth[n]] = lane + 1
        layers = (n, *[b for b, c in merged_into.items() if c == n])
        if n in merge_kind:
            srcs = [s for s, t in edges if t == n]
            group = next((nd.group for nd in nodes if nd.id in srcs and nd.group), None)
            nodes.append(Node(id=n, kind=merge_kind[n], layers=(), order=i, depth=depth[n], lane=lane,
                              width=None, group=group))
            continue
        mod = modules[n]
        group = next((writes[m] for m in reversed(layers) if m in writes), None)
        nodes.append(Node(id=n, kind=_kind(mod), layers=layers, order=i, depth=depth[n], lane=lane,
                          width=_width(mod), group=group, reads=tuple(reads.get(n, ()))))
    return NetworkGraph(nodes=tuple(nodes), edges=tuple(edges), groups=groups)


def with_keep(graph: NetworkGraph, keep: Mapping[str, float | None]) -> NetworkGraph:
    """``graph`` with each group's keep ratio (``keep`` maps group id or root-layer name to a share in [0, 1])."""
    for k, v in keep.items():
        if v is not None and not (isinstance(v, (int, float)) and 0 <= v <= 1):
            raise ValueError(f"keep ratios must be in [0, 1], got {v!r} for {k!r}")
    by_name = {g.name: gid for gid, g in graph.groups.items()}
    groups = dict(graph.groups)
    for k, v in keep.items():
        gid = k if k in groups else by_name.get(k)
        if gid is not None:
            groups[gid] = dataclasses.replace(groups[gid], keep=None if v is None else float(v))
    return dataclasses.replace(graph, groups=groups)


def with_collapse(graph: NetworkGraph, widths: Mapping[str, Any], removed_blocks: Any = ()) -> NetworkGraph:
    """``graph`` after collapse: every node's kept width, zero for removed layers.

    Args:
        graph: from :func:`network_graph`.
        widths: ``{layer: [before, after]}`` (``prunekit.compare``'s ``widths``) or ``{layer: after}``; layers
            not listed kept their width.
        removed_blocks: layers collapse removed (``removed_blocks`` of the compare result): width 0.
    """
    removed = set(removed_blocks or ())

    def after_of(layer: str, before: int | None) -> int | None:
        if layer in removed:
            return 0
        w = widths.get(layer)
        if w is None:
            return before
        return int(w[1] if isinstance(w, (list, tuple)) else w)

    nodes = []
    for n in graph.nodes:
        if not n.layers:
            nodes.append(n)
            continue
        afters = [after_of(layer, n.width) for layer in n.layers]
        known = [a for a in afters if a is not None]
        nodes.append(dataclasses.replace(n, after=min(known) if known else None))
    return dataclasses.replace(graph, nodes=tuple(nodes), collapsed=True,
                               removed_blocks=tuple(sorted(removed)))


# -- the figure -------------------------------------------------------------------------------------------
def group_colours(graph: NetworkGraph) -> dict[str | None, str]:
    """A colour per group id: prunable groups from a palette in order, fixed groups grey."""
    colours: dict[str | None, str] = {None: _NONE}
    i = 0
    for gid, g in graph.groups.items():
        if g.prunable:
            colours[gid] = _PALETTE[i % len(_PALETTE)]
            i += 1
        else:
            colours[gid] = _FIXED
    return colours


def _node_text(n: Node, graph: NetworkGraph) -> tuple[str, str]:
    """(label beside the node, hover text)."""
    g = graph.groups.get(n.group) if n.group else None
    if n.kind in ("add", "cat", "mul"):
        word = {"add": "residual sum (+)", "cat": "concatenation", "mul": "channel rescaling (×)"}[n.kind]
        label = {"add": "+", "cat": "cat", "mul": "×"}[n.kind]
        return label, f"{word}<br>its inputs' channels are coupled: group {n.group or '-'}"
    width = "" if n.width is None else f"{n.width}"
    if graph.collapsed and n.after is not None and n.width is not None:
        width = f"{n.width}→{n.after}" if n.after != n.width else f"{n.width}"
        if n.after == 0:
            width = f"{n.width}→removed"
    tag = ""
    if g is not None:
        tag = f" · {g.id}"
        if g.keep is not None and not graph.collapsed:
            tag += f" keep {g.keep:.0%}"
        if not g.prunable:
            tag += " (fixed)"
    label = f"{n.id} [{width}]{tag}"
    lines = [f"<b>{n.id}</b> ({' + '.join(n.layers)})", f"output channels: {width or '?'}"]
    if g is not None:
        lines.append(f"writes group {g.id} (root {g.name}, {g.size} ch"
                     + (", residual: several layers share these channels" if g.residual else "") + ")")
        if g.keep is not None:
            lines.append(f"group keeps {g.keep:.0%} of its channels")
        if g.reason:
            lines.append(f"kept whole: {g.reason}")
    else:
        lines.append("writes no prunable channels (network output)")
    if n.reads:
        lines.append("reads groups " + ", ".join(n.reads))
    return label, "<br>".join(lines)


def _edge_points(a: Node, b: Node) -> tuple[list[float], list[float]]:
    x0, y0, x1, y1 = _LANE * a.lane, -a.depth, _LANE * b.lane, -b.depth
    if b.depth - a.depth > 1 and a.lane == b.lane:
        # a skip over the nodes between: bow out to the left so it does not run through them
        off = 0.45
        return [x0, x0 - off, x1 - off, x1], [y0, y0 - 0.5, y1 + 0.5, y1]
    return [x0, x1], [y0, y1]


def network_figure(graph: NetworkGraph, title: str | None = None) -> go.Figure:
    """The network top to bottom: one marker per layer (coloured by the group whose channels it writes), one
    per residual sum or concatenation, lines along the traced connections in the colour of the channels they
    carry. After :func:`with_collapse`, removed layers are red crosses and labels show ``before→after``."""
    fig = go.Figure()
    if not graph.nodes:
        fig.add_annotation(text="no layers found", x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False)
        return fig
    colours = group_colours(graph)
    by_id = {n.id: n for n in graph.nodes}
    for gid in [*graph.groups, None]:
        xs: list[float | None] = []
        ys: list[float | None] = []
        for s, t in graph.edges:
            if by_id[s].group == gid:
                ex, ey = _edge_points(by_id[s], by_id[t])
                xs += [*ex, None]
                ys += [*ey, None]
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                     line={"color": colours[gid], "width": 1.5}, opacity=0.6))
    for gid in [*graph.groups, None]:
        members = [n for n in graph.nodes if n.group == gid]
        if not members:
            continue
        live = [n for n in members if not (graph.collapsed and n.after == 0)]
        gone = [n for n in members if graph.collapsed and n.after == 0]
        g = graph.groups.get(gid) if gid else None
        name = "no group (output)" if g is None else f"{g.id}: {g.name}" + (" (fixed)" if not g.prunable else "")
        for part, removed in ((live, False), (gone, True)):
            if not part:
                continue
            texts = [_node_text(n, graph) for n in part]
            fig.add_trace(go.Scatter(
                x=[_LANE * n.lane for n in part], y=[-n.depth for n in part], mode="markers+text",
                text=[t[0] for t in texts], hovertext=[t[1] for t in texts], hoverinfo="text",
                textposition="middle right", textfont={"size": 10},
                marker={"symbol": ["x" if removed else _symbol(n) for n in part], "size": [12.0 if removed else _size(n) for n in part],
                        "color": "#d62728" if removed else colours[gid],
                        "line": {"width": 1, "color": "white"}},
                name=name + (" removed" if removed else ""), legendgroup=str(gid), showlegend=False,
            ))
    rows = max(n.depth for n in graph.nodes) + 1
    lanes = max(n.lane for n in graph.nodes) + 1
    heading = title or ("Network after collapse: kept widths, removed layers in red" if graph.collapsed
                        else "Network: one colour per group of coupled channels")
    fig.update_layout(
        title={"text": heading, "font": {"size": 15}}, template="plotly_white", showlegend=False,
        height=max(320, 60 + _ROW_PX * rows), margin={"l": 20, "r": 20, "t": 45, "b": 20},
        xaxis={"visible": False, "range": [-0.8, _LANE * (lanes - 1) + 2.2]},
        yaxis={"visible": False, "range": [-rows + 0.4, 0.6]},
    )
    return fig


def _symbol(n: Node) -> str:
    return {"add": "circle-cross", "cat": "diamond", "mul": "circle-x", "bn": "square", "linear": "triangle-down"}.get(
        n.kind, "circle")


def _size(n: Node) -> float:
    if n.kind in ("add", "cat", "mul"):
        return 13.0
    w = n.after if n.after is not None else n.width
    return 7.0 + 2.0 * math.log2(max(1, w or 1)) / 1.5


def group_table(graph: NetworkGraph) -> pd.DataFrame:
    """One row per group: ``group, root, channels, kind, keep, writers, readers, kept whole because``.

    ``kind`` is "residual sum" (several layers write the channels), "inside one layer" or "kept whole";
    ``keep`` the keep ratio (None: unknown); writers and readers are comma-separated layer names.
    """
    rows = []
    for gid, g in graph.groups.items():
        kind = "kept whole" if not g.prunable else ("residual sum" if g.residual else "inside one layer")
        rows.append({"group": gid, "root": g.name, "channels": g.size, "kind": kind, "keep": g.keep,
                     "writers": ", ".join(g.writers), "readers": ", ".join(g.readers),
                     "kept whole because": g.reason or ""})
    return pd.DataFrame(rows, columns=["group", "root", "channels", "kind", "keep", "writers", "readers",
                                       "kept whole because"])


def explain_network(graph: NetworkGraph) -> str:
    """One paragraph for a teacher: what the colours mean, the largest residual group, fixed groups, kept widths."""
    if not graph.nodes:
        return "No layers were found in this model."
    prunable = [g for g in graph.groups.values() if g.prunable]
    fixed = [g for g in graph.groups.values() if not g.prunable]
    parts = [
        f"{len(graph.nodes)} layers and merges, {len(graph.groups)} groups of coupled channels "
        f"({len(prunable)} prunable, {len(fixed)} kept whole). Channels in one colour are removed together, "
        "because they are the same numbers seen from several layers: a conv's output channel, its BatchNorm "
        "entry and the matching input slice of every layer that reads it; where outputs meet in a residual "
        "sum (+) they must line up channel by channel, so every layer writing into that sum shares one group."
    ]
    residual = sorted((g for g in prunable if g.residual), key=lambda g: -len(g.writers))
    if residual:
        g = residual[0]
        convs = [w for w in g.writers if w in {n.id for n in graph.nodes}]
        parts.append(f"The largest residual group, {g.id} (root {g.name}), ties {len(convs)} layers together.")
    if fixed:
        reason = fixed[0].reason or "it cannot be sliced exactly"
        parts.append(f"Grey groups are kept whole: {reason}.")
    known = [g for g in prunable if g.keep is not None]
    if known and not graph.collapsed:
        low = min(known, key=lambda g: g.keep)
        parts.append(f"Labels show each group's keep ratio; {low.id} ({low.name}) keeps the least, {low.keep:.0%}.")
    if graph.collapsed:
        gone = [n.id for n in graph.nodes if n.after == 0]
        thinner = [n for n in graph.nodes if n.after is not None and n.width and 0 < n.after < n.width]
        parts.append(f"After collapse {len(thinner)} layers are thinner and {len(gone)} were removed"
                     + (f" ({', '.join(gone[:4])}{'…' if len(gone) > 4 else ''})" if gone else "") + ".")
    return " ".join(parts)
