"""Torch-Pruning baselines for the pareto bench: GroupNormPruner and MagnitudePruner at a MACs target.

The protocol follows Torch-Pruning's own CIFAR benchmark (``benchmarks/main.py`` of the DepGraph repo),
squeezed into the same training budget as every prunekit method:

* ``groupnorm`` (DepGraph "group_sl"): ``GroupNormPruner`` with ``GroupMagnitudeImportance(p=2)``; its
  group-norm sparse regulariser (``pruner.regularize``, reg 5e-4, which edits ``.grad``) runs before every
  optimizer step of the first part of the run.
* ``magnitude`` (Li et al. "l1" in that script): ``MagnitudePruner`` with ``MagnitudeImportance(p=1)``,
  no regulariser.

At the end of epoch ``prune_epoch`` (default: the middle of the run, the same split as prunekit's l1 and
slimming baselines) the network is pruned **progressively**, as Torch-Pruning's benchmark does: a pruner
with ``pruning_ratio=1`` and ``iterative_steps`` small steps is stepped until the measured MACs
(``prunekit.cost.count_macs``, the counter every row of the bench uses) fall to ``target_macs`` of the
dense network. Torch-Pruning replaces pruned parameters by new ``nn.Parameter`` objects, so the
optimizer's parameter list is rebuilt in place (momentum restarts, as in Torch-Pruning's separate
fine-tune run) and the remaining epochs fine-tune under the same lr schedule. The classifier is ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from typing import Any

import torch
from torch import nn

from prunekit.cost import count_macs
from prunekit.errors import ConfigError
from prunekit.methods.base import Method, option
from prunekit.optim import build_optimizer
from prunekit.train.evaluate import evaluate
from prunekit.train.experiment import build_experiment
from prunekit.train.loop import Trainer

logger = logging.getLogger(__name__)

PRUNERS = ("groupnorm", "magnitude")


def _classifier(model: nn.Module) -> list[nn.Module]:
    """The last Linear (classification) or last Conv (segmentation head): never pruned."""
    lin = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if lin and getattr(model, "pk_task", "classification") == "classification":
        return lin[-1:]
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1:]


@torch.no_grad()
def conv_linear_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """MACs per sample of the Conv/Linear layers, by forward hooks (a fast stand-in for ``count_macs``).

    Conv: output elements × in_channels/groups × kernel area; Linear: output elements × in_features.
    The same definition as ``torch.utils.flop_counter`` for these layers, without its dispatch overhead
    (seconds per call on a busy CPU), so the progressive pruning loop can count after every step.
    """
    total = 0

    def hook(mod: nn.Module, inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Linear):
            total += out.numel() * mod.in_features
        else:
            total += out.numel() * (mod.in_channels // mod.groups) * int(torch.tensor(mod.kernel_size).prod())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
    was = model.training
    model.eval()
    try:
        model(example_input)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return total // example_input.shape[0]


def make_pruner(
    model: nn.Module,
    example_input: torch.Tensor,
    pruner: str = "groupnorm",
    *,
    pruning_ratio: float = 1.0,
    iterative_steps: int = 100,
    global_pruning: bool = False,
    reg: float = 5e-4,
) -> Any:
    """A Torch-Pruning pruner of the named kind over ``model`` (traced with ``example_input`` [N, C, H, W])."""
    import torch_pruning as tp

    if pruner not in PRUNERS:
        raise ConfigError(f"pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    common = dict(pruning_ratio=pruning_ratio, iterative_steps=iterative_steps, global_pruning=global_pruning,
                  max_pruning_ratio=1.0, ignored_layers=_classifier(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if pruner == "groupnorm":
            return tp.pruner.GroupNormPruner(model, example_input, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                             reg=reg, **common)
        return tp.pruner.MagnitudePruner(model, example_input, importance=tp.importance.MagnitudeImportance(p=1),
                                         **common)


def prune_to_macs_(
    model: nn.Module,
    example_input: torch.Tensor,
    target_macs: float,
    pruner: str = "groupnorm",
    *,
    iterative_steps: int = 100,
    global_pruning: bool = False,
) -> dict[str, Any]:
    """Prune ``model`` in place with Torch-Pruning until its MACs ratio is ≤ ``target_macs``.

    Args:
        model: a plain (ungated) network; modified in place.
        example_input: ``[N, C, H, W]`` on the model's device.
        target_macs: kept MACs fraction of the network as passed in, in (0, 1].
        pruner: ``"groupnorm"`` or ``"magnitude"``.
        iterative_steps: granularity: step i prunes i/iterative_steps of every group's channels.

    Returns:
        ``{"macs_before", "macs_after", "macs_ratio", "steps", "prune_s"}`` (MACs per sample, flop counter).
    """
    if not 0 < target_macs <= 1:
        raise ConfigError(f"target_macs must be in (0, 1], got {target_macs}")
    was = model.training
    model.eval()
    t0 = time.perf_counter()
    macs0 = count_macs(model, example_input)
    fast0 = conv_linear_macs(model, example_input)
    p = make_pruner(model, example_input, pruner, iterative_steps=iterative_steps, global_pruning=global_pruning)
    ratio, steps = 1.0, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while ratio > target_macs and p.current_step < p.iterative_steps:
            p.step()  # Torch-Pruning traces with autograd on, so no torch.no_grad() around this loop
            steps += 1
            ratio = conv_linear_macs(model, example_input) / fast0
    model.train(was)
    macs1 = count_macs(model, example_input)
    logger.info("torch-pruning %s: MACs ratio %.4f after %d steps (target %.3f)", pruner, ratio, steps, target_macs)
    return {"macs_before": macs0, "macs_after": macs1, "macs_ratio": macs1 / macs0, "steps": steps,
            "prune_s": time.perf_counter() - t0}


class TPMethod(Method):
    """Torch-Pruning as a prunekit training recipe (not registered: a bench baseline, not a prunekit method).

    Dense training (with the group-norm regulariser for ``groupnorm``) until ``prune_epoch``, progressive
    pruning to the MACs target, fine-tuning for the rest of the run in the same lr schedule.
    """

    name = "tp"

    @dataclasses.dataclass(frozen=True)
    class Config:
        pruner: str = option("groupnorm", "Torch-Pruning pruner", choices=tuple(PRUNERS))
        target_macs: float = option(0.5, "the MACs to keep", unit="fraction of dense MACs", low=0, high=1,
                                    low_open=True)
        reg: float = option(5e-4, "Torch-Pruning benchmark's --reg for group_sl", low=0)
        iterative_steps: int = option(100, "pruning steps of the progressive schedule", low=1)
        global_pruning: bool = option(False, "rank channels across layers instead of per layer")
        prune_epoch: int | None = option(None, "0-based epoch at whose end it prunes; None: the middle of the run",
                                         unit="epochs", low=0)

    def __init__(self, config: Any = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.example_input: torch.Tensor | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.report: dict[str, Any] = {}
        self._reg_pruner: Any = None

    def prepare(self, model: nn.Module, example_input: torch.Tensor) -> nn.Module:
        self.example_input = example_input.detach().cpu()
        return model

    def make_optimizer(self, model: nn.Module, train_cfg: Any) -> torch.optim.Optimizer:
        self.optimizer = opt = build_optimizer(self.param_groups(model, train_cfg), train_cfg)
        c = self.config
        if c.pruner == "groupnorm" and c.reg > 0:
            x = self._x(model)
            self._reg_pruner = make_pruner(model, x, "groupnorm", reg=c.reg, iterative_steps=c.iterative_steps)

            def _regularize(optimizer: Any, args: Any, kwargs: Any) -> None:
                # gradients exist here (after backward, before the update): TP adds reg·γ·w to them
                if self._reg_pruner is not None and not self.report:
                    self._reg_pruner.regularize(model)

            opt.register_step_pre_hook(_regularize)
        return opt

    def _x(self, model: nn.Module) -> torch.Tensor:
        if self.example_input is None:
            raise ConfigError("TPMethod.prepare must run before training (no example input)")
        return self.example_input.to(next(model.parameters()).device)

    def _prune(self, model: nn.Module) -> None:
        c = self.config
        self.report = prune_to_macs_(model, self._x(model), c.target_macs, c.pruner,
                                    iterative_steps=c.iterative_steps, global_pruning=c.global_pruning)
        self._reg_pruner = None
        opt = self.optimizer
        if opt is not None:
            # Torch-Pruning swapped in new Parameter objects: point the optimizer at them, drop stale momenta.
            opt.state.clear()
            params = [p for p in model.parameters() if p.requires_grad]
            opt.param_groups[0]["params"] = params
            for g in opt.param_groups[1:]:
                g["params"] = []

    def on_epoch_end(self, model: nn.Module, epoch: int, num_epochs: int) -> None:
        prune_at = self.config.prune_epoch if self.config.prune_epoch is not None else max(num_epochs // 2 - 1, 0)
        if epoch == min(prune_at, num_epochs - 1) and not self.report:
            self._prune(model)

    def step_metrics(self, model: nn.Module) -> dict[str, float]:
        return {"macs_ratio/hard": float(self.report["macs_ratio"])} if self.report else {}

    def finalize(self, model: nn.Module) -> nn.Module:
        if not self.report:
            self._prune(model)
        return model


def run_tp_experiment(cfg: Any, pruner: str, target_macs: float, **options: Any) -> dict[str, Any]:
    """``run_experiment`` for a Torch-Pruning baseline: same data, model, schedule and test evaluation.

    Args:
        cfg: a ``RunConfig`` (its ``method`` and ``method_options`` are ignored).
        pruner: ``"groupnorm"`` or ``"magnitude"``.
        target_macs: kept MACs fraction.
        **options: further ``TPMethod.Config`` fields.

    Returns:
        Like ``run_experiment``: ``metrics`` (``acc/val``, ``acc/test``, ``loss/test``), ``model`` (the pruned
        plain network), ``dataset``, ``train_time_s``, plus ``tp`` (the pruning report).
    """
    exp = build_experiment(cfg.replace(method="dense", method_options={}))
    method = TPMethod(pruner=pruner, target_macs=target_macs, **options)
    model = method.prepare(exp.model, exp.example_input)
    trainer = Trainer(model, exp.loaders, cfg.train, method, (), exp.task)
    result = trainer.fit()
    model = trainer.model
    test = evaluate(model, exp.loaders.test, exp.task, trainer.device, channels_last=cfg.train.channels_last)
    result["metrics"].update({f"{k}/test": v for k, v in test.items() if k != "samples"})
    result.update(model=model, dataset=exp.info.to_dict(), tp=dict(method.report), task=exp.task)
    return result
