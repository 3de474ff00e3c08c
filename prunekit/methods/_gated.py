"""What every gate-based method shares: the gate optimizer group, schedule checks, the cost of a set of
masks, the global calibration of masks to a MACs/params target, and the common metrics.

Gate logits always live in their own optimizer parameter group, without weight decay (weight decay
would pull the logits towards 0, the undecided middle). When a method asks for a gate optimizer
different from the training one (CRISP: Adam for the gates, SGD for the weights), the two are wrapped in
one :class:`~prunekit.optim.SplitOptimizer` so that the loop's lr schedule, checkpoints and AMP scaler see one object.

**Calibration** (documented behaviour of crisp, growing, l0, l1, slimming): a method that must land on a
cost target ranks every structure of the network by a per-method score (CRISP: the gate value; growing:
the logit; L0: log α; L1: the filter norm relative to its group's mean; slimming: mean |γ|), and keeps
the top-k structures for the k whose hard cost is nearest to the target (one global ranking, binary
search over k; every group keeps at least one structure, so no layer is cut by the ranking alone).

**Hardware-friendly widths** (``round_to``, :class:`WidthConfig`, an option of every target-driven method): a
group's kept count k becomes the nearest of the multiples of ``round_to`` that fit in the group, or the whole group
(:func:`round_count`; a group narrower than ``round_to`` keeps every channel, an emptied group stays empty), and
the channels are the group's best by the method's own scores, its own rule's choices first (:func:`round_masks`).
Calibration searches over rounded masks, so a calibrated result still lands on the target; the method's report
says how far rounding moved the ratio (``rounding``: ratio without and with rounding, the shift, the flips).

**Latency targets** (``target_latency``, :class:`LatencyConfig`; crisp, l0 and growing): ``prepare`` times the dense
network's per-layer latency table (``prunekit.latency_table``, cached on disk) and keeps it on the gated model; the
budget then counts ``"latency"`` (relaxed latency ÷ dense latency, a bilinear interpolation of the table at the soft
channel counts) with target ``target_latency`` ÷ dense latency (:meth:`GateMethod.budget`), calibration ranks to
it, and the report's ``latency`` holds the table's prediction and the collapsed network's measured latency.
A method opts in by inheriting :class:`LatencyConfig` and reading :meth:`GateMethod.budget` where it reads its MACs
target.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.methods.base import Method, option
from prunekit.optim import split_optimizer

logger = logging.getLogger(__name__)

TARGET_KINDS = ("macs", "params")
COST_KINDS = (*TARGET_KINDS, "latency")  # latency: prunekit.latency_table (needs a table on the gated model)


def require_gated(model: nn.Module, method: str) -> Any:
    from prunekit.augment import GatedModel

    if not isinstance(model, GatedModel):
        raise ConfigError(f"method {method!r} needs the model it prepared (a GatedModel), got {type(model).__name__}")
    return model


# -- optimizer ---------------------------------------------------------------------------------------
# Adam moves a logit by about its lr per step while the logit's gradient keeps its sign; a gate whose lr is
# ``travel / steps`` can cross ``travel`` logit units within ``steps``, whatever the length of the run.
DEFAULT_GATE_LR = 1e-2


def cubic_ramp(t: float, start: float, end: float) -> float:
    """0 before ``start``, ((t − start)/(end − start))³ between, 1 from ``end`` on (``t`` in epochs, fractional)."""
    if t <= start:
        return 0.0
    if t >= end or end <= start:
        return 1.0
    return ((t - start) / (end - start)) ** 3


def budget_gate_lr(steps: int | None, travel: float, lo: float = 1e-3, hi: float = 0.1) -> float:
    """The gate lr that lets a logit travel ``travel`` units in ``steps`` Adam steps, clamped to [lo, hi].

    ``steps`` None (the loop has not told the method how long the run is): :data:`DEFAULT_GATE_LR`.
    """
    if not steps:
        return DEFAULT_GATE_LR
    return float(min(hi, max(lo, travel / steps)))


def gate_param_groups(model: nn.Module, train_cfg: Any, gate_lr: float | None) -> list[dict[str, Any]]:
    """Weights in one group, gate logits in another with ``gate_lr`` (None: the training lr), no weight decay and
    no lr schedule (``"lr_schedule": False``: the loop's warm-up and decay leave it alone)."""
    gates = [p for p in model.gate_parameters() if p.requires_grad] if hasattr(model, "gate_parameters") else []
    ids = {id(p) for p in gates}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups: list[dict[str, Any]] = [{"params": rest}]
    if gates:
        lr = gate_lr if gate_lr is not None else float(getattr(train_cfg, "lr", 0.1))
        # a constant lr: the gate lr is sized to the search (budget_gate_lr), which a decaying schedule would cut
        groups.append({"params": gates, "lr": lr, "weight_decay": 0.0, "lr_schedule": False})
    return groups


def gate_optimizer(model: nn.Module, train_cfg: Any, gate_lr: float | None, kind: str) -> torch.optim.Optimizer | None:
    """``kind="adam"``: the training optimizer for the weights plus Adam (``gate_lr``) for the gates.

    ``kind="same"`` returns None: the loop builds its optimizer from :func:`gate_param_groups`.
    """
    if kind == "same" or getattr(train_cfg, "optimizer", "sgd") in ("adam", "adamw"):
        return None
    return split_optimizer(gate_param_groups(model, train_cfg, gate_lr), train_cfg)


# -- cost of masks and calibration ---------------------------------------------------------------------
def mask_ratio(gated: nn.Module, masks: list[torch.Tensor], kind: str = "macs") -> float:
    """Hard cost ratio (collapsed / dense) if every group kept exactly ``masks`` (bool [size] per group), with the
    block gates' current hard masks (if any) applied."""
    from prunekit.cost import cost_model

    cm = cost_model(gated)
    # block gates (growing) close whole branches: their current hard masks apply on top of the group masks
    blocks = [b.hard_mask().float() for b in getattr(gated, "block_gates", ())]
    values = gated.effective_values([m.float() for m in masks], blocks) if blocks else [m.float() for m in masks]
    if kind == "macs":
        return float(cm.macs(values)) / cm.dense_macs
    if kind == "latency":
        from prunekit.latency_table import latency_ratio_of

        return float(latency_ratio_of(gated, values))
    return float(cm.params(values)) / cm.dense_params


def cost_ratio(gated: nn.Module, mode: str, kind: str = "macs") -> torch.Tensor:
    """``macs_ratio`` or ``params_ratio`` of ``prunekit.cost``, or ``latency_ratio`` of ``prunekit.latency_table``,
    by ``kind``."""
    from prunekit.cost import macs_ratio, params_ratio

    if kind == "latency":
        from prunekit.latency_table import latency_ratio

        return latency_ratio(gated, mode)
    return macs_ratio(gated, mode) if kind == "macs" else params_ratio(gated, mode)


class BudgetController:
    """The budget's multiplier b, read from the method's *own rule*, not from the relaxation.

    The relaxed cost (expected MACs under P(gate on)) and the cost of the mask the method's own rule keeps differ:
    fractional gates meet a relaxed budget while the rule keeps them all (L0: eval gate > 0; measured on ResNet-20
    before this controller: own rule 0.65 at target 0.5; growing's variants with it were worse and are documented
    in ``growing.py``). So the direction comes from the rule's relative miss e = (r_own − t) / t, a PI controller:
    b = clamp(gain · e + I, −1, 1) with I += rate · e / search_steps (clamped to ±1). The integral keeps a
    pressure on at the target (a pure proportional b is 0 there, and the planted test showed that nothing then
    separates a noise channel that is on from a signal channel that is off); it is a dual-ascent multiplier.
    """

    def __init__(self, gain: float, rate: float) -> None:
        self.gain, self.rate = float(gain), float(rate)
        self.integral = 0.0
        self.b = 0.0

    def update(self, own_ratio: float, target: float, search_steps: int | None) -> float:
        """The multiplier for this step, in [−1, 1]."""
        e = (own_ratio - target) / target
        if search_steps:
            self.integral = max(-1.0, min(1.0, self.integral + self.rate * e / search_steps))
        self.b = max(-1.0, min(1.0, self.gain * e + self.integral))
        return self.b

    def state_dict(self) -> dict[str, float]:
        return {"integral": self.integral, "b": self.b}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.integral, self.b = float(state["integral"]), float(state["b"])


def own_rule_budget(own_ratio: float, relaxed: torch.Tensor, target: float, b: float) -> torch.Tensor:
    """A budget term whose value is the own rule's miss |r_own − t| and whose gradient is b · ∂r̃ (``b`` from a
    :class:`BudgetController`): the relaxation moves in the direction the rule's miss asks for."""
    return abs(own_ratio - target) + b * (relaxed - relaxed.detach())


# -- hardware-friendly widths -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WidthConfig:
    """The option every target-driven method shares (its Config inherits it)."""

    round_to: int = option(1, "kept widths become multiples of this (a group narrower than it stays whole; 8 suits "
                           "most CPU/GPU kernels), chosen by the method's own ranking; the report says how far it "
                           "moved the ratio. 1: off", unit="channels", low=1)


def round_count(k: int, n: int, round_to: int) -> int:
    """The kept count of a group of ``n`` nearest to ``k`` that is a multiple of ``round_to`` or ``n`` (ties: more).

    ``k`` 0 stays 0 (an emptied group is the method's decision to remove a branch) and otherwise at least
    ``min(round_to, n)`` are kept: rounding never empties a group the method kept.
    """
    if round_to <= 1 or k <= 0 or k >= n:
        return max(0, min(k, n))
    candidates = list(range(round_to, n + 1, round_to)) + [n]
    return min(candidates, key=lambda c: (abs(c - k), -c))


@torch.no_grad()
def round_masks(masks: list[torch.Tensor], scores: list[torch.Tensor], round_to: int) -> list[torch.Tensor]:
    """Every group's mask with :func:`round_count` structures: the kept ones first, each ranked by ``scores``.

    Args:
        masks: keep masks, bool [size] per group.
        scores: per group, float [size]; higher means more important (the method's calibration scores).
        round_to: the width multiple (1: the masks unchanged).
    Returns:
        bool [size] per group (on the CPU).
    """
    if round_to <= 1:
        return [m.detach().bool().cpu() for m in masks]
    out = []
    for m, s in zip(masks, scores):
        m, s = m.detach().bool().cpu(), s.detach().float().cpu().flatten()
        k = round_count(int(m.sum()), m.numel(), round_to)
        order = torch.argsort(s, descending=True, stable=True)
        order = order[torch.argsort(m[order].to(torch.uint8), descending=True, stable=True)]  # rule's choices first
        keep = torch.zeros_like(m)
        keep[order[:k]] = True
        out.append(keep)
    return out


def rounding_report(gated: nn.Module, before: list[torch.Tensor], after: list[torch.Tensor], round_to: int,
                    kind: str = "macs") -> dict[str, float]:
    """How far rounding moved a decision: ``round_to``, the ``kind`` ratio without and with rounding, the shift
    (with − without) and ``flips`` (share of structures whose decision rounding changed)."""
    a, b = mask_ratio(gated, before, kind), mask_ratio(gated, after, kind)
    total = sum(int(m.numel()) for m in before)
    flips = sum(int((x.cpu().bool() != y.cpu().bool()).sum()) for x, y in zip(before, after))
    return {"round_to": int(round_to), "kind": kind, "ratio_unrounded": a, "ratio": b, "shift": b - a,
            "flips": flips / max(total, 1)}


@torch.no_grad()
def calibrate(gated: nn.Module, scores: list[torch.Tensor], target: float, kind: str = "macs",
              min_keep: int = 1, min_keep_fraction: float = 0.0, round_to: int = 1) -> tuple[list[torch.Tensor], float]:
    """Keep the globally top-scored structures so that the hard cost ratio is nearest to ``target``.

    Args:
        gated: a GatedModel.
        scores: per group, a float tensor [size]; higher means more important.
        target: the cost ratio wanted.
        kind: ``"macs"`` or ``"params"``.
        min_keep: structures every group keeps regardless of rank (its best ones).
        min_keep_fraction: a share of every group kept regardless of rank (rounded up; the larger of the two
            floors applies): a global ranking of unnormalised scores (e.g. BN γ) otherwise empties whole layers.
        round_to: every candidate mask is rounded (:func:`round_masks`) before its cost is measured, so the search
            lands on the target with rounded widths (rounding is monotone in k: the search stays a bisection).
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
        return round_masks(list(torch.split(keep, sizes)), scores, round_to)

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


@torch.no_grad()
def decision_report(gated: nn.Module, own: list[torch.Tensor], final: list[torch.Tensor]) -> dict[str, float]:
    """What the method's own rule decided, and how much a calibration changed it.

    Args:
        gated: a GatedModel.
        own: the keep masks of the method's own decision rule (bool [size] per group), before calibration.
        final: the keep masks actually applied (the same masks when no calibration ran).
    Returns:
        ``relaxation_macs_ratio`` (own rule's MACs ÷ dense MACs) and ``calibration_flips`` (share of all
        structures of all groups whose keep/remove decision differs between ``own`` and ``final``).
    """
    total = sum(int(m.numel()) for m in own)
    flips = sum(int((a.cpu().bool() != b.cpu().bool()).sum()) for a, b in zip(own, final))
    return {"relaxation_macs_ratio": mask_ratio(gated, own, "macs"), "calibration_flips": flips / max(total, 1)}


def apply_masks_(gated: nn.Module, masks: list[torch.Tensor]) -> None:
    for h, m in zip(gated.groups, masks):
        h.set_mask(m)


def within(ratio: float, target: float, tolerance: float) -> bool:
    """|ratio − target| ≤ tolerance · target (tolerance relative to the target)."""
    return abs(ratio - target) <= tolerance * target + 1e-9


def freeze_gates_(gated: nn.Module) -> None:
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


@dataclasses.dataclass(frozen=True)
class GateConfig(WidthConfig):
    """The options every method with trainable gates shares (its Config inherits them, listed after its own)."""

    calibrate: bool = option(True, "when the own rule misses the target, correct the mask by one global ranking of "
                             "the gate logits (reported as calibration_flips)")
    tolerance: float = option(0.05, "miss of the target that triggers calibration: |ratio − t| > tolerance · t", low=0)
    gate_lr: float | None = option(None, "lr of the gate logits; None: scaled so a gate can travel the method's "
                                   "gate_travel logit units over the search", low=0, low_open=True)
    gate_optimizer: str = option("adam", "adam: Adam for the gates whatever trains the weights; same: the training "
                                 "optimizer (own lr, no decay)", choices=("adam", "same"))


@dataclasses.dataclass(frozen=True)
class LatencyConfig:
    """A latency target instead of the MACs target, for the gated methods whose budget reads
    :meth:`GateMethod.budget` (crisp, l0): their Config inherits these options."""

    target_latency: float | None = option(None, "latency to reach instead of the MACs target: ms per forward of a "
                                          "batch of latency_batch on this CPU (a per-layer latency table is timed "
                                          "at prepare and cached); None: the MACs target", unit="ms", low=0,
                                          low_open=True)
    latency_batch: int = option(1, "batch size target_latency is for", unit="samples", low=1)
    latency_threads: int | None = option(None, "intra-op threads target_latency is for; None: torch's thread count "
                                         "at prepare", unit="threads", low=1)


@torch.no_grad()
def latency_reference(gated: nn.Module, share: float = 0.5) -> tuple[dict[str, tuple[Any, Any]], nn.Module]:
    """(channel counts, collapsed network) of ``gated`` with every group at ``share`` of its width (at least one
    channel): the reference a latency table fits its untimed rest to (``build_latency_table(reference=...)``).
    The gated model's keep masks are restored."""
    from prunekit.collapse import collapse
    from prunekit.cost import cost_model, gate_values

    saved = [h.gate.keep.clone() for h in gated.groups]
    try:
        for h in gated.groups:
            h.set_mask(torch.arange(h.size) < max(1, round(share * h.size)))
        counts = cost_model(gated).channels(gate_values(gated, "hard"))
        slim = collapse(gated)
    finally:
        for h, m in zip(gated.groups, saved):
            h.set_mask(m)
    return {k: (float(a), float(b)) for k, (a, b) in counts.items()}, slim


#: the step metrics a method with a latency target logs (``GateMethod.step_metrics``), for its ``metric_help``
LATENCY_METRIC_HELP = {
    "latency_ratio/expected": "relaxed latency ÷ dense latency from the per-layer latency table (target_latency runs)",
    "latency_ratio/relaxation": "predicted latency ÷ dense latency of the mask the own rule keeps now (target_latency "
                                "runs)",
}


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

    def augment_options(self) -> dict[str, Any]:
        """Further keyword arguments of ``prunekit.augment`` (growing's block gates)."""
        return {}

    def prepare(self, model: nn.Module, example_input: torch.Tensor) -> nn.Module:
        from prunekit.augment import augment

        dense = copy.deepcopy(model) if getattr(self.config, "target_latency", None) is not None else None
        gated = augment(model, example_input, gate=self.gate_kind, gate_options=self.gate_options(),
                        **self.augment_options())
        if dense is not None:
            self.attach_latency(gated, dense, example_input)
        return gated

    # -- a latency target -------------------------------------------------------------------------------------
    def attach_latency(self, gated: nn.Module, dense: nn.Module, example_input: torch.Tensor) -> None:
        """Build (or read from the cache) the latency table of ``dense`` at the config's batch and threads, keep it
        on ``gated`` (``prunekit.latency_table``) and record the dense latency; ConfigError when the target is not
        below it."""
        from prunekit.latency_table import attach_table, build_latency_table, varying_dims

        c = self.config
        table = build_latency_table(dense, example_input, c.latency_batch, threads=c.latency_threads,
                                    varying=varying_dims(gated), reference=lambda: latency_reference(gated))
        attach_table(gated, table)
        self.latency_info = {"dense_ms": table.dense_ms, "batch": table.key["batch"],
                             "threads": table.key["threads"], "device": table.key["device"],
                             "table_cached": not table.timed}
        if not c.target_latency < table.dense_ms:
            raise ConfigError(f"target_latency must be below the dense network's latency ({table.dense_ms:.3f} ms at "
                              f"batch {c.latency_batch}, {table.key['threads']} threads), got {c.target_latency}")
        self.report["latency"] = {"target_ms": float(c.target_latency), **self.latency_info}

    latency_info: dict[str, Any] | None = None

    def budget(self, kind: str = "macs", target: float | None = None) -> tuple[str, float | None]:
        """(cost kind, target ratio) of the method's budget: ``("latency", target_latency ÷ dense latency)`` when
        the config sets ``target_latency``, else ``kind`` and ``target`` unchanged."""
        ms = getattr(self.config, "target_latency", None)
        if ms is None:
            return kind, target
        if self.latency_info is None:
            raise ConfigError("target_latency needs the latency table that prepare() builds: prepare the model first")
        return "latency", float(ms) / self.latency_info["dense_ms"]

    @torch.no_grad()
    def latency_report(self, gated: nn.Module) -> dict[str, Any]:
        """The table's prediction for the current hard masks beside the collapsed network's measured latency on this
        CPU: the slim network and the dense one (the same model collapsed with every channel) timed interleaved, so
        the measured ratio holds under a changing load; ``prediction_error`` = predicted ÷ measured ratio − 1."""
        from prunekit.collapse import collapse
        from prunekit.cost import cost_model, gate_values
        from prunekit.latency import measure_latency_interleaved
        from prunekit.latency_table import gated_table

        table = gated_table(gated)
        counts = cost_model(gated).channels(gate_values(gated, "hard"))
        predicted = float(table.ratio(counts))
        slim = collapse(gated).cpu()
        dense = latency_reference(gated, 1.0)[1].cpu()
        batch, threads = table.key["batch"], table.key["threads"]
        ms = measure_latency_interleaved({"dense": dense, "slim": slim}, gated.example_input[:1].cpu(), (batch,),
                                         rounds=5, repeats=3, threads=threads)
        measured = ms["slim"][batch] / ms["dense"][batch]
        return {"predicted_ms": predicted * table.dense_ms, "predicted_ratio": predicted,
                "measured_ms": ms["slim"][batch], "measured_dense_ms": ms["dense"][batch], "measured_ratio": measured,
                "prediction_error": predicted / max(measured, 1e-12) - 1}

    #: logit units a gate can travel during the search when the config's ``gate_lr`` is None (budget_gate_lr)
    gate_travel: float = 4.0

    def search_epochs(self, epochs: int) -> int:
        """Epochs in which the gates search (before masks are fixed); the lr of the gates is scaled to them."""
        return epochs

    def gate_lr(self) -> float | None:
        """The gate logits' lr: the config's ``gate_lr``, or (None) scaled so a gate can travel ``gate_travel``
        logit units during the search. None for methods without trainable gates (the training lr)."""
        if not hasattr(self.config, "gate_lr"):
            return None
        if self.config.gate_lr is not None:
            return float(self.config.gate_lr)
        return budget_gate_lr(self.search_steps(), self.gate_travel)

    def search_steps(self) -> int | None:
        """Optimizer steps of the search (None until ``plan`` has told the method the run's length)."""
        return self.steps_per_epoch * self.search_epochs(self.epochs) if self.steps_per_epoch and self.epochs else None

    def param_groups(self, model: nn.Module, train_cfg: Any) -> list[dict[str, Any]]:
        return gate_param_groups(model, train_cfg, self.gate_lr())

    def make_optimizer(self, model: nn.Module, train_cfg: Any) -> torch.optim.Optimizer | None:
        return gate_optimizer(model, train_cfg, self.gate_lr(), getattr(self.config, "gate_optimizer", "same"))

    def temperature(self) -> float | None:
        return None

    def decision_masks(self, model: nn.Module) -> list[torch.Tensor] | None:
        """The default rule: a structure is kept when its eval gate value is not exactly 0."""
        return [h.gate.hard_mask() for h in model.groups] if hasattr(model, "groups") else None

    def decision_threshold(self) -> float | None:
        """GateMethod's default rule keeps an eval gate that is not exactly 0."""
        return 0.0

    def step_metrics(self, model: nn.Module) -> dict[str, float]:
        if not hasattr(model, "groups"):
            return {}
        out = cost_metrics(model)
        own = self.decision_masks(model)
        if own is not None:
            out["macs_ratio/relaxation"] = mask_ratio(model, own)
        if self.latency_info is not None:  # a latency target: the table's prediction beside the MACs
            out["latency_ratio/expected"] = float(cost_ratio(model, "expected", "latency").detach())
            if own is not None:
                out["latency_ratio/relaxation"] = mask_ratio(model, own, "latency")
        t = self.temperature()
        if t is not None:
            out["temperature"] = float(t)
        return out

    def layer_metrics(self, model: nn.Module) -> list[dict[str, Any]]:
        return layer_rows(model, self._flip_state) if hasattr(model, "groups") else []

    def report_state(self) -> dict[str, Any]:
        return {"report": dict(self.report), "flip": {k: v.clone() for k, v in self._flip_state.items()}}

    def load_report_state(self, state: dict[str, Any]) -> None:
        self.report = dict(state.get("report") or self.report)
        self._flip_state = dict(state.get("flip") or {})

    @torch.no_grad()
    def fix_decision(self, gated: nn.Module, scores: list[torch.Tensor], target: float | None, kind: str = "macs",
                     calibrate_to_target: bool = True, tolerance: float = 0.05) -> float:
        """Fix the masks the method's own rule decides (widths rounded to the config's ``round_to``); calibrate
        only when they miss ``target``.

        Records ``relaxation_macs_ratio`` and ``calibration_flips`` (:func:`decision_report`; flips count every
        changed decision, rounding included), ``rounding`` (:func:`rounding_report`, when ``round_to`` > 1) and
        the final ``ratio`` in ``self.report``. Returns the hard cost ratio (``kind``) of the applied masks.
        """
        r = int(getattr(self.config, "round_to", 1))
        own = self.decision_masks(gated)
        final = round_masks(own, scores, r)
        ratio, unrounded = mask_ratio(gated, final, kind), own
        if calibrate_to_target and target is not None and not within(ratio, target, tolerance):
            own_ratio = ratio
            final, ratio = calibrate(gated, scores, target, kind, round_to=r)
            if r > 1:
                unrounded = calibrate(gated, scores, target, kind)[0]
            self.report["calibrated"] = {"target": target, "ratio": ratio, "kind": kind,
                                         "kept": int(sum(int(m.sum()) for m in final))}
            logger.info("%s: own rule gave %s ratio %.4f, calibrated to %.4f (target %.4f)", self.name, kind,
                        own_ratio, ratio, target)
        apply_masks_(gated, final)
        self.report.update(decision_report(gated, own, final), ratio=ratio)
        if kind == "latency":
            lat = self.report.setdefault("latency", {})
            lat.update(self.latency_report(gated))
            logger.info("%s: latency predicted %.3f ms, measured %.3f ms after collapse (target %s ms)", self.name,
                        lat["predicted_ms"], lat["measured_ms"], lat.get("target_ms"))
        if r > 1:
            self.report["rounding"] = rounding_report(gated, unrounded, final, r, kind)
            logger.info("%s: widths rounded to multiples of %d moved the %s ratio by %+.4f", self.name, r, kind,
                        self.report["rounding"]["shift"])
        return ratio


def finetune_epochs(requested: int | None, num_epochs: int, phase: str, share: float = 0.0) -> int:
    """Epochs of fixed-mask fine-tuning at the end of a run; None: ``share`` of the run, at least 1 when the run
    has ≥ 3 epochs (0 below).

    Raises:
        ConfigError: the fine-tune would leave no ``phase`` epoch.
    """
    ft = requested if requested is not None else (max(1, int(num_epochs * share)) if num_epochs >= 3 else 0)
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
    from prunekit.collapse import fold_into_

    modules = dict(gated.model.named_modules())
    for name in gated.gate_points:
        fold_into_(modules[name], gated.point_mask(name, values), name, inplace=True)
