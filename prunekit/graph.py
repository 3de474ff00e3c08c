"""Coupled-channel groups of any traceable CNN.

A *group* is the set of layer slices that must be removed together: every conv/linear whose outputs
meet in one residual sum, the BatchNorms on those channels, depthwise convs that carry them, the
input slices of every consumer (also through concatenation, flatten → linear, SE rescaling).

The dependency analysis is Torch-Pruning's ``DependencyGraph`` (DepGraph, Fang et al. 2023): it
traces autograd once and propagates index mappings through cat/split/reshape/elementwise ops, which
is exactly the problem, already solved and maintained for the torchvision zoo. prunekit uses it only
to *discover* groups; gating, cost, collapse and save/load are prunekit's own (``augment.py``,
``cost.py``, ``collapse.py``, ``io.py``), so no per-architecture rules exist anywhere.

Two additions of prunekit's own: attention heads (``prunekit.heads``: one group per head-prunable attention
module, by module type, whose Q/K/V and projection widths Torch-Pruning's channel groups must not cut), and
reshapes that split the channel dim (a channel shuffle), where the propagation stops and the groups that
reach them stay whole.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from prunekit import heads
from prunekit.errors import UnsupportedModelError
from prunekit.heads import HeadLayout

log = logging.getLogger(__name__)

# The layer types whose channels groups name (read by collapse, cost, io and the methods).
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONVT_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_WEIGHTED = CONV_TYPES + CONVT_TYPES + (nn.Linear,)
# Layers whose output on a zeroed channel is not zero and which mix channels: removing a channel
# would change the other channels' values, so groups touching them stay fixed.
_CHANNEL_MIXING_NORMS = (nn.LayerNorm, nn.GroupNorm)


@dataclass(eq=False)
class Member:
    """One layer slice of a group.

    Attributes:
        name: module path inside the model (``layer1.0.conv1``).
        module: the module itself.
        dim: ``"out"`` (output channels / features; BatchNorm's only dim), ``"in"``, ``"heads"`` (the heads of
            an attention module, see ``prunekit.heads``) or ``"param"`` (a bare ``nn.Parameter`` such as a
            layer scale, named by its full path, sliced along ``axis``; ``module`` is its owner).
        idxs: LongTensor [k], indices into that dimension of the module.
        root_idxs: LongTensor [k], the group positions (0..size-1) those indices carry.
    """

    name: str
    module: nn.Module = field(repr=False)
    dim: str
    idxs: torch.Tensor = field(repr=False)
    root_idxs: torch.Tensor = field(repr=False)
    axis: int = 0  # dim "param": the axis of the bare parameter ``name`` (owned by ``module``) that is sliced

    @property
    def covers_all(self) -> bool:
        """True when the member spans the whole dim in group order (the common, fast case)."""
        n = dim_size(self.module, self.dim)
        return len(self.idxs) == n and bool(
            torch.equal(self.idxs, torch.arange(n)) and torch.equal(self.root_idxs, torch.arange(n))
        )


@dataclass(eq=False)
class ChannelGroup:
    """A set of coupled channels that is kept or removed as a whole, position by position.

    Attributes:
        name: the root layer's name.
        size: number of prunable structures (channels).
        members: every coupled layer slice.
        gate_points: the out-members whose outputs the gate multiplies (BatchNorms, and convs/linears
            not directly followed by a BatchNorm of the same group). Gating every BatchNorm output,
            not only the first, keeps a removed channel exactly zero even where a BatchNorm follows a
            concatenation or a depthwise conv (a BN of a zero input is its constant shift, not zero).
        critical: stem, stride-2 and residual-sum groups: closing all of them would cut the network.
        prunable: False when a member cannot be sliced exactly (reason says which layer and why).
    """

    name: str
    size: int
    members: list[Member]
    gate_points: list[Member]
    critical: bool = False
    prunable: bool = True
    reason: str | None = None
    # producer layer name -> the gate point that carries its output (itself, or the BN right after it)
    point_of: dict[str, Member] = field(default_factory=dict, repr=False)

    def producers(self) -> list[Member]:
        """Out-members that compute the group's channels (convs and linears; not BatchNorms, and not
        depthwise convs, which only carry each channel through)."""
        return [
            m for m in self.members if m.dim == "out" and isinstance(m.module, _WEIGHTED) and not is_depthwise(m.module)
        ]

    def consumers(self) -> list[Member]:
        """In-members: layers that read the group's channels."""
        return [m for m in self.members if m.dim == "in" and isinstance(m.module, _WEIGHTED)]

    def member_names(self) -> list[str]:
        return sorted({m.name for m in self.members})


def dim_size(module: nn.Module, dim: str) -> int:
    """Channels of ``module`` along ``dim`` (``"out"`` or ``"in"``)."""
    if isinstance(module, BN_TYPES):
        return module.num_features
    if isinstance(module, nn.Linear):
        return module.out_features if dim == "out" else module.in_features
    if isinstance(module, CONV_TYPES + CONVT_TYPES):
        return module.out_channels if dim == "out" else module.in_channels
    if isinstance(module, nn.PReLU):
        return module.num_parameters
    if dim == "heads":
        return module.num_heads
    if dim == "param":
        raise UnsupportedModelError("a bare parameter's size needs its member: use member_size")
    raise UnsupportedModelError(f"no channel dimension known for {type(module).__name__}")


def member_size(m: Member) -> int:
    """Length of the sliced dim of a member (a bare parameter's axis, or the module's ``dim``)."""
    if m.dim == "param":
        return bare_parameter(m).shape[m.axis]
    return dim_size(m.module, m.dim)


def bare_parameter(m: Member) -> nn.Parameter:
    """The bare parameter a ``"param"`` member slices."""
    return getattr(m.module, m.name.rpartition(".")[2])


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, CONV_TYPES) and module.groups > 1 and module.groups == module.in_channels == module.out_channels


def _member_problem(m: Member) -> str | None:
    if m.dim == "param":
        return None  # sliced along its axis (collapse) and counted (cost)
    mod = m.module
    if isinstance(mod, CONV_TYPES):
        if mod.groups > 1 and not is_depthwise(mod):
            return (
                f"layer {m.name!r} is a grouped conv (groups={mod.groups}); pruning its channels exactly needs "
                "balanced per-group masks, which prunekit does not do yet"
            )
        return None
    if isinstance(mod, CONVT_TYPES):
        return None if mod.groups == 1 else f"layer {m.name!r} is a grouped transposed conv"
    if isinstance(mod, BN_TYPES + (nn.Linear,)):
        return None
    if isinstance(mod, nn.PReLU):
        return None  # one slope per channel: sliced like a BatchNorm
    if isinstance(mod, _CHANNEL_MIXING_NORMS):
        return f"layer {m.name!r} ({type(mod).__name__}) normalises across channels; removing one changes the others"
    return f"layer {m.name!r} ({type(mod).__name__}) has no exact channel-slicing rule in prunekit"


def _is_internal(module: object) -> bool:
    # Torch-Pruning's pseudo-modules for functional ops (add, cat, reshape, ...) and bare parameters.
    return not isinstance(module, nn.Module) or type(module).__module__.startswith("torch_pruning")


# Torch-Pruning follows reshapes by its flatten rule only; a reshape that splits or merges the channel dim
# (the channel shuffle view(B, g, C/g, H, W) → transpose → view(B, C, H, W)) gets a wrong index map or none
# (issue 19: a division by zero in its shape inference). prunekit records every op's input and output
# shape while Torch-Pruning traces, stops the propagation at such reshapes, and keeps every group that
# reaches one whole: a documented fallback that still gates every group not crossing the shuffle.
_TP_PATCH_LOCK = threading.Lock()
# Torch-Pruning's shape inference recurses once per op; transformers need more than a thread's default stack.
_GRAPH_STACK_BYTES = 256 * 1024 * 1024


class _ShapeRecorder(TorchFunctionMode):
    """Records (input shape, output shape) per autograd node created during a forward."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: dict[object, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.grad_fn is not None and args and isinstance(args[0], torch.Tensor):
            self.shapes.setdefault(out.grad_fn, (tuple(args[0].shape), tuple(out.shape)))
        return out


def _splits_channels(shapes: tuple[tuple[int, ...], tuple[int, ...]] | None) -> bool:
    """A reshape that changes dim 1 other than a flatten to [B, features] (which Torch-Pruning follows)."""
    if shapes is None:
        return False
    i, o = shapes
    return len(i) >= 2 and len(o) > 2 and i[1] != o[1]


def _splits_features(node, shapes: tuple[tuple[int, ...], tuple[int, ...]] | None) -> bool:
    """A reshape right after a Linear that splits its features into several dims ([B, T, C] → [B, T, H, d]):
    the heads of an attention module without a known layout (its Q/K/V width is not cut by channels)."""
    if shapes is None or not any(isinstance(i.module, nn.Linear) for i in node.inputs):
        return False
    i, o = shapes
    k = len(i) - 1
    if len(o) <= len(i) or tuple(o[:k]) != tuple(i[:k]) or not i:
        return False
    return sum(d > 1 for d in o[k:]) >= 2


def _stop(idxs: list) -> list:
    return []


def _build_graph(model: nn.Module, example_input: torch.Tensor, timeout_s: float):
    """Torch-Pruning's dependency graph of ``model``, its groups (classifier outputs protected), the
    protected layers, and the ids of the channel-splitting reshape ops where propagation was stopped."""
    import torch_pruning as tp
    from torch_pruning.dependency import index_mapping

    result: dict[str, object] = {}
    recorder = _ShapeRecorder()
    unfollowed: dict[int, object] = {}
    original = index_mapping.update_reshape_index_mapping

    def guarded(graph, node) -> None:
        if id(node.module) not in unfollowed:
            try:
                shapes = recorder.shapes.get(node.grad_fn)
                if not (_splits_channels(shapes) or _splits_features(node, shapes)):
                    original(graph, node)
                    return
            except (ZeroDivisionError, ValueError, IndexError) as e:
                log.debug("reshape %s not followed: %s", node.name, e)
            unfollowed[id(node.module)] = node.module
        for dep in node.dependencies:  # leaving the reshape: propagation stops here
            dep.index_mapping = [_stop]

    def work() -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                builder = tp.DependencyGraph()
                with recorder:
                    dg = run_naming_layer(
                        model, lambda: builder.build_dependency(model, example_inputs=example_input), UnsupportedModelError, "tracing"
                    )
                protected = _protected_layers(dg)
                result["out"] = (dg, list(dg.get_all_groups(ignored_layers=protected)), protected)
        except BaseException as e:  # noqa: BLE001 - re-raised below with context
            result["error"] = e

    with _TP_PATCH_LOCK:
        index_mapping.update_reshape_index_mapping = guarded
        old_stack = threading.stack_size(_GRAPH_STACK_BYTES)
        try:
            t = threading.Thread(target=work, daemon=True, name="prunekit-graph")
            t.start()
        finally:
            threading.stack_size(old_stack)
        t.join(timeout_s)
        index_mapping.update_reshape_index_mapping = original
    if t.is_alive():
        raise UnsupportedModelError(
            f"dependency analysis of {type(model).__name__} did not finish within {timeout_s:.0f} s; "
            "the graph is probably not traceable (data-dependent control flow?)"
        )
    if "error" in result:
        e = result["error"]
        raise UnsupportedModelError(f"cannot trace {type(model).__name__} for dependency analysis: {e}") from e
    return (*result["out"], set(unfollowed))


def run_naming_layer(model: nn.Module, fn: Callable[[], Any], error: type[Exception], what: str) -> Any:
    """Call ``fn()`` (a forward of ``model``); a failure inside it is re-raised as ``error`` naming the layer.

    The innermost module that had started and not finished its forward is the one named, with its type.
    """
    stack: list[str] = []
    failed: list[str] = []
    handles = []

    def enter(name: str):
        def hook(module: nn.Module, inputs: Any) -> None:
            stack.append(name)

        return hook

    def leave(module: nn.Module, inputs: Any, output: Any) -> None:
        if stack:
            stack.pop()

    for name, mod in model.named_modules():
        handles.append(mod.register_forward_pre_hook(enter(name or "<root>")))
        handles.append(mod.register_forward_hook(leave))
    try:
        return fn()
    except (RuntimeError, ValueError, IndexError, TypeError, AssertionError) as e:
        failed = list(stack)
        layer = failed[-1] if failed else "<root>"
        kind = type(model.get_submodule(layer)).__name__ if layer != "<root>" else type(model).__name__
        raise error(f"{what} fails in layer {layer!r} ({kind}): {e}") from e
    finally:
        for h in handles:
            h.remove()


def _protected_layers(dg) -> list[nn.Module]:
    """Convs/linears whose outputs reach a model output without passing another weighted layer.

    Their output channels are the classes (or a segmentation head's classes): never pruned.
    """
    protected: list[nn.Module] = []
    seen: set[int] = set()
    stack = [n for n in dg.module2node.values() if len(n.outputs) == 0]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.module, _WEIGHTED):
            protected.append(node.module)
            continue
        stack.extend(node.inputs)
    return protected


def _first_weighted(dg, order: dict[nn.Module, int]) -> nn.Module | None:
    weighted = [m for m in dg.module2node if isinstance(m, _WEIGHTED) and m in order]
    return min(weighted, key=order.__getitem__) if weighted else None


def analyze(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    filter_fn=None,
    timeout_s: float = 120.0,
) -> list[ChannelGroup]:
    """Find the coupled-channel groups of ``model``.

    Args:
        model: any module traceable by autograd with ``example_input``.
        example_input: a batch shaped like real inputs, e.g. [1, 3, 32, 32].
        filter_fn: optional ``filter_fn(module, name) -> bool``; a group is gated only if its root passes.
        timeout_s: bound on the analysis time; beyond it an UnsupportedModelError is raised.
    Returns:
        groups in execution order of their root layer, prunable and not (``prunable=False`` with a reason).
    """
    was_training = model.training
    model.eval()  # tracing must not update BatchNorm running statistics
    try:
        dg, tp_groups, protected, unfollowed = _build_graph(model, example_input, timeout_s)
    finally:
        model.train(was_training)
    names = {m: n for n, m in model.named_modules()}
    param_names = {id(p): n for n, p in model.named_parameters()}
    modules = dict(model.named_modules())
    axes = {id(up.parameters): up.pruning_dim for up in dg.unwrapped_parameters}
    order = {m: i for i, m in enumerate(model.modules())}
    stem = _first_weighted(dg, order)
    layouts = _head_layouts(model)
    head_owned = {(f"{n}.{lay.qkv}", "out"): n for n, (_, lay) in layouts.items()}
    head_owned.update({(f"{n}.{lay.proj}", "in"): n for n, (_, lay) in layouts.items()})

    groups: list[ChannelGroup] = []
    for tg in tp_groups:
        members: list[Member] = []
        bare: list[str] = []
        shuffled = False
        for item in tg.items:
            mod = item.dep.target.module
            shuffled = shuffled or id(mod) in unfollowed or id(item.dep.source.module) in unfollowed
            if isinstance(mod, nn.Parameter):
                pname = param_names.get(id(mod), "?")
                owner = pname.rpartition(".")[0]
                if id(mod) not in axes or (owner and owner not in modules):
                    bare.append(pname)
                    continue
                # a layer scale or other per-channel parameter: sliced with its channels
                members.append(
                    Member(
                        name=pname,
                        module=modules[owner] if owner else model,
                        dim="param",
                        idxs=torch.as_tensor(list(item.idxs), dtype=torch.long),
                        root_idxs=torch.as_tensor(list(item.root_idxs), dtype=torch.long),
                        axis=axes[id(mod)],
                    )
                )
                continue
            if _is_internal(mod):
                continue
            dim = "out" if (isinstance(mod, BN_TYPES + (nn.PReLU,)) or dg.is_out_channel_pruning_fn(item.dep.handler)) else "in"
            members.append(
                Member(
                    name=names.get(mod, "?"),
                    module=mod,
                    dim=dim,
                    idxs=torch.as_tensor(list(item.idxs), dtype=torch.long),
                    root_idxs=torch.as_tensor(list(item.root_idxs), dtype=torch.long),
                )
            )
        if not members:
            continue
        root = tg.items[0].dep.target.module
        size = len(tg.items[0].idxs)
        group = ChannelGroup(name=names.get(root, "?"), size=size, members=_merge(members), gate_points=[])
        problems = [p for p in (_member_problem(m) for m in group.members) if p]
        problems += [
            f"layer {m.name!r} is an attention projection of {head_owned[(m.name, m.dim)]!r}: its inner width is "
            "pruned by whole heads"
            for m in group.members
            if (m.name, m.dim) in head_owned
        ]
        if shuffled:
            problems.append(
                f"the channels of {group.name!r} pass a reshape that splits them (a channel shuffle, or the heads "
                "of an attention module without a known layout) which the dependency analysis does not follow; "
                "kept whole"
            )
        if bare:
            problems.append(
                f"parameter {bare[0]!r} (a bare nn.Parameter) spans these channels along an axis the dependency "
                "analysis does not know"
            )
        if problems:
            group.prunable, group.reason = False, problems[0]
        if filter_fn is not None and not filter_fn(root, group.name):
            group.prunable, group.reason = False, f"excluded by filter_fn at {group.name!r}"
        group.gate_points = _gate_points(dg, group)
        producers = group.producers()
        group.critical = (
            len(producers) > 1
            or any(m.module is stem for m in producers)
            or any(isinstance(m.module, CONV_TYPES + CONVT_TYPES) and max(_tuple(m.module.stride)) > 1 for m in producers)
        )
        groups.append(group)
    for name, (mod, lay) in layouts.items():
        group = _head_group(model, name, mod, lay)
        if filter_fn is not None and not filter_fn(mod, name):
            group.prunable, group.reason = False, f"excluded by filter_fn at {name!r}"
        groups.append(group)
    groups.sort(key=lambda g: order.get(g.members[0].module, 0))
    log.debug("analyzed %s: %d groups (%d prunable)", type(model).__name__, len(groups), sum(g.prunable for g in groups))
    return groups


def _head_layouts(model: nn.Module) -> dict[str, tuple[nn.Module, HeadLayout]]:
    out: dict[str, tuple[nn.Module, HeadLayout]] = {}
    for name, mod in model.named_modules():
        lay = heads.layout(mod)
        if lay is not None and name:
            out[name] = (mod, lay)
    return out


def _head_group(model: nn.Module, name: str, mod: nn.Module, lay: HeadLayout) -> ChannelGroup:
    """One group per attention module: its heads, each the Q/K/V rows and projection columns of one head.

    The gate multiplies the projection's input per head (a forward pre-hook; folded into its columns).
    """
    qkv, proj = mod.get_submodule(lay.qkv), mod.get_submodule(lay.proj)
    rows, cols, hs = heads.head_members(lay)
    gate = Member(f"{name}.{lay.proj}", proj, "in", torch.arange(len(cols)), cols)
    members = [
        Member(f"{name}.{lay.qkv}", qkv, "out", torch.arange(len(rows)), rows),
        gate,
        Member(name, mod, "heads", torch.arange(len(hs)), hs),
    ]
    # critical: the prune rule keeps one head, so the layout never has zero heads
    return ChannelGroup(name=name, size=lay.num_heads, members=members, gate_points=[gate], critical=True)


def _tuple(x) -> tuple[int, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _merge(members: list[Member]) -> list[Member]:
    """One member per (module, dim); Torch-Pruning may list a module twice through different paths."""
    merged: dict[tuple[int, str, str], Member] = {}
    for m in members:
        key = (id(m.module), m.dim, m.name if m.dim == "param" else "")
        if key not in merged:
            merged[key] = m
            continue
        old = merged[key]
        idxs = torch.cat([old.idxs, m.idxs])
        roots = torch.cat([old.root_idxs, m.root_idxs])
        uniq, first = _unique_first(idxs)
        merged[key] = Member(old.name, old.module, old.dim, uniq, roots[first], old.axis)
    return list(merged.values())


def _unique_first(idxs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    seen: dict[int, int] = {}
    for pos, i in enumerate(idxs.tolist()):
        seen.setdefault(i, pos)
    keys = sorted(seen)
    return torch.tensor(keys, dtype=torch.long), torch.tensor([seen[k] for k in keys], dtype=torch.long)


def _gate_points(dg, group: ChannelGroup) -> list[Member]:
    bns = {id(m.module): m for m in group.members if isinstance(m.module, BN_TYPES)}
    points: list[Member] = []
    for m in group.members:
        if m.dim != "out":
            continue
        if isinstance(m.module, BN_TYPES):
            points.append(m)
        elif isinstance(m.module, _WEIGHTED):
            node = dg.module2node.get(m.module)
            consumers = [o.module for o in node.outputs] if node is not None else []
            followed_by_bn = bool(consumers) and all(id(c) in bns for c in consumers)
            if not followed_by_bn:
                points.append(m)
                group.point_of[m.name] = m
            elif len(consumers) == 1:
                group.point_of[m.name] = bns[id(consumers[0])]
    return points


@dataclass(eq=False)
class Branch:
    """A residual branch: the layers between a fork of a residual stream and its sum.

    Attributes:
        name: the branch's last producer (e.g. ``layer1.0.conv2``).
        end: the gate point where the branch's output enters the sum (its last BatchNorm).
        inner: indices (into the analysed group list) of the groups living only inside the branch.
    """

    name: str
    end: Member
    inner: list[int]


def residual_branches(groups: list[ChannelGroup]) -> list[Branch]:
    """Find residual branches from the groups alone (no per-architecture rules).

    A residual sum is a group with several producers. Walking back from one producer through the
    groups it reads, every single-producer group is inside the branch; the walk stops at residual
    streams (its sources). It is a branch when (1) it ends in a BatchNorm, (2) each source is the sum's
    own stream (identity shortcut) or is read by another producer of the sum (projection shortcut),
    so the block keeps a path without it, and (3) its inner channels are read only inside it, so
    closing the branch removes all of them.
    """
    by_consumer: dict[str, list[int]] = {}
    for gi, g in enumerate(groups):
        for m in g.consumers():
            by_consumer.setdefault(m.name, []).append(gi)
    branches: list[Branch] = []
    for gi_sum, g in enumerate(groups):
        producers = g.producers()
        if len(producers) < 2:
            continue
        for p in producers:
            end = g.point_of.get(p.name)
            if end is None or not isinstance(end.module, BN_TYPES):
                continue
            inner: list[int] = []
            sources: set[int] = set()
            inside = {p.name}
            frontier = [p.name]
            while frontier:
                name = frontier.pop()
                reads = by_consumer.get(name, ())
                if not reads:
                    sources.add(-1)  # reads the network input: no shortcut around it
                for gi in reads:
                    src = groups[gi]
                    if len(src.producers()) != 1:
                        sources.add(gi)
                        continue
                    if gi in inner:
                        continue
                    inner.append(gi)
                    for q in src.producers():
                        inside.add(q.name)
                        frontier.append(q.name)
            if not inner or not sources:
                continue
            others = {q.name for q in producers if q is not p}
            bypassed = all(
                s == gi_sum or (s >= 0 and any(c.name in others for c in groups[s].consumers())) for s in sources
            )
            closed = all(c.name in inside for gi in inner for c in groups[gi].consumers())
            if bypassed and closed and all(groups[gi].prunable for gi in inner):
                branches.append(Branch(name=p.name, end=end, inner=sorted(inner)))
    return branches
