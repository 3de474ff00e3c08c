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
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit._device import model_device
from prunekit.errors import ConfigError
from prunekit.gates.dpp import DPPGate, DPPMask, _DPPState
from prunekit.methods.base import Method, register_method
from prunekit.metrics import gate_layer_rows, nm_structure
from prunekit.quant import bake_, model_size_bits, quantize_

logger = logging.getLogger(__name__)

GRANULARITIES = ("filter", "kernel", "weight")
LAMBDA_CONV = 5e-3  # conv / filter masks
LAMBDA_FC = 5e-5  # fully connected masks
EPSILON_CONV = 0.03  # 0.01–0.05 for conv layers
EPSILON_FC = 0.1


def temperature(epoch: int, num_epochs: int, start: float = 5.0, end: float = 0.5) -> float:
    """Linear schedule: ``start`` at epoch 0, ``end`` at the last epoch (``num_epochs − 1``)."""
    if num_epochs <= 1:
        return float(start)
    t = min(max(epoch, 0), num_epochs - 1) / (num_epochs - 1)
    return float(start + (end - start) * t)


def dpp_states(model: nn.Module) -> list[_DPPState]:
    """Every DPP logit holder in ``model`` (filter gates' states and weight masks), in module order."""
    return [m for m in model.modules() if isinstance(m, _DPPState)]


@register_method
class DPPMethod(Method):
    """DPP: exactly-k Gumbel top-k masks with a sequential-softmax straight-through gradient."""

    name = "dpp"

    @dataclasses.dataclass(frozen=True)
    class Config:
        granularity: str = "filter"
        keep: float = 0.5  # fraction of candidates kept per row
        epsilon: float | None = None  # Gumbel noise scale; None: 0.03 conv/filter, 0.1 linear
        tau_start: float = 5.0
        tau_end: float = 0.5
        lambda_h: float | None = None  # entropy weight; None: 5e-3 conv/filter, 5e-5 linear
        banks: int = 1  # tiled DPP: candidates split into banks with k/banks each
        quant_bits: int | None = None  # joint k-bit fake quantisation of Conv/Linear weights
        gate_lr: float | None = None  # lr of the logits Φ (None: the training lr); never weight decay
        init_std: float = 0.5  # Φ ~ N(0, init_std²)
        bake: bool = True  # finalize: fold kernel/weight masks and quantisation into plain weights

        def __post_init__(self) -> None:
            if self.granularity not in GRANULARITIES:
                raise ConfigError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
            if not 0 < self.keep <= 1:
                raise ConfigError(f"keep must be in (0, 1], got {self.keep}")
            if self.epsilon is not None and self.epsilon < 0:
                raise ConfigError(f"epsilon must be >= 0, got {self.epsilon}")
            if not (self.tau_start > 0 and self.tau_end > 0):
                raise ConfigError(f"tau_start and tau_end must be > 0, got {self.tau_start} and {self.tau_end}")
            if self.lambda_h is not None and self.lambda_h < 0:
                raise ConfigError(f"lambda_h must be >= 0, got {self.lambda_h}")
            if self.banks < 1:
                raise ConfigError(f"banks must be >= 1, got {self.banks}")
            if self.quant_bits is not None and not 2 <= self.quant_bits <= 16:
                raise ConfigError(f"quant_bits must be in [2, 16], got {self.quant_bits}")
            if self.gate_lr is not None and not self.gate_lr > 0:
                raise ConfigError(f"gate_lr must be > 0, got {self.gate_lr}")
            if self.init_std < 0:
                raise ConfigError(f"init_std must be >= 0, got {self.init_std}")

    def __init__(self, config: Any = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.tau = float(self.config.tau_start)
        self._flip_state: dict[str, torch.Tensor] = {}
        self.report: dict[str, Any] = {}

    # -- model ----------------------------------------------------------------------------------
    def prepare(self, model: nn.Module, example_input: torch.Tensor) -> nn.Module:
        cfg = self.config
        if cfg.granularity == "filter":
            from prunekit.augment import augment

            eps = EPSILON_CONV if cfg.epsilon is None else cfg.epsilon
            model = augment(model, example_input, gate="dpp", gate_options={
                "keep": cfg.keep, "epsilon": eps, "tau": self.tau, "banks": cfg.banks, "init_std": cfg.init_std})
            for h in model.groups:
                h.gate.dpp.lambda_h = LAMBDA_CONV if cfg.lambda_h is None else cfg.lambda_h
            target = model.model
        else:
            self._install_masks(model)
            target = model
        if cfg.quant_bits is not None:
            quantize_(target, cfg.quant_bits)
        return model

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
            mask = DPPMask(shape, cfg.granularity, cfg.keep, eps, self.tau, cfg.banks, cfg.init_std).to(device)
            mask.lambda_h = cfg.lambda_h if cfg.lambda_h is not None else (LAMBDA_CONV if is_conv else LAMBDA_FC)
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
        if self.config.granularity == "filter" and hasattr(model, "groups"):
            from prunekit.cost import macs_ratio

            out["macs_ratio/expected"] = float(macs_ratio(model, "expected"))
            out["macs_ratio/hard"] = float(macs_ratio(model, "hard"))
        if self.config.quant_bits is not None or self.config.granularity != "filter":
            out["size_ratio"] = float(model_size_bits(model)["ratio"])
        return out

    def layer_metrics(self, model: nn.Module) -> list[dict[str, Any]]:
        return gate_layer_rows(model, state=self._flip_state)

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
        for h in getattr(model, "groups", None) or []:
            if isinstance(h.gate, DPPGate):
                h.gate.dpp.freeze_(h.gate._logits())
                h.set_mask(h.gate.deterministic().detach() > 0.5)
        for s in dpp_states(model):
            if not s.frozen:
                s.freeze_()
        self.report = {"size": model_size_bits(model), "structure": self.structure(model),
                       "sparsity": self.step_metrics(model).get("sparsity", 0.0)}
        logger.info("dpp finalize: %.0f bits (%.3f of dense), sparsity %.3f", self.report["size"]["bits"],
                    self.report["size"]["ratio"], self.report["sparsity"])
        if self.config.bake:
            bake_(model.model if hasattr(model, "groups") else model)
        return model

    # -- resume ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"tau": self.tau}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tau = float(state.get("tau", self.tau))
