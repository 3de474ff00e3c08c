"""The baselines users compare against: L1-norm filter pruning and network slimming.

Both prune with fixed ``mask`` gates (a registered gate kind with no parameters: value 1, or 0 where
its keep mask is off), so the result collapses exactly like every gated method.

* ``l1`` (Li et al. 2017, *Pruning Filters for Efficient ConvNets*): train (or start from pretrained
  weights), rank filters by the L1 norm of their weights — per coupled group, the sum over the group's
  producing convs/linears — and prune to a MACs target at ``prune_epoch``, then fine-tune. Li et al.
  choose per-layer ratios by sensitivity analysis; here one global ranking of the norms divided by their
  group's mean picks the filters (the per-group normalisation keeps wide and narrow layers comparable),
  with the number kept chosen so the hard MACs meet the target. ``mode="iterative"`` prunes in ``steps``
  stages with geometric intermediate targets.
* ``slimming`` (Liu et al. 2017, *Learning Efficient Convolutional Networks through Network Slimming*):
  L1 penalty λ Σ|γ| (λ = 1e-4) on every BatchNorm scale during training, then one global threshold on
  |γ| (mean over the group's BatchNorms) at ``prune_epoch``, chosen to meet the MACs target, then
  fine-tune without the penalty.

Schedule: by default the last half of the run fine-tunes (``finetune_epochs``), pruning happens at the
end of the epoch before it; ``prune_epoch`` (0-based) overrides.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.gates.base import Gate, register_gate
from prunekit.graph import BN_TYPES, CONVT_TYPES
from prunekit.methods._gated import (
    GateMethod,
    WidthConfig,
    apply_masks_,
    calibrate,
    mask_ratio,
    require_gated,
    round_masks,
    rounding_report,
)
from prunekit.methods.base import option, register_method

logger = logging.getLogger(__name__)

MODES = ("oneshot", "iterative")


@register_gate("mask")
class MaskGate(Gate):
    """A constant gate: 1 on kept structures, 0 on removed ones (set by ``set_mask``); nothing to train."""

    def relaxed(self) -> torch.Tensor:
        return torch.ones(self.size, device=self.keep.device)

    def deterministic(self) -> torch.Tensor:
        return self.relaxed()


def prune_plan(epochs: int, mode: str = "oneshot", steps: int = 3, prune_epoch: int | None = None,
               finetune_epochs: int | None = None) -> list[int]:
    """0-based epochs at whose end pruning happens (the last one reaches the target).

    Raises:
        ConfigError: ``prune_epoch`` or ``finetune_epochs`` outside the run (names the option).
    """
    if prune_epoch is None:
        ft = max(1, epochs // 2) if finetune_epochs is None else finetune_epochs
        if ft >= epochs and epochs > 0:
            raise ConfigError(f"finetune_epochs={ft} leaves no epoch before pruning in a run of epochs={epochs}")
        prune_epoch = max(epochs - ft - 1, 0)
    elif prune_epoch >= epochs:
        raise ConfigError(f"prune_epoch={prune_epoch} is not an epoch of a run of epochs={epochs} (0-based)")
    if mode == "oneshot":
        return [prune_epoch]
    return sorted({int(round((prune_epoch + 1) * (i + 1) / steps)) - 1 for i in range(steps)} - {-1} | {prune_epoch})


@torch.no_grad()
def filter_norms(gated: nn.Module, p: float = 1.0) -> list[torch.Tensor]:
    """Per group, the ℓp norm of each structure's filters summed over the group's producing layers [size]."""
    scores = []
    for h in gated.groups:
        s = torch.zeros(h.size)
        for m in h.members:
            if m.dim != "out" or isinstance(m.module, BN_TYPES) or not hasattr(m.module, "weight"):
                continue
            w = m.module.weight.detach().float()
            if isinstance(m.module, CONVT_TYPES):
                w = w.transpose(0, 1)
            w = w[m.idxs.to(w.device)].flatten(1).abs().pow(p).sum(1).pow(1.0 / p).cpu()
            s.index_add_(0, m.root_idxs.cpu(), w)
        scores.append(s)
    return scores


@torch.no_grad()
def bn_scales(gated: nn.Module) -> list[torch.Tensor]:
    """Per group, mean |γ| over the group's BatchNorms [size] (filter norms where it has none)."""
    norms = None
    out = []
    for i, h in enumerate(gated.groups):
        s, n = torch.zeros(h.size), torch.zeros(h.size)
        for m in h.members:
            if isinstance(m.module, BN_TYPES) and m.module.affine:
                s.index_add_(0, m.root_idxs.cpu(), m.module.weight.detach().abs().float()[m.idxs.to(m.module.weight.device)].cpu())
                n.index_add_(0, m.root_idxs.cpu(), torch.ones(len(m.idxs)))
        if not bool((n > 0).all()):
            norms = norms if norms is not None else filter_norms(gated)
            s, n = norms[i] / norms[i].mean().clamp_min(1e-12), torch.ones(h.size)
        out.append(s / n)
    return out


@dataclasses.dataclass(frozen=True)
class PruneSchedule(WidthConfig):
    """When the post-training baselines prune (their Configs inherit these options)."""

    mode: str = option("oneshot", "prune once, or in equal stages up to the prune epoch", choices=MODES)
    steps: int = option(3, "pruning stages when iterative", low=1)
    prune_epoch: int | None = option(None, "0-based epoch at whose end the (last) prune happens; None: before the "
                                     "fine-tune", unit="epochs", low=0)
    finetune_epochs: int | None = option(None, "epochs of fine-tuning after the prune; None: half of the run",
                                         unit="epochs", low=0)


class _ScheduledPrune(GateMethod):
    """Dense training with fixed mask gates, pruning to the target at the scheduled epochs."""

    gate_kind = "mask"

    def __init__(self, config: Any = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.done = 0  # prune events made
        self.masks_fixed = False
        self.prune_at: list[int] | None = None  # epochs at whose end a prune event happens

    def scores(self, gated: nn.Module) -> list[torch.Tensor]:
        raise NotImplementedError

    def on_epoch_start(self, model: nn.Module, epoch: int, num_epochs: int) -> None:
        c = self.config
        self.prune_at = prune_plan(num_epochs, c.mode, c.steps, c.prune_epoch, c.finetune_epochs)

    def on_epoch_end(self, model: nn.Module, epoch: int, num_epochs: int) -> None:
        if self.prune_at is None or epoch not in self.prune_at or self.masks_fixed:
            return
        i = self.prune_at.index(epoch)
        target = self.config.target_macs ** ((i + 1) / len(self.prune_at))
        self.prune(require_gated(model, self.name), target, final=i == len(self.prune_at) - 1)

    @torch.no_grad()
    def prune(self, gated: nn.Module, target: float, final: bool = True) -> float:
        """Keep the globally top-scored structures (never re-adding pruned ones) at ``target`` MACs; the final
        prune rounds the kept widths to ``round_to`` (intermediate stages of ``iterative`` are not rounded)."""
        raw = self.scores(gated)
        scores = [torch.where(h.gate.keep.cpu(), s, torch.full_like(s, -float("inf"))) for h, s in zip(gated.groups, raw)]
        r = int(self.config.round_to) if final else 1

        def decide(round_to: int) -> list[torch.Tensor]:
            masks, _ = calibrate(gated, scores, target, "macs", min_keep_fraction=self.config.min_keep_fraction,
                                 round_to=round_to)
            masks = [m & h.gate.keep.cpu() | (h.critical & ~(m & h.gate.keep.cpu()).any() & (s == s.max()))
                     for m, h, s in zip(masks, gated.groups, scores)]
            # a group whose previous stages left fewer channels than a multiple: rounding up re-adds its best
            # pruned ones (by the method's scores without the −inf of the pruned)
            return round_masks(masks, raw, round_to)

        masks = decide(r)
        apply_masks_(gated, masks)
        ratio = mask_ratio(gated, masks)
        self.done += 1
        self.masks_fixed = self.masks_fixed or final
        # the global ranking *is* this method's rule (not a correction of another one): nothing to flip
        self.report = {"ratio": ratio, "target": target, "events": self.done, "relaxation_macs_ratio": ratio,
                       "calibration_flips": 0.0}
        if r > 1:
            self.report["rounding"] = rounding_report(gated, decide(1), masks, r)
        logger.info("%s: pruned to hard MACs ratio %.4f (stage target %.4f)", self.name, ratio, target)
        return ratio

    def finalize(self, model: nn.Module) -> nn.Module:
        gated = require_gated(model, self.name)
        if not self.masks_fixed:
            self.prune(gated, self.config.target_macs)
        return gated

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done, "masks_fixed": self.masks_fixed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.done = int(state.get("done", self.done))
        self.masks_fixed = bool(state.get("masks_fixed", state.get("final_done", self.masks_fixed)))


@register_method
class L1Method(_ScheduledPrune):
    """Li et al. 2017: prune the filters with the smallest L1 norms to a MACs target, then fine-tune."""

    name = "l1"
    summary = "L1-norm filter pruning: train dense, remove the filters with the smallest L1 norms, fine-tune"
    paper = "Li et al. 2017 (pruning filters for efficient ConvNets)"
    target_option = "target_macs"
    decision_rule = "remove the filters with the smallest L1 norms (per-layer normalised) until the target is met"
    bench_variants = ({}, {"mode": "iterative"})

    @dataclasses.dataclass(frozen=True)
    class Config(PruneSchedule):
        target_macs: float = option(0.5, "the MACs to keep", unit="fraction of dense MACs", low=0, high=1,
                                    low_open=True)
        norm: float = option(1.0, "1: L1 (Li et al.), 2: L2", low=0, low_open=True)
        min_keep_fraction: float = option(0.0, "share of every group always kept (scores are per-layer normalised "
                                          "already)", low=0, high=1, high_open=True)

    def scores(self, gated: nn.Module) -> list[torch.Tensor]:
        return [s / s.mean().clamp_min(1e-12) for s in filter_norms(gated, self.config.norm)]


@register_method
class SlimmingMethod(_ScheduledPrune):
    """Liu et al. 2017: L1 on BatchNorm γ while training, prune the smallest γ globally, fine-tune."""

    name = "slimming"
    summary = "network slimming: L1 on BatchNorm scales while training, remove the smallest scales, fine-tune"
    paper = "Liu et al. 2017 (network slimming)"
    target_option = "target_macs"
    loss_help = {"bn_l1": "the L1 term on BatchNorm scales makes unimportant channels fade out"}
    decision_rule = "remove the channels with the smallest BatchNorm scales |γ| (ranked globally) until the target"
    bench_variants = ({}, {"mode": "iterative"})

    @dataclasses.dataclass(frozen=True)
    class Config(PruneSchedule):
        target_macs: float = option(0.5, "the MACs to keep", unit="fraction of dense MACs", low=0, high=1,
                                    low_open=True)
        lambda_bn: float = option(1e-4, "weight of the L1 term on BatchNorm scales", low=0)
        # γ is ranked across layers: without a floor that ranking empties whole layers at tight budgets
        # (bench pareto, CIFAR-10, 0.5 MACs: 18.8 %); 0 restores the paper's pure global threshold
        min_keep_fraction: float = option(0.1, "share of every group always kept (its largest-γ channels)", low=0,
                                          high=1, high_open=True, paper="0")

    def regularizer(self, model: nn.Module, step: int, epoch: int) -> dict[str, torch.Tensor]:
        if self.masks_fixed or self.config.lambda_bn == 0:
            return {}
        gammas = [m.weight.abs().sum() for m in model.model.modules() if isinstance(m, BN_TYPES) and m.affine]
        return {"bn_l1": self.config.lambda_bn * torch.stack(gammas).sum()} if gammas else {}

    def scores(self, gated: nn.Module) -> list[torch.Tensor]:
        return bn_scales(gated)
