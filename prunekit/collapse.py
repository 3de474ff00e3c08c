"""Collapse a gated network into a slim dense one with the same outputs.

Steps (each exact in eval mode):
1. fold every gate value into the layer it multiplies: BatchNorm γ, β ← g·γ, g·β (or conv/linear
   weight and bias) — folding before slicing keeps a removed channel's output exactly zero, so BN
   cannot rescale a near-zero gated channel back to life;
2. slice every member of every group: output channels of producers, BN channels, input channels of
   consumers (through concatenations and flatten, via the group's index maps);
3. a group with no survivor removes its branch: producers become ``EmptyChannels``, their BatchNorms
   ``Removed``, and each consumer conv a ``ConstantMap`` emitting its bias, so a residual block whose
   branch is closed becomes its shortcut plus the exact constant the branch still added (BN's
   β − γμ/√(σ²+ε) of a zero input). Where an op between cannot carry zero channels, one zeroed channel
   is kept instead (still exact; noted in ``pk_collapse["dummy_channels"]``);
4. compare ``slim(x)`` with ``gated.eval()(x)`` and raise :class:`CollapseError` beyond tolerance.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import torch
from torch import nn

from prunekit import heads
from prunekit._slim_modules import ConstantMap, EmptyChannels, Removed, resize_module_, set_submodule_, slice_parameter_
from prunekit.augment import GatedModel, is_gate_hook
from prunekit.errors import CollapseError, ConfigError, UnsupportedModelError
from prunekit.graph import BN_TYPES, CONVT_TYPES, is_depthwise, member_size, run_naming_layer

log = logging.getLogger(__name__)


def _strip_gate_hooks(model: nn.Module) -> None:
    for m in model.modules():
        for hooks in (m._forward_hooks, m._forward_pre_hooks):
            for key in [k for k, h in hooks.items() if is_gate_hook(h)]:
                del hooks[key]


@torch.no_grad()
def _scale(module: nn.Module, attr: str, v: torch.Tensor, inplace: bool) -> None:
    p = getattr(module, attr)
    if inplace:  # keeps the Parameter objects an optimizer holds
        p.data.mul_(v)
    else:  # the slim copy shares the gated model's tensors until it changes them
        setattr(module, attr, nn.Parameter(p.detach() * v, requires_grad=p.requires_grad))


@torch.no_grad()
def fold_into_(module: nn.Module, v: torch.Tensor, name: str, *, inplace: bool = False) -> None:
    """Multiply a gate point's output channels by ``v`` inside its parameters (BN γ/β, or weight/bias).

    A Linear gated at its input (``module.pk_gate_dim == "in"``: attention heads before the output
    projection) gets ``v`` folded into its weight's columns instead; its bias is untouched.
    """
    if getattr(module, "pk_gate_dim", "out") == "in":
        _scale(module, "weight", v.view(1, -1), inplace)
        return
    if isinstance(module, BN_TYPES):
        if not module.affine:
            raise CollapseError(f"cannot fold a gate into non-affine BatchNorm {name!r}")
        _scale(module, "weight", v, inplace)
        _scale(module, "bias", v, inplace)
        return
    out_dim = 1 if isinstance(module, CONVT_TYPES) else 0
    shape = [1] * module.weight.dim()
    shape[out_dim] = -1
    _scale(module, "weight", v.view(shape), inplace)
    if module.bias is not None:
        _scale(module, "bias", v, inplace)


def _share_copy(model: nn.Module, owner: nn.Module) -> nn.Module:
    """Deep copy of the module tree that shares parameter and buffer tensors (no data copied yet).

    ``owner`` (the GatedModel its gate hooks point to) is not copied either; the hooks are stripped next.
    """
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    memo[id(owner)] = owner
    return copy.deepcopy(model, memo)


@torch.no_grad()
def _unshare(slim: nn.Module, source: nn.Module) -> None:
    """Give ``slim`` its own copy of every tensor it still shares with ``source`` (the untouched layers)."""
    # by storage, not object: a resized layer may wrap an unchanged tensor (e.g. a bias) in a new Parameter
    shared = {t.untyped_storage().data_ptr() for t in list(source.parameters()) + list(source.buffers()) if t.numel()}
    for mod in slim.modules():
        for name, p in list(mod._parameters.items()):
            if p is not None and p.numel() and p.untyped_storage().data_ptr() in shared:
                mod._parameters[name] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
        for name, b in list(mod._buffers.items()):
            if b is not None and b.numel() and b.untyped_storage().data_ptr() in shared:
                mod._buffers[name] = b.clone()


def _keep_masks(gated: GatedModel, keep: list[torch.Tensor]) -> dict[tuple[str, str], torch.Tensor]:
    masks: dict[tuple[str, str], torch.Tensor] = {}
    for h in gated.groups:
        for m in h.group.members:
            key = (m.name, "out" if isinstance(m.module, BN_TYPES) else m.dim)
            if key not in masks:
                masks[key] = torch.ones(member_size(m), dtype=torch.bool)
            masks[key][m.idxs] = keep[h.index][m.root_idxs.to(keep[h.index].device)].cpu()
    return masks


def _plan(gated: GatedModel, keep: list[torch.Tensor]) -> dict[str, dict[str, Any]]:
    """Per module: the new spec (resize with kept indices, or a replacement)."""
    masks = _keep_masks(gated, keep)
    modules = dict(gated.model.named_modules())
    axes = {m.name: m.axis for h in gated.groups for m in h.group.members if m.dim == "param"}
    names = sorted({name for name, _ in masks})
    plan: dict[str, dict[str, Any]] = {}
    for name in names:
        param_m = masks.get((name, "param"))
        if param_m is not None:  # a bare parameter (layer scale): sliced along its axis
            if not param_m.all():
                plan[name] = {"param": param_m.nonzero().flatten(), "axis": axes[name]}
            continue
        mod = modules[name]
        heads_m = masks.get((name, "heads"))
        if heads_m is not None:
            if not heads_m.all():
                plan[name] = {"heads": heads_m.nonzero().flatten()}
            continue
        out_m = masks.get((name, "out"))
        in_m = masks.get((name, "in"))
        if isinstance(mod, BN_TYPES) or isinstance(mod, nn.PReLU) or is_depthwise(mod):
            m = out_m if out_m is not None else in_m
            if in_m is not None and out_m is not None:
                m = out_m & in_m
            if not m.any():
                plan[name] = {"replace": Removed() if not is_depthwise(mod) else EmptyChannels.like(mod)}
            elif not m.all():
                plan[name] = {"out": m.nonzero().flatten(), "in": None}
            continue
        if out_m is not None and not out_m.any():
            plan[name] = {"replace": EmptyChannels.like(mod)}
            continue
        if in_m is not None and not in_m.any():
            keep_out = None if out_m is None else out_m.nonzero().flatten()
            plan[name] = {"replace": ConstantMap.like(mod, keep_out)}
            continue
        o = None if out_m is None or out_m.all() else out_m.nonzero().flatten()
        i = None if in_m is None or in_m.all() else in_m.nonzero().flatten()
        if o is not None or i is not None:
            plan[name] = {"out": o, "in": i}
    return plan


def _apply(slim: nn.Module, plan: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Carry out ``plan`` on ``slim``; returns the per-layer spec that ``load_slim`` replays in order."""
    modules = dict(slim.named_modules())
    layers: dict[str, dict[str, Any]] = {}
    for name, step in plan.items():
        try:
            if "param" in step:
                layers[name] = slice_parameter_(slim, name, step["axis"], step["param"])
            elif "heads" in step:
                heads.set_heads_(modules[name], step["heads"])
            elif "replace" in step:
                rep = step["replace"]
                set_submodule_(slim, name, rep)
                layers[name] = rep.spec()
            else:
                mod = modules[name]
                resize_module_(mod, step["out"], step["in"])
                layers[name] = {"type": "resize", **_widths(mod)}
        except (RuntimeError, ValueError, IndexError, UnsupportedModelError) as e:
            kind = type(modules[name]).__name__ if name in modules else "parameter"
            raise CollapseError(f"cannot slice layer {name!r} ({kind}): {e}") from e
    # head-prunable attention first: load_slim converts these modules (and sets their head count) before
    # it resizes their projections
    first = {n: heads.head_spec(m) for n, m in slim.named_modules() if n and heads.layout(m) is not None}
    return {**first, **layers}


def _widths(mod: nn.Module) -> dict[str, int]:
    if isinstance(mod, BN_TYPES):
        return {"out": mod.num_features}
    if isinstance(mod, nn.PReLU):
        return {"out": mod.num_parameters}
    if isinstance(mod, nn.Linear):
        return {"out": mod.out_features, "in": mod.in_features}
    return {"out": mod.out_channels, "in": mod.in_channels}


def _check_inputs(gated: GatedModel, example_input: torch.Tensor | None) -> list[torch.Tensor]:
    base = gated.example_input if example_input is None else example_input
    gen = torch.Generator().manual_seed(0)
    rand = torch.randn((1, *base.shape[1:]), generator=gen).to(base.device, base.dtype)
    # one batch: the real example (or the one augment saw) and a random input of the same shape
    return [torch.cat([base[:1], rand])]


def collapse(
    gated: GatedModel,
    example_input: torch.Tensor | None = None,
    *,
    tol: float = 1e-4,
    check: bool = True,
) -> nn.Module:
    """Turn a GatedModel into a plain, smaller network with the same eval-mode outputs.

    Args:
        gated: the gated network (its current eval gate values and keep masks decide what stays).
        example_input: input for the equivalence check (default: the one used by ``augment``, plus a
            random batch of 2).
        tol: maximum allowed |slim(x) − gated(x)|, relative to max(1, max |gated(x)|).
        check: run the equivalence check (leave on; it is what makes collapse safe).
    Returns:
        a new ``nn.Module`` with no gates, masks or hooks. ``slim.pk_collapse`` records per-layer
        widths, removed layers, the measured max difference and the collapse time.
    Raises:
        CollapseError: the outputs differ beyond tolerance (nothing is returned).
    """
    if not isinstance(gated, GatedModel):
        raise ConfigError(f"collapse expects a GatedModel (from prunekit.augment), got {type(gated).__name__}")
    t0 = time.perf_counter()
    was_training = gated.training
    gated.eval()
    try:
        block_values = [b.values() for b in gated.block_gates]
        values = gated.effective_values([h.gate.values() for h in gated.groups], block_values)
        keep = [v != 0 for v in values]
        inputs = _check_inputs(gated, example_input)
        with torch.no_grad():
            refs = [run_naming_layer(gated.model, lambda x=x: gated(x), CollapseError, "the gated network") for x in inputs] if check else []
        dummy: list[str] = []
        slim, layers = _build(gated, values, keep, block_values)
        if check:
            try:
                diff = _max_diff(slim, inputs, refs)
            except CollapseError as e:
                # an op between producer and consumer could not carry zero channels: keep one zeroed channel
                empty = [h for h in gated.groups if not keep[h.index].any()]
                if not empty:
                    raise
                for h in empty:
                    keep[h.index] = keep[h.index].clone()
                    keep[h.index][0] = True
                    dummy.append(h.name)
                log.info("branch removal not possible for %s (%s); keeping one zeroed channel", dummy, e)
                slim, layers = _build(gated, values, keep, block_values)
                diff = _max_diff(slim, inputs, refs)
            scale = max(1.0, max(float(r.abs().max()) for r in refs))
            if not diff <= tol * scale:
                raise CollapseError(
                    f"collapsed network differs from the gated one by {diff:.3g} (> {tol:g} × {scale:.3g}); "
                    "refusing to return a wrong network"
                )
        else:
            diff = float("nan")
    finally:
        gated.train(was_training)
    for attr in ("pk_spec", "pk_task"):
        if hasattr(gated, attr):
            setattr(slim, attr, copy.deepcopy(getattr(gated, attr)))
    removed = sorted(n for n, s in layers.items() if s["type"] in ("ConstantMap", "EmptyChannels", "Removed"))
    slim.pk_collapse = {
        "layers": layers,
        "removed": removed,
        "removed_blocks": [
            b.name for b, inner in zip(gated.branches, gated.branch_inner) if not any(keep[i].any() for i in inner)
        ],
        "dummy_channels": dummy,
        "max_diff": diff,
        "seconds": time.perf_counter() - t0,
    }
    log.info("collapsed %d groups in %.2fs, max diff %.2e", len(gated.groups), slim.pk_collapse["seconds"], diff)
    return slim


def _build(
    gated: GatedModel, values: list[torch.Tensor], keep: list[torch.Tensor], block_values: list[torch.Tensor]
) -> tuple[nn.Module, dict]:
    slim = _share_copy(gated.model, gated)
    _strip_gate_hooks(slim)
    modules = dict(slim.named_modules())
    for name in gated.gate_points:
        fold_into_(modules[name], gated.point_mask(name, values), name)
    for b, bv in zip(gated.branches, block_values):
        # the block gate scales the branch's last BN; 0 makes the branch add exactly nothing
        fold_into_(modules[b.end.name], bv.expand(_width(modules[b.end.name])), b.end.name)
    for m in slim.modules():
        m.__dict__.pop("pk_gate_dim", None)  # folded: the slim network has no gates
    layers = _apply(slim, _plan(gated, keep))
    _unshare(slim, gated.model)
    slim.eval()
    return slim, layers


def _width(mod: nn.Module) -> int:
    if isinstance(mod, BN_TYPES):
        return mod.num_features
    return mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels


@torch.no_grad()
def _max_diff(slim: nn.Module, inputs: list[torch.Tensor], refs: list[torch.Tensor]) -> float:
    diff = 0.0
    for x, ref in zip(inputs, refs):
        y = run_naming_layer(slim, lambda x=x: slim(x), CollapseError, "the collapsed network")
        if y.shape != ref.shape:
            raise CollapseError(f"collapsed output shape {tuple(y.shape)} != gated output shape {tuple(ref.shape)}")
        diff = max(diff, float((y - ref).abs().max()))
    return diff
