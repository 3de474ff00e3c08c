"""What every gate-based method shares: the gate optimizer group, schedule checks, the cost of a set of
masks, the global calibration of masks to a MACs/params target, and the common metrics.

Gate logits always live in their own optimizer parameter group, without weight decay (weight decay
would pull the logits towards 0, the undecided middle). When a method asks for a gate optimizer
different from the training one (CRISP: Adam for the gates, SGD for the weights), the two are wrapped in
one :class:`SplitOptimizer` so that the loop's lr schedule, checkpoints and AMP scaler see one object.

**Calibration** (documented behaviour of crisp, growing, l0, l1, slimming): a method that must land on a
cost target ranks every structure of the network by a per-method score (CRISP: the gate value; growing:
the logit; L0: log α; L1: the filter norm relative to its group's mean; slimming: mean |γ|), and keeps
the top-k structures for the k whose hard cost is nearest to the target (one global ranking, binary
search over k; every group keeps at least one structure, so no layer is cut by the ranking alone).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.methods.base import Method

logger = logging.getLogger(__name__)

TARGET_KINDS = ("macs", "params")


# -- option checks ----------------------------------------------------------------------------------
def check_target(name: str, value: float | None, allow_none: bool = False) -> None:
    """ConfigError unless ``value`` is in (0, 1] (or None when allowed)."""
    if value is None and allow_none:
        return
    if value is None or not 0 < float(value) <= 1:
        raise ConfigError(f"{name} must be in (0, 1], got {value}")


def check_threshold(name: str, value: float) -> None:
    if not 0 < float(value) < 1:
        raise ConfigError(f"{name} must be in (0, 1), got {value}")


def check_positive(cfg: Any, *names: str, strict: bool = False) -> None:
    """ConfigError for any named field of ``cfg`` that is negative (or ≤ 0 with ``strict``)."""
    for n in names:
        v = getattr(cfg, n)
        if v is None:
            continue
        if (strict and not v > 0) or v < 0:
            raise ConfigError(f"{n} must be {'> 0' if strict else '>= 0'}, got {v}")


def require_gated(model: nn.Module, method: str) -> Any:
    from prunekit.augment import GatedModel

    if not isinstance(model, GatedModel):
        raise ConfigError(f"method {method!r} needs the model it prepared (a GatedModel), got {type(model).__name__}")
    return model


# -- optimizer ---------------------------------------------------------------------------------------
class SplitOptimizer(torch.optim.Optimizer):
    """Several optimizers stepped as one (weights: SGD; gate logits: Adam, say).

    ``param_groups`` is the concatenation of the inner optimizers' group dicts (the same objects), so an
    lr scheduler scaling ``param_groups[i]["lr"]`` drives the inner optimizers directly.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = list(optimizers)
        params = [p for o in self.optimizers for g in o.param_groups for p in g["params"]]
        super().__init__(params, {})
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for o in self.optimizers:
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"split": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict.get("split")
        if not isinstance(states, list) or len(states) != len(self.optimizers):
            raise ConfigError("optimizer state does not match this method's split optimizer")
        for o, s in zip(self.optimizers, states):
            o.load_state_dict(s)


def gate_param_groups(model: nn.Module, train_cfg: Any, gate_lr: float | None) -> list[dict[str, Any]]:
    """Weights in one group, gate logits in another with ``gate_lr`` (None: the training lr) and no decay."""
    gates = [p for p in model.gate_parameters() if p.requires_grad] if hasattr(model, "gate_parameters") else []
    ids = {id(p) for p in gates}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups: list[dict[str, Any]] = [{"params": rest}]
    if gates:
        lr = gate_lr if gate_lr is not None else float(getattr(train_cfg, "lr", 0.1))
        groups.append({"params": gates, "lr": lr, "weight_decay": 0.0})
    return groups


def gate_optimizer(model: nn.Module, train_cfg: Any, gate_lr: float | None, kind: str) -> torch.optim.Optimizer | None:
    """``kind="adam"``: the training optimizer for the weights plus Adam (``gate_lr``) for the gates.

    ``kind="same"`` returns None: the loop builds its optimizer from :func:`gate_param_groups`.
    """
    if kind == "same" or getattr(train_cfg, "optimizer", "sgd") in ("adam", "adamw"):
        return None
    from prunekit.train.loop import build_optimizer

    groups = gate_param_groups(model, train_cfg, gate_lr)
    if len(groups) == 1:
        return None
    weights = build_optimizer(groups[:1], train_cfg)
    lr = groups[1]["lr"]
    return SplitOptimizer([weights, torch.optim.Adam(groups[1:], lr=lr, weight_decay=0.0)])


# -- cost of masks and calibration ---------------------------------------------------------------------
def mask_ratio(gated: nn.Module, masks: list[torch.Tensor], kind: str = "macs") -> float:
    """Hard cost ratio (collapsed / dense) if every group kept exactly ``masks`` (bool [size] per group)."""
    from prunekit.cost import _cost_model

    cm = _cost_model(gated)
    values = [m.float() for m in masks]
    if kind == "macs":
        return float(cm.macs(values)) / cm.dense_macs
    return float(cm.params(values)) / cm.dense_params


def cost_ratio(gated: nn.Module, mode: str, kind: str = "macs") -> torch.Tensor:
    """``macs_ratio`` or ``params_ratio`` of ``prunekit.cost`` by ``kind``."""
    from prunekit.cost import macs_ratio, params_ratio

    return macs_ratio(gated, mode) if kind == "macs" else params_ratio(gated, mode)


@torch.no_grad()
def calibrate(gated: nn.Module, scores: list[torch.Tensor], target: float, kind: str = "macs",
              min_keep: int = 1, min_keep_fraction: float = 0.0) -> tuple[list[torch.Tensor], float]:
    """Keep the globally top-scored structures so that the hard cost ratio is nearest to ``target``.

    Args:
        gated: a GatedModel.
        scores: per group, a float tensor [size]; higher means more important.
        target: the cost ratio wanted.
        kind: ``"macs"`` or ``"params"``.
        min_keep: structures every group keeps regardless of rank (its best ones).
        min_keep_fraction: a share of every group kept regardless of rank (rounded up; the larger of the two
            floors applies): a global ranking of unnormalised scores (e.g. BN γ) otherwise empties whole layers.
    Returns:
        (masks: bool [size] per group, the achieved hard ratio).
    """
    flat = torch.cat([s.detach().float().flatten().cpu() for s in scores])
    sizes = [int(s.numel()) for s in scores]
    order = torch.argsort(flat, descending=True, stable=True)
    forced = torch.zeros_like(flat, dtype=torch.bool)
    start = 0
    if not 0 <= min_keep_fraction < 1:
        raise ConfigError(f"min_keep_fraction must be in [0, 1), got {min_keep_fraction}")
    for s, n in zip(scores, sizes):
        k = min(max(min_keep, math.ceil(min_keep_fraction * n)), n)
        if k:
            forced[start + torch.topk(s.detach().float().cpu(), k).indices] = True
        start += n

    def masks_for(k: int) -> list[torch.Tensor]:
        keep = forced.clone()
        keep[order[:k]] = True
        return list(torch.split(keep, sizes))

    lo, hi = 0, flat.numel()  # smallest k with ratio >= target lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if mask_ratio(gated, masks_for(mid), kind) >= target:
            hi = mid
        else:
            lo = mid + 1
    best = min({max(lo - 1, 0), lo}, key=lambda k: abs(mask_ratio(gated, masks_for(k), kind) - target))
    masks = masks_for(best)
    return masks, mask_ratio(gated, masks, kind)


def apply_masks(gated: nn.Module, masks: list[torch.Tensor]) -> None:
    for h, m in zip(gated.groups, masks):
        h.set_mask(m)


def within(ratio: float, target: float, tolerance: float) -> bool:
    """|ratio − target| ≤ tolerance · target (tolerance relative to the target)."""
    return abs(ratio - target) <= tolerance * target + 1e-9


def freeze_gates(gated: nn.Module) -> None:
    """Stop training the gate logits (fine-tune phases with fixed masks)."""
    for p in gated.gate_parameters():
        p.requires_grad_(False)


# -- metrics --------------------------------------------------------------------------------------------
@torch.no_grad()
def cost_metrics(gated: nn.Module) -> dict[str, float]:
    """``macs_ratio/expected``, ``macs_ratio/hard`` and ``sparsity`` (removed structures / all)."""
    from prunekit.cost import macs_ratio

    removed = sum(int((~h.gate.hard_mask()).sum()) for h in gated.groups)
    total = sum(h.size for h in gated.groups)
    return {"macs_ratio/expected": float(macs_ratio(gated, "expected")),
            "macs_ratio/hard": float(macs_ratio(gated, "hard")),
            "sparsity": removed / max(total, 1)}


def layer_rows(gated: nn.Module, state: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Per-group rows of ``prunekit.metrics.gate_layer_rows`` (gate values, keep ratio, entropy, flips)."""
    from prunekit.metrics import gate_layer_rows

    return gate_layer_rows(gated, state=state)


class GateMethod(Method):
    """A method whose ``prepare`` gates every prunable group with one gate kind.

    Subclasses set ``gate_kind`` and may override ``gate_options``; their Config has ``gate_lr`` and
    ``gate_optimizer`` (``"adam"``: Adam for the gates whatever trains the weights; ``"same"``).
    """

    gate_kind = "crisp"

    def __init__(self, config: Any = None, **options: Any) -> None:
        super().__init__(config, **options)
        self._flip_state: dict[str, torch.Tensor] = {}
        self.report: dict[str, Any] = {}

    def gate_options(self) -> dict[str, Any]:
        return {}

    def prepare(self, model: nn.Module, example_input: torch.Tensor) -> nn.Module:
        from prunekit.augment import augment

        return augment(model, example_input, gate=self.gate_kind, gate_options=self.gate_options())

    def param_groups(self, model: nn.Module, train_cfg: Any) -> list[dict[str, Any]]:
        return gate_param_groups(model, train_cfg, getattr(self.config, "gate_lr", None))

    def make_optimizer(self, model: nn.Module, train_cfg: Any) -> torch.optim.Optimizer | None:
        return gate_optimizer(model, train_cfg, getattr(self.config, "gate_lr", None),
                              getattr(self.config, "gate_optimizer", "same"))

    def temperature(self) -> float | None:
        return None

    def step_metrics(self, model: nn.Module) -> dict[str, float]:
        if not hasattr(model, "groups"):
            return {}
        out = cost_metrics(model)
        t = self.temperature()
        if t is not None:
            out["temperature"] = float(t)
        return out

    def layer_metrics(self, model: nn.Module) -> list[dict[str, Any]]:
        return layer_rows(model, self._flip_state) if hasattr(model, "groups") else []

    def _calibrate(self, gated: nn.Module, scores: list[torch.Tensor], target: float, kind: str) -> float:
        masks, ratio = calibrate(gated, scores, target, kind)
        apply_masks(gated, masks)
        self.report["calibrated"] = {"target": target, "ratio": ratio, "kind": kind,
                                     "kept": int(sum(int(m.sum()) for m in masks))}
        logger.info("%s: calibrated masks to %s ratio %.4f (target %.4f)", self.name, kind, ratio, target)
        return ratio


def finetune_epochs(requested: int | None, num_epochs: int, phase: str) -> int:
    """Epochs of fixed-mask fine-tuning at the end of a run (default 1 when the run has ≥ 3 epochs).

    Raises:
        ConfigError: the fine-tune would leave no ``phase`` epoch.
    """
    ft = requested if requested is not None else (1 if num_epochs >= 3 else 0)
    if ft >= num_epochs:
        raise ConfigError(f"finetune_epochs={ft} leaves no {phase} epoch in a run of epochs={num_epochs}")
    return ft


def replace_config(cfg: Any, **changes: Any) -> Any:
    return dataclasses.replace(cfg, **changes)


@torch.no_grad()
def fold_gate_values(gated: nn.Module, values: list[torch.Tensor]) -> None:
    """Multiply each gate point (BN γ/β, or conv/linear weight/bias) by the given per-group values.

    After folding the current eval values and setting every gate to 1, the network computes the same
    function with plain 0/1 masks (used before the fixed-mask fine-tune of l0).
    """
    from prunekit.collapse import fold_into

    modules = dict(gated.model.named_modules())
    for name in gated.gate_points:
        fold_into(modules[name], gated.point_mask(name, values), name, inplace=True)
