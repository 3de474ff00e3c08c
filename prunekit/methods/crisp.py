"""CRISP-style continuous relaxation with augmentation, pruning and collapse (METHODS.md section 1).

A ``crisp`` gate g = sigmoid(a·s) (a = 5, s initialised to +1; g/max(g) on the stem, stride-2 and
residual-sum groups) sits after every BatchNorm of every prunable group. The loss is

    L = CE + k_struct · |F̃/F₀ − t| + k_pb(epoch) · sqrt(mean_c G(s_c)²),   G(s) = exp(−(s/(2σ²))²)

with F̃ the relaxed MACs (``target_kind="macs"``) or parameters (``"params"``) of ``prunekit.cost`` and t the
target ratio. k_acc of the paper is fixed to 1 here (the loop owns the task loss; scale the two other
weights instead).

**How the relaxation itself reaches the target** (defaults chosen by measurement, METHODS.md "decision rule").
The structure term alone is met by *uniformly* shrunk gates: every g ≈ 0.7 gives F̃/F₀ ≈ 0.5 while every gate
still sits above the threshold, so the mask would be chosen by the final calibration, not by CRISP
(measured on main before this change: own rule 1.0 of dense MACs, 15.8 % of the decisions flipped by
calibration). Two defaults fix that:

* ``anneal_a=True`` (the paper's alternative to the prune basis): the scale a ramps cubically from ``a`` = 5 to
  ``a_max`` = 150, per step, from ``pb_start`` (default: half-way through the search) to the end of the search.
  As sigmoid(a·s) sharpens, F̃ becomes the cost of the thresholded mask, and the structure term has to switch
  gates off to keep F̃ on target; the task gradient decides which (tests/test_planted.py). With
  ``anneal_a=False`` the prune basis k_pb(epoch)·sqrt(mean G(s)²) ramps instead (G is wide at σ = 1: at short
  budgets it does not polarise the gates).
* ``gate_lr=None``: Adam moves a logit ≈ lr per step, so the gate lr is 4 / (search steps): a gate can travel
  from s = 1 to well below the threshold's s ≈ −0.2 and back within the search, whatever its length; gates
  keep a constant lr (the loop's warm-up and decay would cut the travel). The former fixed 1e-2 let gates
  move 0.5 logit units in a 50-step search.

Measured (ResNet-20, 2,000 Fashion-MNIST images, 6 epochs, target 0.5): own rule 0.5002 of dense MACs, 0
calibration flips, every gate within 0.05 of 0 or 1 at the end of the search, 76.2 % test (71.1 % before,
where calibration chose the mask). ``prunekit bench effects --preset full`` checks it on every release.

Schedule, in epochs: ``search_epochs`` of search, then ``rounds`` rounds of (prune at ``threshold`` →
``round_epochs`` of retraining with the search loss), then the final prune and ``finetune_epochs`` with
k_struct = k_pb = 0 (the gates keep training on the task loss; their masks are fixed). The final prune keeps
what the threshold decides; only when that misses the target by more than ``tolerance`` × target does a
**calibration** (one global ranking of the gate values, ``prunekit.methods._gated.calibrate``) correct it, and
the report says how much it changed (``relaxation_macs_ratio``, ``calibration_flips``).

Threshold: 0.25, the paper's typical value (the reference CLI's 0.025 assumes hundreds of epochs).

``target_latency`` (ms at ``latency_batch`` on this CPU) replaces the MACs target: F̃/F₀ becomes the relaxed latency
÷ dense latency of the per-layer latency table (``prunekit.latency_table``) and t = target_latency ÷ dense latency;
the report's ``latency`` says what the table predicts and what the collapsed network measures.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.gates.relaxations import prune_basis
from prunekit.methods._gated import (
    LATENCY_METRIC_HELP,
    TARGET_KINDS,
    GateConfig,
    GateMethod,
    LatencyConfig,
    cost_ratio,
    cubic_ramp,
    require_gated,
)
from prunekit.methods.base import option, register_method

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CrispSchedule:
    """Resolved epoch plan (0-based epoch indices).

    Attributes:
        search_epochs, rounds, round_epochs, finetune_epochs: the phase lengths.
        prune_epochs: epochs at whose end the gates are pruned at the threshold (the last one is final).
        finetune_start: first fine-tune epoch (== epochs when there is no fine-tune).
    """

    search_epochs: int
    rounds: int
    round_epochs: int
    finetune_epochs: int
    prune_epochs: tuple[int, ...]
    finetune_start: int


# A retrain round after a one-epoch search hurts: on the default experiment (ResNet-20 / shapes, 3 epochs, target
# 0.5, 2 threads, 2026-12-02) one round left a 1-epoch search inside the lr warm-up and the net at 37.6 % test
# (46.9 % with the per-image loader); no round (2 search epochs) gave 68.2 %, own rule 0.501, 0 flips.
MIN_SEARCH_FOR_ROUND = 2


def crisp_schedule(epochs: int, search_epochs: int | None = None, rounds: int | None = None, round_epochs: int = 1,
                   finetune_epochs: int | None = None) -> CrispSchedule:
    """Split ``epochs`` into search → rounds × (prune → retrain) → final prune → fine-tune.

    Defaults: fine-tune a third of the run (0 below 3 epochs), search what is left after the rounds; ``rounds``
    None is one round when the search keeps at least :data:`MIN_SEARCH_FOR_ROUND` epochs, else none.

    Raises:
        ConfigError: the phases need more epochs than the run has (names the options).
    """
    if rounds is None:
        try:
            one = crisp_schedule(epochs, search_epochs, 1, round_epochs, finetune_epochs)
        except ConfigError:
            one = None
        if one is not None and (search_epochs is not None or one.search_epochs >= MIN_SEARCH_FOR_ROUND):
            return one
        return crisp_schedule(epochs, search_epochs, 0, round_epochs, finetune_epochs)
    if rounds < 0 or round_epochs < 1:
        raise ConfigError(f"rounds must be >= 0 and round_epochs >= 1, got rounds={rounds}, round_epochs={round_epochs}")
    if search_epochs is not None and search_epochs < 1:
        raise ConfigError(f"search_epochs must be >= 1, got {search_epochs}")
    if finetune_epochs is not None and finetune_epochs < 0:
        raise ConfigError(f"finetune_epochs must be >= 0, got {finetune_epochs}")
    ft = finetune_epochs
    if search_epochs is None:
        if ft is None:
            ft = max(1, epochs // 3) if epochs >= 3 else 0
        search = epochs - rounds * round_epochs - ft
    else:
        search = search_epochs
        if ft is None:
            ft = max(epochs - search - rounds * round_epochs, 0)
    need = search + rounds * round_epochs + ft
    if search < 1 or need > epochs:
        raise ConfigError(
            f"rounds={rounds} x round_epochs={round_epochs} with search_epochs={search_epochs} and "
            f"finetune_epochs={finetune_epochs} need {max(need, rounds * round_epochs + ft + 1)} epochs, "
            f"but the run has epochs={epochs}"
        )
    ft += epochs - need  # spare epochs fine-tune
    prune = tuple(search - 1 + r * round_epochs for r in range(rounds + 1))
    return CrispSchedule(search, rounds, round_epochs, ft, prune, prune[-1] + 1)


def structure_loss(ratio: torch.Tensor, target: float) -> torch.Tensor:
    """|F̃/F₀ − t|: the CRISP structure term for a relaxed cost ratio."""
    return (ratio - target).abs()


def prune_basis_loss(logits: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """sqrt(mean_c G(s_c)²) over every logit (flattened)."""
    return torch.sqrt((prune_basis(logits, sigma) ** 2).mean())


@register_method
class CrispMethod(GateMethod):
    """CRISP: sigmoid gates after BN, structure loss to a cost target, prune basis, prune rounds, collapse."""

    name = "crisp"
    gate_kind = "crisp"

    summary = "CRISP: sigmoid gates after BatchNorm, a structure loss to the MACs target, gates thresholded and collapsed"
    paper = "A Generalization of Continuous Relaxation in Structured Pruning (2023)"
    target_option = "target_macs"
    loss_help = {
        "struct": "the structure term pulls the relaxed MACs towards the target",
        "prune_basis": "the prune basis pushes undecided gates to clearly on or off",
    }
    metric_help = LATENCY_METRIC_HELP
    decision_rule = "keep a channel whose gate sigmoid(a·s) is above the threshold (0.25) when the search ends"
    optimizer_help = "the run's optimizer for the weights; Adam at a constant lr for the gate logits"
    bench_variants = ({},)

    @dataclasses.dataclass(frozen=True)
    class Config(LatencyConfig, GateConfig):
        target_macs: float = option(0.5, "the MACs to keep when target_kind is macs (and target_latency is None)", unit="fraction of dense MACs",
                                    low=0, high=1, low_open=True)
        target_kind: str = option("macs", "what the target counts", choices=TARGET_KINDS)
        target_params: float | None = option(None, "the parameters to keep when target_kind is params",
                                             unit="fraction of dense parameters", low=0, high=1, low_open=True)
        k_struct: float = option(2.0, "weight of the structure term |F̃/F₀ − t|", low=0)
        k_pb: float = option(1.0, "maximum weight of the prune-basis term (anneal_a=False)", low=0)
        sigma: float = option(1.0, "width σ of the prune basis G(s)", low=0, low_open=True)
        pb_start: int | None = option(None, "epoch where the ramp of a (or k_pb) starts; None: half-way through the "
                                      "search", unit="epochs", low=0)
        a: float = option(5.0, "scale of the gate logit at the start, g = sigmoid(a·s)", low=0, low_open=True)
        anneal_a: bool = option(True, "ramp a from a to a_max over the second half of the search (False: the prune "
                                "basis ramps instead)")
        a_max: float = option(150.0, "scale of the gate logit at the end of the search", low=0, low_open=True)
        init: float = option(1.0, "initial gate logit s (every gate starts open)")
        threshold: float = option(0.25, "a channel whose gate is below this at a prune is removed", low=0, high=1,
                                  low_open=True, high_open=True, paper="0.25 (the reference CLI uses 0.025)")
        search_epochs: int | None = option(None, "epochs of gate search; None: what the rounds and fine-tune leave",
                                           unit="epochs", low=1)
        rounds: int | None = option(None, "prune-and-retrain rounds after the search; None: 1 when that leaves a "
                                    "search of at least 2 epochs, else 0", low=0, paper="1")
        round_epochs: int = option(1, "epochs of retraining per round", unit="epochs", low=1)
        finetune_epochs: int | None = option(None, "epochs of fine-tuning with fixed masks; None: a third of the run",
                                             unit="epochs", low=0)

        def __post_init__(self) -> None:
            if self.target_kind == "params" and self.target_params is None:
                raise ConfigError("target_params must be set when target_kind is 'params', got None")
            crisp_schedule(10**6, self.search_epochs, self.rounds, self.round_epochs, self.finetune_epochs)

    def decision_threshold(self) -> float:
        return float(self.config.threshold)

    def __init__(self, config: Any = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.a = float(self.config.a)
        self.k_pb_now = 0.0
        self.phase = "search"
        self.pruned = 0  # prune events done
        self.masks_fixed = False
        self.schedule: CrispSchedule | None = None
        self.t = 0.0  # training time in epochs at the last ramp update (resume-safe)

    @property
    def target(self) -> float:
        """The target ratio of the budget's cost (:meth:`budget_kind`): latency, MACs or params ÷ dense."""
        c = self.config
        return float(self.budget(c.target_kind, c.target_params if c.target_kind == "params" else c.target_macs)[1])

    @property
    def budget_kind(self) -> str:
        """What the structure term counts: ``latency`` with a target_latency, else ``target_kind``."""
        return self.budget(self.config.target_kind)[0]

    def gate_options(self) -> dict[str, Any]:
        return {"a": self.config.a, "init": self.config.init}

    def temperature(self) -> float:
        return self.a

    def search_epochs(self, epochs: int) -> int:
        c = self.config
        return crisp_schedule(epochs, c.search_epochs, c.rounds, c.round_epochs, c.finetune_epochs).search_epochs

    # -- schedules ------------------------------------------------------------------------------
    def on_epoch_start(self, model: nn.Module, epoch: int, num_epochs: int) -> None:
        c = self.config
        self.schedule = crisp_schedule(num_epochs, c.search_epochs, c.rounds, c.round_epochs, c.finetune_epochs)
        self.phase = "finetune" if epoch >= self.schedule.finetune_start else "search"
        self._ramp(model, max(float(epoch), self.t))  # a run resumed mid-epoch continues where it stopped

    def after_step(self, model: nn.Module, step: int, epoch: int) -> None:
        if self.steps_per_epoch and self.phase == "search" and not self.masks_fixed:
            self._ramp(model, (step + 1) / self.steps_per_epoch)

    def _ramp(self, model: nn.Module, t: float) -> None:
        """Set a (annealed) or k_pb at ``t`` epochs: a cubic ramp from ``pb_start`` to the end of the search."""
        self.t = t
        c, s = self.config, self.schedule
        start = c.pb_start if c.pb_start is not None else s.search_epochs // 2
        ramp = cubic_ramp(t, start, s.search_epochs)
        if c.anneal_a:
            self.a = c.a + (c.a_max - c.a) * ramp
            for g in require_gated(model, self.name).gates:
                g.a.fill_(self.a)
            self.k_pb_now = 0.0
        else:
            self.k_pb_now = c.k_pb * ramp

    def on_epoch_end(self, model: nn.Module, epoch: int, num_epochs: int) -> None:
        s = self.schedule
        if s is None or epoch not in s.prune_epochs or self.masks_fixed:
            return
        gated = require_gated(model, self.name)
        if epoch == s.prune_epochs[-1]:
            self.final_prune(gated)
        else:
            kept = gated.prune_(self.config.threshold)
            self.pruned += 1
            logger.info("crisp round %d: kept %d structures, hard MACs ratio %.4f", self.pruned, kept,
                        float(cost_ratio(gated, "hard")))

    def regularizer(self, model: nn.Module, step: int, epoch: int) -> dict[str, torch.Tensor]:
        if self.phase == "finetune" or self.masks_fixed:
            return {}
        gated = model
        c = self.config
        terms = {"struct": c.k_struct * structure_loss(cost_ratio(gated, "expected", self.budget_kind), self.target)}
        if self.k_pb_now > 0:
            kept = [g.logit[g.keep] for g in gated.gates]
            terms["prune_basis"] = self.k_pb_now * prune_basis_loss(torch.cat(kept), c.sigma)
        return terms

    # -- pruning --------------------------------------------------------------------------------
    def decision_masks(self, model: nn.Module) -> list[torch.Tensor]:
        """CRISP's own rule: keep a structure whose gate is above ``threshold`` (critical groups keep one)."""
        return [h.gate.decision(self.config.threshold) for h in model.groups]

    @torch.no_grad()
    def final_prune(self, gated: nn.Module) -> float:
        """Prune at the threshold, then calibrate to the target only if it missed; returns the hard ratio."""
        c = self.config
        scores = [h.gate.deterministic().detach() for h in gated.groups]
        ratio = self.fix_decision(gated, scores, self.target, self.budget_kind, c.calibrate, c.tolerance)
        self.pruned += 1
        self.masks_fixed = True
        self.phase = "finetune"
        logger.info("crisp final prune: hard %s ratio %.4f (target %.4f), own rule %.4f, calibration flips %.3f",
                    self.budget_kind, ratio, self.target, self.report["relaxation_macs_ratio"],
                    self.report["calibration_flips"])
        return ratio

    def finalize(self, model: nn.Module) -> nn.Module:
        """Make the final prune if the schedule has not yet (idempotent: masks fixed once)."""
        gated = require_gated(model, self.name)
        if not self.masks_fixed:
            self.final_prune(gated)
        return gated

    # -- resume ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"a": self.a, "k_pb": self.k_pb_now, "pruned": self.pruned, "masks_fixed": self.masks_fixed, "t": self.t,
                "phase": self.phase}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.a = float(state.get("a", self.a))
        self.t = float(state.get("t", self.t))
        self.k_pb_now = float(state.get("k_pb", self.k_pb_now))
        self.pruned = int(state.get("pruned", self.pruned))
        self.masks_fixed = bool(state.get("masks_fixed", state.get("final_done", self.masks_fixed)))
        self.phase = str(state.get("phase", self.phase))
