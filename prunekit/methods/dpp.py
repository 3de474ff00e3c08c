"""Dynamic Probabilistic Pruning as a training recipe (METHODS.md section 2).

Three granularities, exactly k of N kept per row:

* ``filter``: k of C_out channels per coupled group, a ``dpp`` gate on every group of
  ``prunekit.augment``; the final masks collapse exactly (``prunekit.collapse``).
* ``kernel``: k of C_in input-channel kernels per filter of every conv (Φ [C_out, C_in/groups]);
  linear layers stay dense.
* ``weight``: k of the inputs of every output neuron of a linear layer (Φ [out, in]) and k of the
  C_in·kh·kw weights of every conv filter.

Kernel and weight masks are ``torch.nn.utils.parametrize`` parametrizations of the layers' own weights,
so the forward provably uses W ⊙ A; they do not shrink dense layers and are reported as a sparsity
pattern ("2:4 per bank") and a size in bits instead of collapsed.

Schedules and loss: the relaxation temperature τ decays linearly from ``tau_start`` to ``tau_end``
over the epochs (set in ``on_epoch_start``, epoch 0 → τ_start, last epoch → τ_end); the entropy
regulariser λ_H Σ_rows H(softmax φ_m) pushes every row to a confident choice (λ_H 5e-3 for conv and
filter masks, 5e-5 for fully connected ones). ``quant_bits`` adds k-bit fake quantisation of every
Conv/Linear weight (``prunekit.quant``), trained jointly.

**How Φ learns, and the defaults that make it** (METHODS.md section 2, issue 14). The forward uses the hard
top-k of Φ + εG; a structure outside the mask outputs exactly 0, and behind a ReLU its gate gets no gradient
at all, so Φ can only learn about structures that the Gumbel noise actually samples. What matters is
therefore the spread of Φ *relative to ε*, and how fast Φ moves relative to ε:

* ``epsilon`` 0.03 (conv/filter) and 0.1 (linear), ``lambda_h`` 5e-3 / 5e-5: the paper's values, unchanged.
* ``init="norm"``, ``init_std=None`` → ε/3: Φ starts as the standardised filter norms of each coupled group
  (kernel: kernel norms per filter; weight: |w| per row) times ε/3. The Gumbel noise (std ≈ 1.28 ε) is then
  about four times the spread of Φ, so the first batches draw nearly uniform k-subsets and every structure
  gets trained and measured; the norms only break ties (a real prior for a pretrained network, none for a
  random one). The paper's N(0, 0.5²) is 17× ε: the first sample is already the final mask.
* ``gate_optimizer="adam"``, ``gate_lr`` 0.03, no weight decay: Φ has its own Adam, whatever trains the
  weights (``SplitOptimizer``; the loop's warm-up and cosine schedule scale it like the weights' lr). Adam
  moves Φ by about ``gate_lr`` per step in the direction of a consistent gradient, independent of the tiny
  size of dL/dΦ: Φ separates by several ε within tens of steps, the masks settle, and the network trains the
  chosen structures for the rest of the run. (With the network's SGD and lr, the issue measured Φ's spread
  going from 0.50 to 0.535 in a whole run: the mask never changed.)
* Measured (``prunekit.run_experiment``: ResNet-20, Fashion-MNIST ``limit`` 4000, 4 epochs, batch 64,
  lr 0.1 SGD, keep 0.7 → 0.48 of dense MACs, 252 steps, 1 thread, 150–200 s of CPU; accuracy on the 2,000 test
  images after re-estimating BN on 20 training batches; seed 0 unless two values):

  ==========================================  ===========  ===========
  Φ settings                                  mask_moved   accuracy
  ==========================================  ===========  ===========
  before: N(0, 0.5²), Φ never moves            0.00, 0.00   0.805, 0.807
  init ε,   Adam 0.003                          0.12         0.756
  init ε,   Adam 0.01                           0.20         0.768
  init ε,   Adam 0.03                           0.22         0.799
  init ε/3, Adam 0.01                           0.25         0.744
  **init ε/3, Adam 0.03** (default; seeds 0, 1)  0.28, 0.29   0.781, 0.791
  init ε/3, Adam 0.1                            0.27         0.767
  dense network, same steps                     —            0.842
  ==========================================  ===========  ===========

  mask_moved 0.3 is what a mask independent of the initial one gives at keep 0.7. The fixed random mask of
  the first row is a narrower dense network trained from scratch (channels of a random network are
  interchangeable), which DPP's exploring masks do not beat at this short budget (with the default, mask_moved
  is 0.24 after 25 steps and 0.28 at the end: the mask is chosen early). Where structures are *not*
  interchangeable, the moved mask is the right one: in ``tests/test_dpp.py``'s planted problem (half the
  channels carry only noise and start as the initial top-k) the defaults end on exactly the informative
  channels in 10 of 10 seeds; the paper's init (with either optimizer) never leaves the noise channels, and
  init ε with Adam 0.03 fails 2 of 4 seeds (the softmax-entropy term favours one dominant logit once Φ has
  spread, and a larger initial spread lets it lock in the initial order).

Report (``self.report`` after ``finalize``): ``mask_moved`` (share of the final kept structures that were not
in the initial top-k of Φ, recorded at ``prepare`` and kept in ``state_dict``), ``relaxation_macs_ratio``
(filter granularity: MACs of the noiseless top-k ÷ dense; DPP's own decision rule) and ``calibration_flips``
0.0 (exactly k per row: nothing to calibrate), besides size and structure. Step metrics add ``mask_moved``
and ``macs_ratio/relaxation``. After ``finalize`` the loop re-estimates BatchNorm statistics
(``recalibrate_bn_after_finalize``): they were gathered under a different random mask every batch.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit._device import model_device
from prunekit.errors import ConfigError
from prunekit.gates.dpp import DPPGate, DPPMask, DPPState, keep_count
from prunekit.methods._gated import WidthConfig, mask_ratio, round_count
from prunekit.methods.base import Method, option, register_method
from prunekit.metrics import gate_layer_rows, nm_structure
from prunekit.quant import bake_, model_size_bits, quantize_

logger = logging.getLogger(__name__)

GRANULARITIES = ("filter", "kernel", "weight")
LAMBDA_CONV = 5e-3  # conv / filter masks
LAMBDA_FC = 5e-5  # fully connected masks
EPSILON_CONV = 0.03  # 0.01–0.05 for conv layers
EPSILON_FC = 0.1
GATE_LR = 0.03  # Adam lr of Φ (see the module docstring)
INIT_SPREAD = 1 / 3  # default init_std = INIT_SPREAD · ε
INITS = ("norm", "random")
GATE_OPTIMIZERS = ("adam", "same")


def temperature(epoch: int, num_epochs: int, start: float = 5.0, end: float = 0.5) -> float:
    """Linear schedule: ``start`` at epoch 0, ``end`` at the last epoch (``num_epochs − 1``)."""
    if num_epochs <= 1:
        return float(start)
    t = min(max(epoch, 0), num_epochs - 1) / (num_epochs - 1)
    return float(start + (end - start) * t)


def dpp_states(model: nn.Module) -> list[DPPState]:
    """Every DPP logit holder in ``model`` (filter gates' states and weight masks), in module order."""
    return [m for m in model.modules() if isinstance(m, DPPState)]


def group_counts(gated: nn.Module, keep: float, round_to: int = 1, banks: int = 1) -> list[int]:
    """k per group of ``gated`` for a ``keep`` fraction: ``keep_count`` rounded to ``round_to`` (or the whole group).

    Raises:
        ConfigError: ``round_to`` and ``banks`` give a width that is not a multiple of ``banks``.
    """
    out = []
    for h in gated.groups:
        k = round_count(keep_count(keep, h.size, banks), h.size, round_to)
        if k % banks:
            raise ConfigError(f"round_to={round_to} gives {k} of {h.size} channels in group {h.name!r}, not a "
                              f"multiple of banks={banks}: use a round_to that banks divides")
        out.append(k)
    return out


def keep_for_target(model: nn.Module, example_input: torch.Tensor, target: float,
                    round_to: int = 1) -> tuple[float, float]:
    """The ``keep`` fraction whose exactly-k masks (k = keep_count(keep, N) in every group, rounded to ``round_to``
    by :func:`group_counts`) give ``target`` MACs.

    Returns:
        (keep, the MACs ratio those masks give), nearest to ``target`` over a bisection of ``keep``.
    """
    from prunekit.augment import augment

    gated = augment(copy.deepcopy(model), example_input, gate="mask")

    def ratio(keep: float) -> float:
        ks = group_counts(gated, keep, round_to)
        return mask_ratio(gated, [torch.arange(h.size) < k for h, k in zip(gated.groups, ks)])

    lo, hi = 1e-3, 1.0
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ratio(mid) < target else (lo, mid)
    best = min((lo, hi), key=lambda k: abs(ratio(k) - target))
    return best, ratio(best)


@register_method
class DPPMethod(Method):
    """DPP: exactly-k Gumbel top-k masks with a sequential-softmax straight-through gradient."""

    name = "dpp"
    #: the training statistics of BatchNorm were gathered under a fresh random mask every batch; once the mask
    #: is frozen to top-k(Φ) they no longer describe the network, so the loop re-estimates them after finalize
    recalibrate_bn_after_finalize = True

    summary = ("DPP: exactly-k Gumbel top-k masks per layer from learned logits Φ, a sequential-softmax "
               "straight-through gradient")
    paper = ("Dynamic Probabilistic Pruning: a general framework for hardware-constrained pruning at different "
             "granularities (2021)")
    target_option = "target_macs"
    loss_help = {"entropy": "the entropy term makes each mask row confident (one clear choice instead of a spread)"}
    metric_help = {
        "mask_moved": "share of the final kept structures that were not in the top-k of the initial Φ",
        "confidence": "1 − Σ h(p) / (N·h(k/N)) over the k-of-N inclusion probabilities p: 1 decided, 0 uniform",
    }
    decision_rule = "keep the top-k of the logits Φ per mask row (the noiseless k-of-N mask)"
    optimizer_help = "the run's optimizer for the weights; Adam (lr 0.03) for the logits Φ"

    @dataclasses.dataclass(frozen=True)
    class Config(WidthConfig):
        granularity: str = option("filter", "what a mask row chooses among: filters of a layer, kernels of a "
                                  "filter, weights of a kernel", choices=GRANULARITIES)
        keep: float = option(0.5, "fraction of candidates kept per row (ignored when target_macs is set)",
                             unit="fraction of a row", low=0, high=1, low_open=True)
        target_macs: float | None = option(None, "the MACs to keep: sets keep (the same in every group) so that the "
                                           "exactly-k masks give it; granularity filter only",
                                           unit="fraction of dense MACs", low=0, high=1, low_open=True)
        epsilon: float | None = option(None, "Gumbel noise scale; None: 0.03 for conv filters, 0.1 for linear",
                                       low=0, paper="0.03 conv, 0.1 linear")
        tau_start: float = option(5.0, "softmax temperature at the start", low=0, low_open=True)
        tau_end: float = option(0.5, "softmax temperature at the end", low=0, low_open=True)
        lambda_h: float | None = option(None, "entropy weight; None: 5e-3 conv/filter, 5e-5 linear", low=0,
                                        paper="5e-3 conv, 5e-5 linear")
        banks: int = option(1, "tiled DPP: candidates split into banks with k/banks each", low=1)
        quant_bits: int | None = option(None, "joint k-bit fake quantisation of Conv/Linear weights", low=2, high=16)
        gate_lr: float | None = option(GATE_LR, "Adam lr of the logits Φ (None: the training lr); never weight decay",
                                       low=0, low_open=True)
        gate_optimizer: str = option("adam", "adam: Adam for Φ whatever trains the weights; same: the training one",
                                     choices=GATE_OPTIMIZERS)
        init: str = option("norm", "norm: standardised filter/kernel/weight norms × init_std; random: "
                           "N(0, init_std²)", choices=INITS)
        init_std: float | None = option(None, "spread of the initial Φ; None: ε/3 (ε: the layer's Gumbel noise)",
                                        low=0)
        bake: bool = option(True, "finalize: fold kernel/weight masks and quantisation into plain weights")

        def __post_init__(self) -> None:
            if self.target_macs is not None and self.granularity != "filter":
                raise ConfigError(f"target_macs needs granularity 'filter', got granularity={self.granularity!r}")
            if self.round_to > 1 and self.granularity != "filter":
                raise ConfigError(f"round_to needs granularity 'filter', got granularity={self.granularity!r}")

    def __init__(self, config: Any = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.tau = float(self.config.tau_start)
        self._flip_state: dict[str, torch.Tensor] = {}
        self.report: dict[str, Any] = {}
        # the top-k of the initial Φ per mask (module path → bool [M, N]), recorded by ``prepare``: what
        # ``mask_moved`` compares the final masks with (kept in ``state_dict``: a resumed run keeps its origin)
        self.initial_topk: dict[str, torch.Tensor] = {}

    # -- model ----------------------------------------------------------------------------------
    def prepare(self, model: nn.Module, example_input: torch.Tensor) -> nn.Module:
        cfg = self.config
        if cfg.granularity == "filter":
            from prunekit.augment import augment

            eps = EPSILON_CONV if cfg.epsilon is None else cfg.epsilon
            std = INIT_SPREAD * eps if cfg.init_std is None else cfg.init_std
            keep = cfg.keep
            if cfg.target_macs is not None:
                keep, ratio = keep_for_target(model, example_input, cfg.target_macs, cfg.round_to)
                self.report.update(keep=keep, keep_macs_ratio=ratio)
            model = augment(model, example_input, gate="dpp", gate_options={
                "keep": keep, "epsilon": eps, "tau": self.tau, "banks": cfg.banks, "init_std": std})
            if cfg.round_to > 1:  # k of every group a multiple of round_to; the top-k of Φ picks them
                self._round_k(model, keep)
            for h in model.groups:
                h.gate.dpp.lambda_h = LAMBDA_CONV if cfg.lambda_h is None else cfg.lambda_h
                if cfg.init == "norm":
                    _set_logits(h.gate.dpp, _group_norms(h), std)
            target = model.model
        else:
            self._install_masks(model)
            target = model
        if cfg.quant_bits is not None:
            quantize_(target, cfg.quant_bits)
        self.initial_topk = {name: m.bool().cpu() for name, m in current_topk(model).items()}
        return model

    def _round_k(self, gated: nn.Module, keep: float) -> None:
        """Set every filter gate's k to its rounded count and report how far that moved the MACs ratio."""
        cfg = self.config
        before = group_counts(gated, keep, 1, cfg.banks)
        after = group_counts(gated, keep, cfg.round_to, cfg.banks)
        for h, k in zip(gated.groups, after):
            h.gate.dpp.k = int(k)
        ratios = [mask_ratio(gated, [torch.arange(h.size) < k for h, k in zip(gated.groups, ks)])
                  for ks in (before, after)]
        self.report["rounding"] = {"round_to": cfg.round_to, "kind": "macs", "ratio_unrounded": ratios[0],
                                   "ratio": ratios[1], "shift": ratios[1] - ratios[0]}

    def _install_masks(self, model: nn.Module) -> None:
        cfg = self.config
        skipped, device = [], model_device(model)
        for name, mod in list(model.named_modules()):
            is_conv = isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
            if not (is_conv or (isinstance(mod, nn.Linear) and cfg.granularity == "weight")):
                continue
            shape = tuple(mod.weight.shape)
            n = shape[1] if cfg.granularity == "kernel" else int(torch.tensor(shape[1:]).prod())
            if n < 2 or n % cfg.banks:
                skipped.append(name)
                continue
            eps = cfg.epsilon if cfg.epsilon is not None else (EPSILON_CONV if is_conv else EPSILON_FC)
            std = INIT_SPREAD * eps if cfg.init_std is None else cfg.init_std
            mask = DPPMask(shape, cfg.granularity, cfg.keep, eps, self.tau, cfg.banks, std).to(device)
            mask.lambda_h = cfg.lambda_h if cfg.lambda_h is not None else (LAMBDA_CONV if is_conv else LAMBDA_FC)
            if cfg.init == "norm":
                w = mod.weight.detach()
                norms = w.flatten(2).norm(dim=-1) if cfg.granularity == "kernel" else w.flatten(1).abs()
                _set_logits(mask, norms, std)
            parametrize.register_parametrization(mod, "weight", mask)
        if skipped:
            logger.info("dpp %s: left dense (one candidate per row or not divisible by banks=%d): %s",
                        cfg.granularity, cfg.banks, ", ".join(skipped))
        if not dpp_states(model):
            raise ConfigError(f"granularity={cfg.granularity!r} found no layer to mask in {type(model).__name__}")

    def param_groups(self, model: nn.Module, train_cfg: Any) -> list[dict[str, Any]]:
        """Weights as usual; the logits Φ in their own group with ``gate_lr`` and no weight decay."""
        logits = [s.logits for s in dpp_states(model) if s.logits.requires_grad]
        ids = {id(p) for p in logits}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        groups: list[dict[str, Any]] = [{"params": rest}]
        if logits:
            lr = self.config.gate_lr if self.config.gate_lr is not None else float(getattr(train_cfg, "lr", 0.1))
            groups.append({"params": logits, "lr": lr, "weight_decay": 0.0})
        return groups

    def make_optimizer(self, model: nn.Module, train_cfg: Any) -> torch.optim.Optimizer | None:
        """``gate_optimizer="adam"``: the training optimizer for the weights plus Adam (``gate_lr``, no weight
        decay) for Φ, wrapped in one ``SplitOptimizer`` (the loop's lr schedule scales both).

        None (the loop builds one optimizer from :meth:`param_groups`) with ``"same"``, or when the training
        optimizer is already Adam/AdamW (then Φ's group has ``gate_lr``) or is built by another method (sdprun).
        """
        if self.config.gate_optimizer == "same" or getattr(train_cfg, "optimizer", "sgd") != "sgd":
            return None
        from prunekit.optim import split_optimizer

        return split_optimizer(self.param_groups(model, train_cfg), train_cfg)

    # -- schedules and loss ----------------------------------------------------------------------
    def set_temperature(self, model: nn.Module, tau: float) -> None:
        self.tau = float(tau)
        for s in dpp_states(model):
            s.set_tau(self.tau)

    def on_epoch_start(self, model: nn.Module, epoch: int, num_epochs: int) -> None:
        self.set_temperature(model, temperature(epoch, num_epochs, self.config.tau_start, self.config.tau_end))

    def regularizer(self, model: nn.Module, step: int, epoch: int) -> dict[str, torch.Tensor]:
        terms = [s.lambda_h * s.entropy() for s in dpp_states(model) if not s.frozen]
        return {"entropy": torch.stack(terms).sum()} if terms else {}

    # -- reporting -------------------------------------------------------------------------------
    @torch.no_grad()
    def step_metrics(self, model: nn.Module) -> dict[str, float]:
        states = dpp_states(model)
        if not states:
            return {}
        removed = total = 0
        for s in states:
            m = s._deterministic(s.logits)
            removed += int((m == 0).sum())
            total += m.numel()
        out = {"temperature": self.tau, "sparsity": removed / max(total, 1)}
        if self.initial_topk:
            out["mask_moved"] = self.mask_moved(model)
        if self.config.granularity == "filter" and hasattr(model, "groups"):
            from prunekit.cost import macs_ratio
            out["macs_ratio/expected"] = float(macs_ratio(model, "expected"))
            out["macs_ratio/hard"] = float(macs_ratio(model, "hard"))
            out["macs_ratio/relaxation"] = mask_ratio(model, self.decision_masks(model), "macs")
        if self.config.quant_bits is not None or self.config.granularity != "filter":
            out["size_ratio"] = float(model_size_bits(model)["ratio"])
        return out

    def layer_metrics(self, model: nn.Module) -> list[dict[str, Any]]:
        return gate_layer_rows(model, state=self._flip_state)

    def report_state(self) -> dict[str, Any]:
        return {"report": dict(self.report), "flip": {k: v.clone() for k, v in self._flip_state.items()}}

    def load_report_state(self, state: dict[str, Any]) -> None:
        self.report = dict(state.get("report") or self.report)
        self._flip_state = dict(state.get("flip") or {})

    @torch.no_grad()
    def decision_masks(self, model: nn.Module) -> list[torch.Tensor] | None:
        """DPP's own rule: the noiseless top-k of Φ per group (bool [size]); None below filter granularity."""
        groups = getattr(model, "groups", None)
        if self.config.granularity != "filter" or not groups:
            return None
        return [(h.gate.deterministic().detach() > 0.5) & h.gate.keep for h in groups]

    @torch.no_grad()
    def mask_moved(self, model: nn.Module) -> float:
        """Share of the structures kept now (noiseless top-k of Φ) that were not in the initial top-k.

        Over every mask together (all groups, or all rows of all kernel/weight masks); 0.0 before ``prepare``.
        """
        moved = kept = 0
        for name, now in current_topk(model).items():
            first = self.initial_topk.get(name)
            if first is None or first.shape != now.shape:
                continue
            now = now.bool().cpu()
            moved += int((now & ~first).sum())
            kept += int(now.sum())
        return moved / kept if kept else 0.0

    def structure(self, model: nn.Module) -> list[dict[str, Any]]:
        """Per masked layer: ``{"layer", "pattern", "exact", "sparsity"}`` (kernel/weight granularities)."""
        rows = []
        for name, mod in model.named_modules():
            if parametrize.is_parametrized(mod, "weight"):
                for p in mod.parametrizations.weight:
                    if isinstance(p, DPPMask):
                        m = p._deterministic(p.logits)
                        info = nm_structure(m, p.banks)
                        rows.append({"layer": name, "pattern": info["pattern"], "exact": info["exact"],
                                     "sparsity": float((m == 0).float().mean())})
        return rows

    @torch.no_grad()
    def finalize(self, model: nn.Module) -> nn.Module:
        """Fix every mask to top-k(Φ); filter: as the groups' keep masks, ready for ``prunekit.collapse``.

        Records ``self.report`` (size in bits, sparsity, per-layer N:M structure) before baking the kernel/
        weight masks and the fake quantisation into plain weights (``bake=True``).
        """
        own = self.decision_masks(model)
        moved = self.mask_moved(model)
        for h in getattr(model, "groups", None) or []:
            if isinstance(h.gate, DPPGate):
                h.gate.dpp.freeze_(h.gate._logits())
                h.set_mask(h.gate.deterministic().detach() > 0.5)
        for s in dpp_states(model):
            if not s.frozen:
                s.freeze_()
        kept = {k: self.report[k] for k in ("keep", "keep_macs_ratio", "rounding") if k in self.report}
        self.report = {**kept, "size": model_size_bits(model), "structure": self.structure(model),
                       "sparsity": self.step_metrics(model).get("sparsity", 0.0),
                       "mask_moved": moved, "calibration_flips": 0.0}
        if own is not None:
            from prunekit.methods._gated import decision_report

            final = [h.hard_mask().detach().bool() for h in model.groups]
            self.report.update(decision_report(model, own, final))  # no calibration: flips are 0.0
        logger.info("dpp finalize: %.0f bits (%.3f of dense), sparsity %.3f, mask moved %.3f, relaxation MACs %s",
                    self.report["size"]["bits"], self.report["size"]["ratio"], self.report["sparsity"], moved,
                    f"{self.report['relaxation_macs_ratio']:.3f}" if own is not None else "n/a")
        if self.config.bake:
            bake_(model.model if hasattr(model, "groups") else model)
        return model

    # -- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"tau": self.tau, "initial_topk": {k: v.clone() for k, v in self.initial_topk.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tau = float(state.get("tau", self.tau))
        if state.get("initial_topk"):
            self.initial_topk = {k: v.bool().cpu() for k, v in state["initial_topk"].items()}


@torch.no_grad()
def current_topk(model: nn.Module) -> dict[str, torch.Tensor]:
    """The noiseless top-k mask of every DPP gate (its keep-masked Φ) and weight mask, by module path ([M, N])."""
    out: dict[str, torch.Tensor] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, DPPGate):
            out[name] = mod.dpp._deterministic(mod._logits()).detach() > 0.5
        elif isinstance(mod, DPPMask):
            out[name] = mod._deterministic(mod.logits).detach() > 0.5
    return out


def _group_norms(handle: Any) -> torch.Tensor | None:
    """Per channel of a coupled group: the mean over its producing convs/linears ("out" members) of each layer's
    filter L2 norm divided by that layer's mean filter norm (so that no layer dominates a residual group).

    None when no conv or linear produces the group's channels.
    """
    total, count = torch.zeros(handle.size), torch.zeros(handle.size)
    for m in handle.members:
        w = getattr(m.module, "weight", None)
        if m.dim != "out" or not isinstance(m.module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) or w is None:
            continue
        norms = w.detach().float().cpu().index_select(0, m.idxs.cpu()).flatten(1).norm(dim=1)
        total.index_add_(0, m.root_idxs.cpu(), norms / norms.mean().clamp_min(1e-12))
        count.index_add_(0, m.root_idxs.cpu(), torch.ones(len(norms)))
    if not bool((count > 0).any()):
        return None
    return total / count.clamp_min(1)


@torch.no_grad()
def _set_logits(state: DPPState, scores: torch.Tensor | None, std: float) -> None:
    """Φ ← std · (scores standardised per row); left as drawn (N(0, std²)) when the scores do not vary."""
    if scores is None:
        return
    s = scores.detach().float().reshape(state.logits.shape)
    sd = s.std(dim=-1, keepdim=True) if s.shape[-1] > 1 else torch.zeros_like(s[..., :1])
    z = (s - s.mean(dim=-1, keepdim=True)) / sd.clamp_min(1e-12)
    rows = (sd > 1e-8 * s.abs().mean(dim=-1, keepdim=True).clamp_min(1e-12)).squeeze(-1)
    state.logits[rows] = (std * z[rows]).to(state.logits)
