"""Structured directional pruning (sDprun): a group-sparse dual-averaging optimizer (METHODS.md section 3).

sDprun builds on generalised regularised dual averaging (gRDA). Every sparsified parameter keeps an
accumulator ``a`` (initialised to the weights) and a step counter ``n``; each step with learning rate γ::

    a ← a − γ ∇L
    τ ← τ + c · γ^(μ+1/2) · (n^μ − (n−1)^μ)             (with constant γ: τ_n = c γ^(μ+1/2) n^μ)
    w_G = a_G · max(0, 1 − τ · f_G / ‖a_G‖₂)            for every structure G (f_G = sqrt(|G|) or 1)

Because the threshold acts on the accumulator, not on the weights, a structure that was zeroed can come back
when its accumulated gradient grows again: this is what lets the iterate slide along the flat valley instead of
being pushed off it as with a proximal L1 step. Structures that end exactly zero are masked by
:meth:`SDPrunMethod.finalize` so that ``prunekit.collapse`` removes them: no calibration, no L2 pruning, no
fine-tuning.

**Structures: every parameter of a channel.** With the engine (``prunekit.graph``), structure ``j`` of a coupled
group holds row ``j`` of every conv/linear writing into channel ``j`` (all convs of a residual stream), their
biases, *and the γ/β of every BatchNorm on the channel* (``_sdprun_groups.coupled_structures``). A conv followed
by BatchNorm is scale-invariant: thresholding the filter alone shrinks it, its gradient grows as it shrinks, and
its accumulator is pushed back to just above τ (``tests/test_sdprun.py``: with c = 2 on a conv+BN, the filter-only
accumulators ride within 5 % above τ and no channel dies, while the same run with γ/β in the group zeroes 2 of 4
channels to an exactly-zero output). A zero channel then outputs exactly zero, so the collapsed network computes
what was trained. The classifier and parameters outside every group are plain SGD (``c = 0``).

**Constant lr.** gRDA's threshold theory assumes a constant γ: the sparsified parameter group carries
``"lr_schedule": False``, so the training loop's warm-up and lr schedule skip it (they still drive the plain-SGD
classifier). ``lr`` (method option, else ``TrainConfig.lr``) is that γ.

**``target_macs``: the optimizer itself lands on a budget.** With the paper's c = 5e-4 no group is zeroed at
prunekit's budgets (issue 14: ResNet-20, 300 steps, the smallest structure still 164× above τ). With ``target_macs`` (default
0.5; ``None`` keeps the paper's fixed ``c``) a controller sets τ after every step (the equivalent
``c = τ / (γ^(μ+1/2) n^μ)`` is reported):

1. after the first step τ = ``start`` × the smallest structure's zero point ``‖a_G‖/f_G`` (skips the dead zone);
2. then ``log τ += min(max_rate, gain · (r − r*))`` when positive, where r is the MACs ratio of the network
   without its exactly-zero channels (``relaxation_ratio``, the same number as ``macs_ratio/relaxation``) and r*
   goes from 1 down to ``target_macs`` in equal steps over the first ``ramp`` of the epochs. τ never decreases,
   as in gRDA: the optimizer decides *which* channels cross it (those whose accumulated gradient does not keep
   them above it), the controller only how fast τ rises;
3. a critical group (stem, stride-2, residual stream: closing it cuts the network) keeps its strongest channel:
   its own τ stops at (1 − 10⁻³) × that channel's zero point.

Defaults and the runs that chose them (ResNet-20 on a 2,000-image Fashion-MNIST subset, batch 128, 10 epochs = 160
steps, 1 thread; the planted problem is the one of ``tests/test_sdprun.py``):

* ``group_size_factor=False`` (bare τ; True is the *reconstructed* ``sqrt(|G|)``): with the factor every
  structure's zero point is its per-weight RMS, which Kaiming's fan-out init sets per layer (stage 3 ≈ 0.07,
  stage 1 ≈ 0.14) and which 150 steps of training move by < 1 %; τ then empties stage 3 first and the run died
  (lr 0.1, target 0.5: train loss 2.30 from epoch 4 on). With the bare τ every block-internal channel sits near
  one zero point (≈ 1.7) and residual streams (several convs and BNs) near 3.3, so they are reached last; the
  same run trained on (train loss 0.47 at the end).
* ``max_rate=0.01``, ``gain=1`` and the one-sided (never decreasing) τ: the channels of a layer start within a
  few % of each other (a knife edge). A two-sided controller at 5 %/step left one seed of a planted problem at
  chance with no channel zero and closed a critical group whole in another; at 1 %/step, two-sided, the
  planted problem of the tests flipped between MACs ratios 0.44 and 0.56 every step for its last 110 steps
  (τ ± 1 %). One-sided at 1 %/step, the loss's pushback separates the channels while τ creeps through the
  edge: the tests' noise channels are the ones zeroed (3 seeds).
* ``start=0.8``: τ begins just below the first zero point instead of 100× below it.
* ``ramp=0.25``: target 0.7, lr 0.3: ramp 0.5 → 78.7 % test (MACs ratio 0.667), ramp 0.25 → 80.7 % (0.690);
  lr 0.5: 78.8 % (0.688) → 79.7 % (0.679); dense, same budget (SGD momentum 0.9, cosine): 82.1 %. More epochs at
  the final structure recover more.
* ``lr`` (γ) 0.3 is recommended there (plain dual averaging has no momentum, so 0.05 learns ~20× slower than the
  dense recipe); it is a method option so that benches can set it without changing the classifier's lr.
* BatchNorm statistics are re-estimated after finalize (``recalibrate_bn_after_finalize``): channels near τ change
  scale faster than running statistics follow (val accuracy 0.60, 0.45, 0.72, 0.74 over the last four epochs
  while training accuracy rose 0.76 → 0.84; 78.7 % test after re-estimation). No weight changes: no fine-tuning.

Tried and dropped: normalising each member's share of the norm (γ then dominates and every channel of the network,
residual streams included, starts at one zero point: the whole net shrank together and was pinned at the edge);
controlling a shrink-weighted ("soft") MACs ratio (it settles with every channel half-shrunk and none exactly
zero).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.methods._gated import WidthConfig, decision_report, mask_ratio, round_masks, rounding_report
from prunekit.methods._sdprun_groups import (
    Member,
    classifier_names,
    coupled_param_groups,
    coupled_structures,
    per_layer_groups,
    sdprun_param_groups,
    zero_channel_keep_mask,
)
from prunekit.methods.base import Method, option, register_method
from prunekit.optim import register_model_optimizer

logger = logging.getLogger(__name__)

__all__ = ["SDPrun", "SDPrunMethod", "coupled_param_groups", "sdprun_optimizer", "sdprun_param_groups",
           "sdprun_threshold"]

GroupSpec = Mapping[str, Sequence[Member]] | Sequence[Sequence[Member]]

CRITICAL_MARGIN = 1e-3  # a critical group's strongest structure keeps at least this share of its accumulator


def sdprun_threshold(n: int, lr: float, c: float = 5e-4, mu: float = 0.51) -> float:
    """The gRDA threshold after ``n`` steps at constant learning rate ``lr``: ``c · lr^(μ+1/2) · n^μ``."""
    return c * lr ** (mu + 0.5) * n**mu


class SDPrun(torch.optim.Optimizer):
    """Group-sparse gRDA optimizer.

    Args:
        params: parameters or parameter-group dicts; a group may set its own ``lr``, ``c``, ``mu`` and
            ``group_size_factor``. Groups with ``c = 0`` are plain SGD (no accumulator, no threshold).
        lr: learning rate γ (the papers use 0.1; ≤ 0.05 is recommended for stability).
        c: threshold scale (5e-4 or 1e-3 in the paper).
        mu: threshold growth exponent μ (0.4 … 0.7; 0.51 typical).
        group_size_factor: multiply τ by ``sqrt(|G|)`` (reconstructed; see the module docstring).
        groups: coupled structures: ``{name: [(param, idxs), ...]}`` (or a list, named ``group<k>``). In one
            group every ``idxs`` has the same length S; structure ``j`` is the concatenation of the rows
            ``param[idxs[j]]`` of all members (``idxs[j] = -1``: that member has no row in structure ``j``). Rows of sparsified parameters not covered by ``groups`` are
            their own structures (named ``param<k>`` after the parameter's position); parameters of ``c = 0`` groups
            have none.

    No momentum and no weight decay, by design: both would move the weights away from the thresholded
    accumulator and destroy exact zeros.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.1,
        c: float = 5e-4,
        mu: float = 0.51,
        group_size_factor: bool = True,
        groups: GroupSpec | None = None,
        critical: Iterable[str] = (),
    ) -> None:
        if not lr > 0:
            raise ConfigError(f"lr must be > 0, got {lr}")
        if c < 0:
            raise ConfigError(f"c must be >= 0, got {c}")
        if not 0 < mu < 1:
            raise ConfigError(f"mu must be in (0, 1), got {mu}")
        super().__init__(params, dict(lr=lr, c=c, mu=mu, group_size_factor=group_size_factor))
        for g in self.param_groups:
            if g["c"] < 0:
                raise ConfigError(f"c must be >= 0, got {g['c']}")
        # Structures of parameters in c = 0 groups never change (those parameters are plain SGD).
        self._structures = self._build_structures(groups)
        self.critical = set(critical)

    # -- structures ------------------------------------------------------------------------------
    def _build_structures(self, groups: GroupSpec | None) -> list[tuple[str, list[Member]]]:
        params = [p for g in self.param_groups for p in g["params"]]
        index = {id(p): k for k, p in enumerate(params)}
        named = list(groups.items()) if isinstance(groups, Mapping) else [
            (f"group{k}", members) for k, members in enumerate(groups or [])
        ]
        covered: dict[int, torch.Tensor] = {}
        out: list[tuple[str, list[Member]]] = []
        for name, members in named:
            members = [(p, torch.as_tensor(i, dtype=torch.long).flatten()) for p, i in members]
            sizes = {int(i.numel()) for _, i in members}
            if len(sizes) != 1:
                raise ConfigError(f"groups[{name!r}] members must index the same number of rows, got {sorted(sizes)}")
            for p, i in members:
                if id(p) not in index:
                    raise ConfigError(f"groups[{name!r}] holds a tensor of shape {tuple(p.shape)} not in params")
                if i.numel() and (int(i.min()) < -1 or int(i.max()) >= p.shape[0]):
                    raise ConfigError(f"groups[{name!r}] indices out of range for dim 0 of size {p.shape[0]}")
                mask = covered.setdefault(id(p), torch.zeros(p.shape[0], dtype=torch.bool))
                mask[i[i >= 0]] = True
            out.append((name, members))
        sparse = {id(p) for g in self.param_groups if g["c"] > 0 for p in g["params"]}
        for k, p in enumerate(params):
            free = ~covered.get(id(p), torch.zeros(p.shape[0] if p.dim() else 1, dtype=torch.bool))
            if id(p) in sparse and free.any():
                out.append((f"param{k}", [(p, free.nonzero().flatten())]))
        return out

    def _hyper(self, p: torch.Tensor) -> dict[str, Any]:
        for g in self.param_groups:
            if any(q is p for q in g["params"]):
                return g
        raise KeyError("parameter not in optimizer")

    # -- the step ----------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One gRDA step: accumulate, grow τ, soft-threshold every structure from its accumulator."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        stepped: set[int] = set()
        for g in self.param_groups:
            lr, c, mu = g["lr"], g["c"], g["mu"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                if c == 0:
                    p.add_(p.grad, alpha=-lr)
                    continue
                state = self.state[p]
                if not state:
                    state["accumulator"] = p.detach().clone(memory_format=torch.preserve_format)
                    state["n"] = 0
                    state["tau"] = 0.0
                state["n"] += 1
                n = state["n"]
                state["accumulator"].add_(p.grad, alpha=-lr)
                if g.get("tau") is not None:  # set online by a controller (SDPrunMethod with target_macs)
                    state["tau"] = float(g["tau"])
                else:
                    state["tau"] += c * lr ** (mu + 0.5) * (n**mu - (n - 1) ** mu)
                stepped.add(id(p))
        for name, members in self._structures:
            live = [(p, i) for p, i in members if id(p) in stepped]
            if live:
                self._threshold(live, name in self.critical)
        return loss

    def _measure(self, members: list[Member]) -> tuple[list[Any], torch.Tensor, torch.Tensor, float]:
        """Rows of the accumulators of one structure, its norm ``‖a_G‖``, its threshold factor (``sqrt(|G|)``,
        or 1 without ``group_size_factor``) and τ."""
        sq: torch.Tensor | None = None
        size: torch.Tensor | None = None
        tau = 0.0
        use_size = True
        rows = []
        for p, i in members:
            state = self.state[p]
            a = state["accumulator"]
            i = i.to(a.device)
            valid = i >= 0
            flat = a.reshape(a.shape[0], -1) if a.dim() else a.reshape(1, 1)
            r = flat[i.clamp_min(0)]
            rows.append((p, i, valid, r))
            s = r.float().pow(2).sum(1) * valid
            n = valid.float() * r.shape[1]
            sq = s if sq is None else sq + s
            size = n if size is None else size + n
            tau = max(tau, float(state["tau"]))
            use_size = use_size and self._hyper(p)["group_size_factor"]
        factor = size.sqrt() if use_size else torch.ones_like(size)
        return rows, sq.sqrt(), factor, tau

    def _threshold(self, members: list[Member], critical: bool = False) -> None:
        """w = a · max(0, 1 − τ sqrt(|G|)/‖a_G‖) over the concatenated rows of ``members``.

        ``critical``: the group must keep a channel (stem, stride-2, residual sum): its τ stops just below
        the zero point of its strongest structure, which keeps a small non-zero scale.
        """
        rows, norm, factor, tau = self._measure(members)
        norm = norm.clamp_min(torch.finfo(norm.dtype).tiny)
        if critical and norm.numel():
            tau = min(tau, (1 - CRITICAL_MARGIN) * float((norm / factor).max()))
        scale = (1 - tau * factor / norm).clamp_min(0)
        for p, i, valid, r in rows:
            w = (r * scale.to(r.dtype).unsqueeze(1))[valid]
            if p.dim():
                p.index_copy_(0, i[valid], w.reshape((-1,) + tuple(p.shape[1:])))
            else:
                p.copy_(w.reshape(()))

    # -- reporting ----------------------------------------------------------------------------------
    def zero_groups(self) -> dict[str, torch.Tensor]:
        """Structures whose weights are all exactly zero now.

        Returns:
            ``{group name: LongTensor of structure positions in that group}`` for groups with at least one.
        """
        out = {}
        for name, members in self._structures:
            zero = None
            for p, i in members:
                i = i.to(p.device)
                r = p.detach().reshape(p.shape[0], -1)[i.clamp_min(0)] if p.dim() else p.detach().reshape(1, 1)
                z = ((r == 0).all(1) | (i < 0)).cpu()
                zero = z if zero is None else zero & z
            if zero is not None and zero.any():
                out[name] = zero.nonzero().flatten()
        return out

    def zero_thresholds(self) -> dict[str, torch.Tensor]:
        """Per structure, the threshold τ at or above which it is exactly zero now: ``‖a_G‖ / sqrt(|G|)``
        (``‖a_G‖`` without the group-size factor), from the accumulators (empty before the first step)."""
        out = {}
        for name, members in self._structures:
            if all(self.state.get(p) for p, _ in members):
                _, norm, factor, _ = self._measure(members)
                out[name] = (norm / factor).cpu()
        return out

    def tau(self) -> float:
        """The current threshold τ (the largest over the sparsified parameters; 0 before the first step)."""
        return max((float(self.state[p]["tau"]) for g in self.param_groups if g["c"] > 0 for p in g["params"]
                    if self.state.get(p)), default=0.0)

    def sparsity(self) -> float:
        """Fraction of structures that are exactly zero (0 when there are none)."""
        total = sum(int(members[0][1].numel()) for _, members in self._structures)
        zero = sum(int(v.numel()) for v in self.zero_groups().values())
        return zero / total if total else 0.0

    def structure_names(self) -> list[str]:
        return [name for name, _ in self._structures]


def _is_gated(model: nn.Module) -> bool:
    return hasattr(model, "groups") and hasattr(model, "block_gates")


# -- the Method ---------------------------------------------------------------------------------------
@register_method
class SDPrunMethod(Method):
    """sDprun as a training recipe: no change to the model, the :class:`SDPrun` optimizer, masks at the end.

    γ (``lr``, else ``TrainConfig.lr``) is kept constant for the sparsified parameters (the loop's warm-up and
    schedule drive only the plain-SGD classifier); momentum and weight decay are ignored (gRDA has none). With
    ``target_macs`` (the default) a controller sets the threshold so that the optimizer's own exactly-zero
    channels land on the target; ``target_macs=None`` keeps the paper's fixed c (see the module docstring).
    """

    name = "sdprun"
    summary = ("sDprun: a dual-averaging optimizer with group soft-thresholds zeroes whole channels while "
               "training; the exactly-zero groups are removed")
    paper = "Structured Directional Pruning via Perturbation Orthogonal Projection (2021)"
    target_option = "target_macs"
    metric_help = {"threshold": "the soft-threshold τ of the dual averaging (the controller moves it to the target)"}
    decision_rule = "remove a channel whose group of parameters (filters, BN γ/β, biases) is exactly zero"
    optimizer_help = "its own SDPrun optimizer (generalised regularised dual averaging) at a constant lr"
    bench_variants = ({"lr": 0.3},)
    # the running statistics were gathered while the threshold moved the channels' scales
    recalibrate_bn_after_finalize = True

    @dataclasses.dataclass(frozen=True)
    class Config(WidthConfig):
        c: float = option(5e-4, "the paper's c of τ = c·γ^(1/2)·t^μ (used with target_macs=None)", low=0)
        mu: float = option(0.51, "the paper's μ: how fast τ grows with the steps t", low=0, high=1, low_open=True,
                           high_open=True)
        group_size_factor: bool = option(False, "True: τ·sqrt(|G|) (reconstructed); False: bare τ (see the module "
                                         "docstring)")
        coupled: bool = option(True, "share one norm across the engine's coupled channels (and their BN γ/β)")
        target_macs: float | None = option(0.5, "MACs of the non-zero structure; None: the paper's fixed c",
                                           unit="fraction of dense MACs", low=0, high=1, low_open=True, paper="None")
        ramp: float = option(0.25, "share of the epochs over which the controller's target goes from 1 to "
                             "target_macs", low=0, high=1)
        gain: float = option(1.0, "controller: log τ += gain · (MACs ratio − target) every step ...", low=0,
                             low_open=True)
        max_rate: float = option(0.01, "... by at most this much (τ grows by at most ~1 % a step)", low=0,
                                 low_open=True)
        start: float = option(0.8, "τ after the first step: this fraction of the smallest structure's zero point",
                              low=0, high=1, low_open=True)
        lr: float | None = option(None, "γ, constant, of the sparsified parameters; None: TrainConfig.lr", low=0,
                                  low_open=True)

    def __init__(self, config: Any = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.example_input: torch.Tensor | None = None
        self.optimizer: SDPrun | None = None
        self.report: dict[str, Any] = {}
        self._twin: Any = None  # a structural copy (GatedModel) that prices a set of zero channels in MACs
        self._modules: dict[str, nn.Module] = {}
        self._epoch, self._epochs = 0, 1

    def prepare(self, model: nn.Module, example_input: torch.Tensor) -> nn.Module:
        self.example_input = example_input.detach().cpu()
        return model

    def make_optimizer(self, model: nn.Module, train_cfg: Any) -> SDPrun:
        cfg = self.config
        x = self.example_input
        if x is not None:
            x = x.to(next(model.parameters()).device)
        groups, self._twin = coupled_structures(model, x)
        if not cfg.coupled:
            groups = per_layer_groups(model, classifier_names(model, x))
        self._modules = dict(model.named_modules())
        lr = float(getattr(train_cfg, "lr", 0.1))
        param_groups = sdprun_param_groups(model, groups, cfg.c, cfg.mu)
        if cfg.lr is not None:
            param_groups[0]["lr"] = float(cfg.lr)
        if cfg.target_macs is not None:
            param_groups[0]["tau"] = 0.0  # the controller sets it after every step
        critical = [str(g.name) for g in self._twin.groups if g.critical] if self._twin is not None else []
        self.optimizer = SDPrun(param_groups, lr=lr, c=cfg.c, mu=cfg.mu, group_size_factor=cfg.group_size_factor,
                                groups=groups, critical=critical)
        return self.optimizer

    # -- the controller ----------------------------------------------------------------------------------
    def on_epoch_start(self, model: nn.Module, epoch: int, num_epochs: int) -> None:
        self._epoch, self._epochs = epoch, max(num_epochs, 1)

    def target_now(self) -> float:
        """The controller's target this epoch: from 1 down to ``target_macs`` in equal steps over the first
        ``ramp`` of the epochs (the whole target from the first epoch when ``ramp = 0``)."""
        t = self.config.target_macs
        if t is None:
            return 1.0
        ramp_epochs = math.ceil(self.config.ramp * self._epochs)
        if ramp_epochs <= 0:
            return float(t)
        return 1.0 - (1.0 - float(t)) * min(1.0, (self._epoch + 1) / ramp_epochs)

    def after_step(self, model: nn.Module, step: int, epoch: int) -> None:
        if self.config.target_macs is None or self.optimizer is None:
            return
        cfg = self.config
        group = self.optimizer.param_groups[0]
        edges = self.optimizer.zero_thresholds()
        if not edges:
            return
        tau = float(group.get("tau") or 0.0)
        if tau <= 0:  # first step: start at a fraction of the smallest structure's zero point
            tau = cfg.start * min(float(v.min()) for v in edges.values() if v.numel())
        else:
            err = cfg.gain * (self.relaxation_ratio() - self.target_now())
            tau *= math.exp(min(cfg.max_rate, max(0.0, err)))  # τ never decreases, as in gRDA
        group["tau"] = tau
        n = max((int(self.optimizer.state[p]["n"]) for p in group["params"] if self.optimizer.state.get(p)), default=1)
        group["c"] = tau / (group["lr"] ** (group["mu"] + 0.5) * n ** group["mu"])

    # -- reporting ----------------------------------------------------------------------------------
    def decision_masks(self, model: nn.Module) -> list[torch.Tensor] | None:
        """Keep masks of the channels that are not exactly zero, per group of ``model.groups`` (a GatedModel,
        after :meth:`finalize`) or of the structural copy built by :meth:`make_optimizer` (the plain model
        being trained). None without the engine."""
        whole = self.config.coupled
        if _is_gated(model):
            return [zero_channel_keep_mask(g, whole) for g in model.groups]
        if self._twin is None:
            return None
        return [zero_channel_keep_mask(g, whole, self._modules) for g in self._twin.groups]

    def relaxation_ratio(self) -> float:
        """MACs of the trained network without its exactly-zero channels ÷ dense MACs (1 − sparsity without
        the engine)."""
        if self._twin is None:
            return 1.0 - (self.optimizer.sparsity() if self.optimizer is not None else 0.0)
        masks = [zero_channel_keep_mask(g, self.config.coupled, self._modules) for g in self._twin.groups]
        return mask_ratio(self._twin, masks)

    def step_metrics(self, model: nn.Module) -> dict[str, float]:
        if self.optimizer is None:
            return {}
        out = {"sparsity": self.optimizer.sparsity(), "threshold": self.optimizer.tau()}
        if _is_gated(model):  # after finalize: the masks set on the gated model
            out["macs_ratio/relaxation"] = mask_ratio(model, self.decision_masks(model))
        elif self._twin is not None:
            out["macs_ratio/relaxation"] = self.relaxation_ratio()
        return out

    def layer_metrics(self, model: nn.Module) -> list[dict[str, Any]]:
        if self.optimizer is None:
            return []
        zero = self.optimizer.zero_groups()
        rows = []
        for name, members in self.optimizer._structures:
            size = int(members[0][1].numel())
            z = int(zero[name].numel()) if name in zero else 0
            rows.append({"layer": name, "name": "keep_ratio", "value": 1 - z / max(size, 1)})
        return rows

    def finalize(self, model: nn.Module) -> nn.Module:
        """Gate the model and switch off every channel whose parameters are all exactly zero.

        Returns the gated model (``prunekit.augment``) with hard masks set, ready for ``prunekit.collapse``.
        With the coupled structures (default) a zero channel outputs exactly zero, so the masked network
        computes what the trained one does; with ``coupled=False`` only the Conv/Linear rows are zero and a
        removed channel no longer emits BN's constant β. No calibration runs: ``self.report`` records
        ``relaxation_macs_ratio`` (MACs of the masked network ÷ dense), ``calibration_flips = 0.0``,
        ``zeroed_groups`` (channels removed), ``structures``, ``c`` and ``threshold`` (the final τ).
        Without the engine the model is returned as is.
        """
        if self.example_input is None:
            return model
        try:
            from prunekit.augment import augment
            from prunekit.gates import mask_gate_name
        except ImportError:
            logger.warning("sdprun.finalize: prunekit.augment unavailable; zero filters left in place")
            return model
        x = self.example_input.to(next(model.parameters()).device)
        gated = augment(model, x, gate=mask_gate_name())
        masks = self.decision_masks(gated)
        final = masks
        if self.config.round_to > 1:
            # rounding up keeps exactly-zero channels (their output is zero: the function is unchanged); rounding
            # down removes the smallest non-zero ones (ranked by their filters' L2 norms), with no fine-tuning
            from prunekit.methods.baselines import filter_norms

            final = round_masks(masks, filter_norms(gated, 2.0), self.config.round_to)
        removed = 0
        for g, keep in zip(gated.groups, final):
            if not keep.all():
                g.set_mask(keep)
                removed += int((~keep).sum())
        self.report = {
            **decision_report(gated, masks, final),
            "zeroed_groups": removed,
            "structures": sum(int(g.size) for g in gated.groups),
            "target_macs": self.config.target_macs,
            "c": float(self.optimizer.param_groups[0]["c"]) if self.optimizer is not None else self.config.c,
            "threshold": self.optimizer.tau() if self.optimizer is not None else 0.0,
        }
        if self.config.round_to > 1:
            self.report["rounding"] = rounding_report(gated, masks, final, self.config.round_to)
        logger.info("sdprun.finalize: masked %d zero channels, MACs ratio %.3f", removed,
                    self.report["relaxation_macs_ratio"])
        return gated


def sdprun_optimizer(
    model: nn.Module, train_cfg: Any, example_input: torch.Tensor | None = None, **config: Any
) -> SDPrun:
    """The :class:`SDPrun` optimizer for ``model`` with ``train_cfg.lr`` (for ``--optimizer sdprun`` with any method).

    Without the :class:`SDPrunMethod` around it no controller runs, so the threshold follows the paper's
    fixed ``c`` (``target_macs=None`` unless given).

    Args:
        model: the (possibly gated) model to train; its gate logits and the classifier get plain SGD.
        train_cfg: a ``TrainConfig`` (only ``lr`` is read).
        example_input: ``[N, C, H, W]``; with it the engine's coupled groups share one norm, without it
            every Conv/Linear's rows are separate structures.
        **config: fields of :class:`SDPrunMethod.Config` (``c``, ``mu``, ``group_size_factor``, ``coupled``).
    """
    config.setdefault("target_macs", None)
    method = SDPrunMethod(**config)
    if example_input is not None:
        method.prepare(model, example_input)
    return method.make_optimizer(model, train_cfg)



register_model_optimizer("sdprun", sdprun_optimizer)  # --optimizer sdprun with any method