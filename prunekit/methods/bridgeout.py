"""Batch Bridgeout: multiplicative-Bernoulli weight noise that makes filters prunable (METHODS.md section 4).

During training every selected weight tensor is replaced by::

    w̃ = w + |w|^(q/2) ⊙ (m / (1 − p) − 1),    m ~ Bernoulli(1 − p) elementwise

so E[w̃] = w and Var[w̃] = p/(1 − p) · |w|^q. For a linear model with squared loss the expected loss is the
data-weighted bridge penalty Σ x² p/(1−p) |w|^q, and q < 2 pushes small weights to zero, so whole filters
become small and can be cut after training without fine-tuning (``prunekit.prune_curve``).

*Batch* variant: one mask per forward pass, shared by the whole mini-batch (the noise lives in the
weight, not in the activations). The gradient flows through the noise term too, since |w|^(q/2)
depends on w. q means the same everywhere: the noise scale is |w|^(q/2), its variance |w|^q.

Two traps of the reference code are avoided: one persistent ``torch.Generator`` (seeded from the run seed)
drives every mask, so the mask changes every step (the reference built a fresh generator each call and drew
the same mask forever); and there is one definition of q for every layer type.

Training protocol of the paper: p = 0.3, q = 1.5 on every 3×3 conv (not 1×1 shortcuts, not the classifier),
SGD with Nesterov momentum 0.9 and weight decay 5e-4 (``TrainConfig(nesterov=True, momentum=0.9,
weight_decay=5e-4)``; the method does not override the optimizer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit.errors import ConfigError
from prunekit.methods.base import Method, option, register_method
from prunekit.validate import check_range

FilterFn = Callable[[nn.Module, str], bool]


def bridgeout_noise(
    w: torch.Tensor, m: torch.Tensor, p: float, q: float, target: torch.Tensor | None = None
) -> torch.Tensor:
    """The Bridgeout perturbation ``|w|^(q/2) ⊙ (m/(1−p) − 1)`` (optionally only where ``target``).

    Args:
        w: weights, any shape.
        m: keep mask of the same shape (1 with probability 1 − p).
        p: drop probability in [0, 1).
        q: bridge exponent; the noise variance is ``p/(1−p)·|w|^q``.
        target: optional bool tensor broadcastable to ``w``: perturb only where True.

    Returns:
        The noise, same shape as ``w``; differentiable in ``w``. Exactly-zero weights get zero noise and
        zero gradient (``d|w|^(q/2)/dw`` is infinite at 0 for q < 2).
    """
    a = w.abs()
    # where() keeps the gradient at w = 0 finite: the clamped branch is never selected there.
    scale = torch.where(a > 0, a.clamp_min(1e-30).pow(q / 2), torch.zeros_like(a))
    noise = scale * (m.to(w.dtype) / (1 - p) - 1)
    if target is not None:
        noise = noise * target.to(w.dtype)
    return noise


def lowest_norm_kernels(w: torch.Tensor, fraction: float) -> torch.Tensor:
    """Bool mask of the ``fraction`` lowest-L2-norm kernels of every filter.

    Args:
        w: weight ``[C_out, C_in, *k]`` (a linear ``[out, in]`` has 1-element kernels).
        fraction: share of each filter's kernels to select, in [0, 1].

    Returns:
        ``[C_out, C_in, 1, ...]`` bool, broadcastable to ``w``; ``round(fraction·C_in)`` True per filter.
    """
    norms = w.detach().reshape(w.shape[0], w.shape[1], -1).norm(dim=2)  # [C_out, C_in]
    k = int(round(fraction * w.shape[1]))
    mask = torch.zeros_like(norms, dtype=torch.bool)
    if k > 0:
        idx = norms.argsort(dim=1)[:, :k]
        mask.scatter_(1, idx, True)
    return mask.reshape(mask.shape + (1,) * (w.dim() - 2))


class _NoiseSource:
    """One persistent generator per device, all seeded from one seed; shared by every noisy layer."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self._gens: dict[str, torch.Generator] = {}
        self._pending: dict[str, torch.Tensor] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._gens:
            g = torch.Generator(device=device)
            g.manual_seed(self.seed)
            if key in self._pending:
                g.set_state(self._pending.pop(key))
            self._gens[key] = g
        return self._gens[key]

    def state_dict(self) -> dict[str, Any]:
        states = {k: g.get_state() for k, g in self._gens.items()}
        return {"seed": self.seed, "states": {**self._pending, **states}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self._gens.clear()
        self._pending = dict(state.get("states", {}))


class BridgeoutParam(nn.Module):
    """Parametrization ``w -> w + bridgeout_noise(w)`` while training, identity in eval mode.

    Args:
        p: drop probability (0.3 in the paper).
        q: bridge exponent (1.5 in the paper).
        source: the shared noise source (persistent generator).
        targeted_fraction: if set, perturb only this share of the lowest-norm kernels of every filter.
    """

    def __init__(self, p: float, q: float, source: _NoiseSource, targeted_fraction: float | None = None) -> None:
        super().__init__()
        self.p = p
        self.q = q
        self.source = source
        self.targeted_fraction = targeted_fraction

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return w
        g = self.source.generator(w.device)
        m = torch.rand(w.shape, generator=g, device=w.device) >= self.p  # Bernoulli(1 − p)
        target = lowest_norm_kernels(w, self.targeted_fraction) if self.targeted_fraction is not None else None
        return w + bridgeout_noise(w, m, self.p, self.q, target)

    def extra_repr(self) -> str:
        t = f", targeted_fraction={self.targeted_fraction}" if self.targeted_fraction is not None else ""
        return f"p={self.p}, q={self.q}{t}"


def is_3x3_conv(module: nn.Module, name: str) -> bool:
    """The paper's default target: every Conv2d with a 3×3 kernel (1×1 shortcuts and classifiers excluded)."""
    return isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (3, 3)


def add_bridgeout_(
    model: nn.Module,
    p: float = 0.3,
    q: float = 1.5,
    seed: int = 0,
    targeted_fraction: float | None = None,
    filter_fn: FilterFn = is_3x3_conv,
) -> list[str]:
    """Register Bridgeout on the ``weight`` of every module for which ``filter_fn(module, name)`` is True.

    The module's own forward then uses the noisy weight (``torch.nn.utils.parametrize``); the clean weight
    is ``module.parametrizations.weight.original``. Returns the names of the modules changed.
    """
    _check(p, q, targeted_fraction)
    source = _NoiseSource(seed)
    names = []
    for name, m in list(model.named_modules()):
        if not filter_fn(m, name) or not isinstance(getattr(m, "weight", None), torch.Tensor):
            continue
        if parametrize.is_parametrized(m, "weight"):
            if any(isinstance(t, BridgeoutParam) for t in m.parametrizations.weight):
                continue
        parametrize.register_parametrization(m, "weight", BridgeoutParam(p, q, source, targeted_fraction))
        names.append(name)
    return names


def remove_bridgeout_(model: nn.Module) -> list[str]:
    """Remove every Bridgeout parametrization, leaving the clean weights as plain parameters.

    The clean weight stays the same ``nn.Parameter`` object, so an optimizer built on it keeps working.
    Unlike ``parametrize.remove_parametrizations``, this never edits the injected ``Parametrized<Class>``,
    which ``copy.deepcopy`` shares between a model and its copies (removing from a copy would break the
    original).
    """
    names = []
    for name, m in list(model.named_modules()):
        if not (parametrize.is_parametrized(m, "weight")
                and any(isinstance(t, BridgeoutParam) for t in m.parametrizations.weight)):
            continue
        if any(not isinstance(t, BridgeoutParam) for t in m.parametrizations.weight) or set(m.parametrizations) != {
            "weight"
        }:
            raise ConfigError(f"module {name!r} has other parametrizations; remove them first")
        original = m.parametrizations.weight.original
        m.__class__ = type(m).__bases__[0]  # parametrize injected a subclass of the module's own class
        del m._modules["parametrizations"]
        m.register_parameter("weight", original)
        names.append(name)
    return names


def _sources(model: nn.Module) -> list[_NoiseSource]:
    seen: dict[int, _NoiseSource] = {}
    for m in model.modules():
        if isinstance(m, BridgeoutParam):
            seen.setdefault(id(m.source), m.source)
    return list(seen.values())


def _check(p: float, q: float, targeted_fraction: float | None) -> None:
    check_range("p", p, 0, 1, high_open=True)
    check_range("q", q, 0, low_open=True)
    check_range("targeted_fraction", targeted_fraction, 0, 1, allow_none=True)


@register_method
class BridgeoutMethod(Method):
    """Batch Bridgeout as a training recipe: noise on 3×3 convs while training, plain weights at the end.

    Train with SGD, Nesterov momentum 0.9 and weight decay 5e-4 (the paper's protocol); then call
    ``prunekit.prune_curve`` to see how many filters can go without fine-tuning.

    Bridgeout is post hoc: it has no keep/remove rule of its own while training (``decision_masks`` is None);
    the filters are chosen afterwards by their norms (``prune_curve``). ``finalize`` removes the noise; the
    BatchNorm running statistics were gathered on the *noisy* network (the noise widens every conv's output
    distribution), so they do not describe the clean one: ``recalibrate_bn_after_finalize`` makes the training
    loop re-estimate them on training batches, with the noise off, before the final evaluation (measured on
    ResNet-20 / Fashion-MNIST in BENCHMARKS.md: stale statistics cost most of the unpruned accuracy).

    ``report`` (``result["method_report"]``): ``post_hoc`` (True), ``noisy_layers`` (layers that carried
    noise), ``p``, ``q``, ``targeted``; the loop adds ``bn_recalibrated`` and ``bn_batches``.
    """

    name = "bridgeout"
    summary = ("Batch Bridgeout: structured noise on 3×3 convolutions while training, so filters can be removed "
               "after training without fine-tuning")
    paper = "Pruning Convolutional Filters using Batch Bridgeout (2020)"
    post_hoc = True
    decision_rule = "none while training; filters are removed afterwards by their norms (prune_curve)"
    optimizer_help = "the run's optimizer (the paper: SGD, Nesterov momentum 0.9, weight decay 5e-4)"
    recalibrate_bn_after_finalize = True

    @dataclasses.dataclass(frozen=True)
    class Config:
        p: float = option(0.3, "noise strength: the weights are perturbed with scale ∝ p", low=0, high=1,
                          high_open=True)
        q: float = option(1.5, "the norm q of the bridge penalty the noise induces", low=0, low_open=True)
        targeted: bool = option(False, "noise only on the filters with the smallest norms (targeted Bridgeout)")
        targeted_fraction: float = option(0.75, "share of filters that get noise when targeted", low=0, high=1)
        seed: int | None = option(None, "noise seed; None: torch.initial_seed() at prepare time (the run seed)")

    def __init__(self, config: Any = None, filter_fn: FilterFn = is_3x3_conv, **options: Any) -> None:
        super().__init__(config, **options)
        self.filter_fn = filter_fn
        self.layers: list[str] = []
        self._model: nn.Module | None = None
        self._pending_state: dict[str, Any] | None = None
        self.report: dict[str, Any] = {}

    def prepare(self, model: nn.Module, example_input: torch.Tensor) -> nn.Module:
        cfg = self.config
        seed = cfg.seed if cfg.seed is not None else torch.initial_seed()
        self.layers = add_bridgeout_(model, cfg.p, cfg.q, seed, cfg.targeted_fraction if cfg.targeted else None,
                                     self.filter_fn)
        self._model = model
        if self._pending_state is not None:
            self.load_state_dict(self._pending_state)
        return model

    def finalize(self, model: nn.Module) -> nn.Module:
        """Remove the noise (clean weights stay the same parameters). BatchNorm statistics are re-estimated by
        the caller: the training loop does it (``recalibrate_bn_after_finalize``); outside it, call
        ``prunekit.bn.recalibrate_bn_(model, train_loader)``."""
        removed = remove_bridgeout_(model)
        cfg = self.config
        self.report = {"post_hoc": True, "noisy_layers": len(removed) or len(self.layers), "p": cfg.p, "q": cfg.q,
                       "targeted": cfg.targeted, "bn_recalibrated": False}
        return model

    def state_dict(self) -> dict[str, Any]:
        if self._model is None:
            return {}
        return {"noise": [s.state_dict() for s in _sources(self._model)]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if self._model is None:
            self._pending_state = state
            return
        for src, st in zip(_sources(self._model), state.get("noise", [])):
            src.load_state_dict(st)
