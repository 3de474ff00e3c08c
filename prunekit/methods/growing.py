"""Growing efficient networks by structured continuous sparsification (Yuan, Savarese, Maire 2021;
METHODS.md section 5).

Every prunable group gets a ``bernoulli`` gate: one logit s per filter, mask σ(βs) ⊙ q with
q ~ Bernoulli(σ(βs)) resampled every step, a temperature β per unit. Residual-block gates are used when
``prunekit.augment`` offers them (``block_gate=`` keyword; the model then has ``block_gates``); otherwise
only filters are grown and pruned.

* **Seed architecture**: in every group a random ``seed_fraction`` of the units starts on
  (s = ``init_on``), the rest off (s = ``init_off`` < 0); a unit whose logit rises above 0 joins.
* **Budget-aware L1** *(reconstructed)*: ``lambda_channel · b · mean σ(βs)`` over filters plus
  ``lambda_layer · b · mean σ(βs)`` over blocks, with b = clamp((F̃/F₀ − t')/t', −1, 1) from the relaxed
  MACs (detached): above the budget the masks are pushed down, below it up, and the task gradient decides
  which units move first.
* **Set-point** (prunekit's, so that the own rule s > 0 meets the target, not a calibration): the relaxed cost
  counts off units at σ(βs) > 0 and the units the β schedule has locked cannot move, so a relaxed budget met
  exactly leaves the rule off target. The budget's set-point t' = t·(1 + I) moves with I += ``setpoint_rate`` ·
  (t − r_own)/t per search; the direction of every step still comes from the relaxation (gentle, task-driven),
  only where it stops comes from the rule. Measured on ResNet-20 / 6,000 Fashion-MNIST / 8 epochs, target 0.5
  (``bench effects`` setup, one thread, 2026-12-02; dense 87.8 %):

  ============================== ========= ======= ======== ===========
  variant                        own rule  flips   test     blocks 4 →
  ============================== ========= ======= ======== ===========
  λ_channel 1, no set-point      0.298     6.0 %   86.33 %  9
  λ_channel 3, no set-point      0.424     3.1 %   86.25 %  9
  λ_channel 10, no set-point     0.424     1.6 %   84.38 %  4 (none)
  **λ_channel 3, rate 2**        **0.531** 1.1 %   87.30 %  9
  λ_channel 3, rate 5            0.577     2.5 %   84.58 %  9
  ============================== ========= ======= ======== ===========

  Reading b from the own rule instead (``_gated.BudgetController``, as L0 does) was measured and is worse: with
  b ≥ 0 nothing grows (own rule 0.03–0.04: the β schedule locks the off units before the task gradient lifts
  them), with b ∈ [−1, 1] and λ_channel 30–100 every unit moves together (own rule 0.45–0.56 but 81–85 %
  accuracy, and the planted test of ``tests/test_planted.py`` keeps seeded noise channels on).
* **β schedule** *(reconstructed)*: every ``beta_interval`` (T) steps each unit's β becomes
  min(β_max, β₀ · γ^{(n/T)^p}), n the number of steps the unit was sampled (q = 1).
* **Training MACs**: after every step the cost model is evaluated at the sampled q (skipped units cost
  nothing); ``macs_ratio/train`` is the running mean over the run — the training compute actually spent
  relative to dense training — next to the inference ``macs_ratio/hard``.

The end: keep units with s > 0. The paper has no fine-tune stage; with short schedules the budget term
has not settled by the end, so by default the last ``finetune_epochs`` (1) fix the masks first:
if the hard MACs miss the target by more than ``tolerance`` × t, one global ranking of the logits picks
the kept units (``_gated.calibrate``); then β is set to ``FROZEN_BETA`` (σ(βs) is a step, q ≡ 1 on kept
units) and the logits stop training, so training and evaluation compute the same masked network.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from typing import Any

import torch
from torch import nn

from prunekit.methods._gated import (
    GateConfig,
    GateMethod,
    LatencyConfig,
    cost_ratio,
    finetune_epochs,
    freeze_gates_,
    mask_ratio,
    require_gated,
)
from prunekit.methods.base import option, register_method

logger = logging.getLogger(__name__)

FROZEN_BETA = 1e4  # σ(βs) with |s| ≥ 0.01 is exactly 0 or 1 in float32
_MIN_KEPT_LOGIT = 0.01


def beta_schedule(n: torch.Tensor, beta0: float = 1.0, gamma: float = 2.0, interval: int = 20, p: float = 1.0,
                  beta_max: float = 100.0) -> torch.Tensor:
    """β = min(β_max, β₀ · γ^{(n/T)^p}) for sample counts ``n`` (any shape)."""
    n = torch.as_tensor(n, dtype=torch.float32)
    return torch.clamp(beta0 * torch.pow(torch.tensor(float(gamma)), (n / interval) ** p), max=beta_max)


def _seed_on(gate: nn.Module, on: torch.Tensor, init_on: float, init_off: float) -> None:
    """Every unit of ``gate`` off (logit ``init_off``) except the indices ``on`` (logit ``init_on``)."""
    gate.logit.fill_(init_off)
    gate.logit[on.to(gate.logit.device)] = init_on


def _block_gates(model: nn.Module) -> list[nn.Module]:
    bg = getattr(model, "block_gates", None)
    return list(bg) if bg is not None else []


@register_method
class GrowingMethod(GateMethod):
    """Grow from a seed architecture and prune with Bernoulli-sampled sigmoid masks and per-unit β."""

    name = "growing"
    # training samples the masks (so BN statistics describe sampled networks); the fixed-mask fine-tune is short
    recalibrate_bn_after_finalize = True
    gate_kind = "bernoulli"

    summary = ("growing: start from a seed of filters and blocks, Bernoulli-sampled sigmoid masks grow units the "
               "task needs and a budget-aware L1 prunes")
    paper = "Growing Efficient Deep Networks by Structured Continuous Sparsification (ICLR 2021)"
    target_option = "target_macs"
    loss_help = {
        "l1_channel": "the L1 terms shrink the masks of channels the budget cannot afford",
        "l1_layer": "the L1 term on block gates switches off residual blocks the budget cannot afford",
    }
    metric_help = {"macs_ratio/train": "MACs of the sampled networks trained so far, relative to dense training"}
    decision_rule = "keep a filter (or residual block) whose mask logit s is above 0"
    optimizer_help = "the run's optimizer for the weights; Adam at a constant lr for the mask logits"

    @dataclasses.dataclass(frozen=True)
    class Config(LatencyConfig, GateConfig):
        target_macs: float = option(0.5, "the MACs to keep", unit="fraction of dense MACs", low=0, high=1,
                                    low_open=True)
        lambda_channel: float = option(3.0, "weight of the budget-aware L1 on filter masks", low=0)
        setpoint_rate: float = option(2.0, "the budget's set-point t' = t·(1 + I), I += rate · (t − own rule) / t "
                                      "per search: moves the relaxed budget until the own rule s > 0 meets the "
                                      "target (0: the relaxed budget alone)", low=0)
        lambda_layer: float = option(1.0, "weight of the budget-aware L1 on block masks", low=0)
        seed_fraction: float = option(0.25, "share of filters on at the start, per group", low=0, high=1,
                                      low_open=True)
        seed_blocks: float = option(0.5, "share of residual blocks on at the start (the others can join)", low=0,
                                    high=1)
        init_on: float = option(1.0, "initial logit of a seeded unit", low=0, low_open=True)
        init_off: float = option(-0.5, "initial logit of a unit outside the seed", high=0, high_open=True)
        beta0: float = option(1.0, "initial temperature β of every unit", low=0, low_open=True)
        beta_max: float = option(100.0, "largest β", low=0, low_open=True)
        beta_gamma: float = option(2.0, "β = β₀ · γ^((n/T)^p), n: the times the unit was sampled", low=0,
                                   low_open=True)
        beta_power: float = option(1.0, "p of the β schedule", low=0, low_open=True)
        beta_interval: int = option(20, "T: steps between β updates", unit="steps", low=1)
        blocks: bool = option(True, "gate residual blocks too, when augment supports it")
        finetune_epochs: int | None = option(None, "epochs with fixed masks at the end; None: 1 when the run has "
                                             ">= 3 epochs", unit="epochs", low=0, paper="0 (no fine-tune)")
        seed: int = option(0, "random seed of the seed architecture")


    def __init__(self, config: Any = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.masks_fixed = False
        self.train_macs_sum = 0.0
        self.train_steps = 0
        self._counts: list[torch.Tensor] | None = None
        self.setpoint = 0.0  # I of the set-point t' = t·(1 + I)

    def gate_options(self) -> dict[str, Any]:
        return {"init": self.config.init_off, "beta0": self.config.beta0}

    def augment_options(self) -> dict[str, Any]:
        from prunekit.augment import augment

        if self.config.blocks and "block_gate" in inspect.signature(augment).parameters:
            return {"block_gate": "bernoulli"}
        return {}

    def prepare(self, model: nn.Module, example_input: torch.Tensor) -> nn.Module:
        gated = super().prepare(model, example_input)  # gates, block gates, a latency target's table
        c = self.config
        gen = torch.Generator().manual_seed(c.seed)
        with torch.no_grad():
            for gate in [h.gate for h in gated.groups]:
                k = max(1, round(c.seed_fraction * gate.size))
                _seed_on(gate, torch.randperm(gate.size, generator=gen)[:k], c.init_on, c.init_off)
            # a block gate is one unit, so a per-gate round(fraction · 1) would switch every block on: the block
            # seed is drawn across all blocks instead
            blocks = _block_gates(gated)
            on = set(torch.randperm(len(blocks), generator=gen)[:round(c.seed_blocks * len(blocks))].tolist())
            for i, gate in enumerate(blocks):
                _seed_on(gate, torch.tensor([0] if i in on else [], dtype=torch.long), c.init_on, c.init_off)
        self.report.update(blocks=len(blocks), blocks_seed=sorted(on))
        return gated

    def decision_masks(self, model: nn.Module) -> list[torch.Tensor]:
        """Growing's own rule: keep a filter whose logit is above 0 (a block whose logit is ≤ 0 closes its branch:
        ``mask_ratio`` applies the block gates' hard masks on top)."""
        return [h.gate.keep & (h.gate.deterministic().detach() > 0) for h in model.groups]

    def _units(self, model: nn.Module) -> list[nn.Module]:
        return [h.gate for h in model.groups] + _block_gates(model)

    def temperature(self) -> float | None:
        return self._mean_beta

    _mean_beta: float | None = None

    # -- loss and schedules ------------------------------------------------------------------------
    def regularizer(self, model: nn.Module, step: int, epoch: int) -> dict[str, torch.Tensor]:
        if self.masks_fixed:
            return {}
        c = self.config
        kind, target = self.budget("macs", c.target_macs)
        ratio = float(cost_ratio(model, "expected", kind).detach())
        steps = self.search_steps()
        if model.training and c.setpoint_rate > 0 and steps:
            own = mask_ratio(model, self.decision_masks(model), kind)
            self.setpoint = max(-0.5, min(1.0, self.setpoint + c.setpoint_rate * (target - own) / target / steps))
        t = target * (1.0 + self.setpoint)
        b = max(-1.0, min(1.0, (ratio - t) / t))
        chan = torch.cat([h.gate.expected() for h in model.groups]).mean()
        terms = {"l1_channel": c.lambda_channel * b * chan}
        blocks = _block_gates(model)
        if blocks and c.lambda_layer > 0:
            terms["l1_layer"] = c.lambda_layer * b * torch.cat([g.expected() for g in blocks]).mean()
        return terms

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int, epoch: int) -> None:
        from prunekit.cost import cost_model

        cm = cost_model(model)
        q = [h.gate.last_sample.float() * h.gate.keep.float() for h in model.groups]
        self.train_macs_sum += float(cm.macs(q)) / cm.dense_macs
        self.train_steps += 1
        if self.masks_fixed:
            return
        units = self._units(model)
        if self._counts is None or len(self._counts) != len(units):
            self._counts = [torch.zeros(g.size) for g in units]
        self._counts = [n.to(g.last_sample.device) for n, g in zip(self._counts, units)]
        for n, g in zip(self._counts, units):
            n += g.last_sample
        if self.train_steps % self.config.beta_interval == 0:
            c = self.config
            for n, g in zip(self._counts, units):
                g.beta.copy_(beta_schedule(n, c.beta0, c.beta_gamma, c.beta_interval, c.beta_power, c.beta_max))
        self._mean_beta = float(torch.cat([g.beta for g in units]).mean())

    def on_epoch_end(self, model: nn.Module, epoch: int, num_epochs: int) -> None:
        ft = finetune_epochs(self.config.finetune_epochs, num_epochs, "growing")
        if ft and epoch == num_epochs - ft - 1 and not self.masks_fixed:
            self.fix_masks(require_gated(model, self.name))

    @torch.no_grad()
    def fix_masks(self, gated: nn.Module) -> float:
        """Keep s > 0 (calibrated to the target when it misses), then freeze β and the logits."""
        c = self.config
        scores = [h.gate.logit.detach() for h in gated.groups]
        for g in _block_gates(gated):  # a block's own rule is final: calibration ranks filters only, given blocks
            g.set_mask(g.deterministic().detach() > 0)
        self.report["blocks_final"] = [i for i, g in enumerate(_block_gates(gated)) if bool(g.hard_mask().all())]
        kind, target = self.budget("macs", c.target_macs)
        ratio = self.fix_decision(gated, scores, target, kind, c.calibrate, c.tolerance)
        for g in self._units(gated):
            g.logit.copy_(torch.where(g.keep, g.logit.clamp_min(_MIN_KEPT_LOGIT), g.logit.clamp_max(-_MIN_KEPT_LOGIT)))
            g.beta.fill_(FROZEN_BETA)
        freeze_gates_(gated)
        self.masks_fixed = True
        self._mean_beta = FROZEN_BETA
        self.report.update(train_macs_ratio=self.train_macs_ratio, budget_setpoint=target * (1 + self.setpoint))
        logger.info("growing: masks fixed at hard %s ratio %.4f (target %.4f); training MACs so far %.4f",
                    kind, ratio, target, self.train_macs_ratio)
        return ratio

    @property
    def train_macs_ratio(self) -> float:
        return self.train_macs_sum / max(self.train_steps, 1)

    def step_metrics(self, model: nn.Module) -> dict[str, float]:
        out = super().step_metrics(model)
        if self.train_steps:
            out["macs_ratio/train"] = self.train_macs_ratio
        return out

    def search_epochs(self, epochs: int) -> int:
        return epochs - finetune_epochs(self.config.finetune_epochs, epochs, "growing")

    def finalize(self, model: nn.Module) -> nn.Module:
        gated = require_gated(model, self.name)
        if not self.masks_fixed:
            self.fix_masks(gated)
        return gated

    # -- resume ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"masks_fixed": self.masks_fixed, "train_macs_sum": self.train_macs_sum, "train_steps": self.train_steps,
                "setpoint": self.setpoint,
                "counts": [n.cpu() for n in self._counts] if self._counts is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.masks_fixed = bool(state.get("masks_fixed", state.get("frozen", self.masks_fixed)))
        self.train_macs_sum = float(state.get("train_macs_sum", self.train_macs_sum))
        self.train_steps = int(state.get("train_steps", self.train_steps))
        self.setpoint = float(state.get("setpoint", self.setpoint))
        counts = state.get("counts")
        self._counts = [torch.as_tensor(n) for n in counts] if counts is not None else None
