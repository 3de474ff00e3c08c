"""Structured directional pruning (sDprun): a group-sparse dual-averaging optimizer (METHODS.md section 3).

sDprun builds on generalised regularised dual averaging (gRDA). Every sparsified parameter keeps an
accumulator ``a`` (initialised to the weights) and a step counter ``n``; each step with learning rate γ::

    a ← a − γ ∇L
    τ ← τ + c · γ^(μ+1/2) · (n^μ − (n−1)^μ)             (with constant γ: τ_n = c γ^(μ+1/2) n^μ)
    w_G = a_G · max(0, 1 − τ · sqrt(|G|) / ‖a_G‖₂)      for every structure G

A structure is an output filter of a conv (one row of ``W.reshape(C_out, -1)``) or a row of a linear
layer; with coupled groups from the engine (``prunekit.graph``) the rows of every conv that writes into
the same channel are concatenated into one structure and share one norm, so they reach zero together.
The ``sqrt(|G|)`` factor (|G| = number of weights in the structure) is *reconstructed*; switch it off with
``group_size_factor=False`` to threshold every structure with the bare τ.

Because the threshold acts on the accumulator, not on the weights, a structure that was zeroed can come
back when its accumulated gradient grows again: this is what lets the iterate slide along the flat valley
instead of being pushed off it as with a proximal L1 step. BN parameters, biases and the classifier are
trained with plain SGD (``c = 0``). Structures that end exactly zero are masked by
:meth:`SDPrunMethod.finalize` so that ``prunekit.collapse`` removes them with no fine-tuning.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.methods._sdprun_groups import (
    Member,
    classifier_names,
    coupled_param_groups,
    per_layer_groups,
    sdprun_param_groups,
    zero_channel_keep_mask,
)
from prunekit.methods.base import Method, register_method

logger = logging.getLogger(__name__)

GroupSpec = Mapping[str, Sequence[Member]] | Sequence[Sequence[Member]]



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
                state["tau"] += c * lr ** (mu + 0.5) * (n**mu - (n - 1) ** mu)
                stepped.add(id(p))
        for _, members in self._structures:
            live = [(p, i) for p, i in members if id(p) in stepped]
            if live:
                self._threshold(live)
        return loss

    def _threshold(self, members: list[Member]) -> None:
        """w = a · max(0, 1 − τ sqrt(|G|)/‖a_G‖) over the concatenated rows of ``members``."""
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
            tau = max(tau, state["tau"])
            use_size = use_size and self._hyper(p)["group_size_factor"]
        thr = tau * size.sqrt() if use_size else torch.full_like(size, tau)
        norm = sq.sqrt()
        scale = (1 - thr / norm.clamp_min(torch.finfo(norm.dtype).tiny)).clamp_min(0)
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

    def sparsity(self) -> float:
        """Fraction of structures that are exactly zero (0 when there are none)."""
        total = sum(int(members[0][1].numel()) for _, members in self._structures)
        zero = sum(int(v.numel()) for v in self.zero_groups().values())
        return zero / total if total else 0.0

    def structure_names(self) -> list[str]:
        return [name for name, _ in self._structures]


# -- the Method ---------------------------------------------------------------------------------------
@register_method
class SDPrunMethod(Method):
    """sDprun as a training recipe: no change to the model, the :class:`SDPrun` optimizer, masks at the end.

    ``TrainConfig.lr`` is γ (≤ 0.05 recommended); its momentum and weight decay are ignored (gRDA has none).
    """

    name = "sdprun"

    @dataclasses.dataclass(frozen=True)
    class Config:
        c: float = 5e-4
        mu: float = 0.51
        group_size_factor: bool = True  # reconstructed: τ·sqrt(|G|) (False: bare τ)
        coupled: bool = True  # share one norm across the engine's coupled channels

        def __post_init__(self) -> None:
            if self.c < 0:
                raise ConfigError(f"c must be >= 0, got {self.c}")
            if not 0 < self.mu < 1:
                raise ConfigError(f"mu must be in (0, 1), got {self.mu}")

    def __init__(self, config: Any = None, **options: Any) -> None:
        super().__init__(config, **options)
        self.example_input: torch.Tensor | None = None
        self.optimizer: SDPrun | None = None

    def prepare(self, model: nn.Module, example_input: torch.Tensor) -> nn.Module:
        self.example_input = example_input.detach().cpu()
        return model

    def make_optimizer(self, model: nn.Module, train_cfg: Any) -> SDPrun:
        cfg = self.config
        x = self.example_input
        if x is not None:
            x = x.to(next(model.parameters()).device)
        if cfg.coupled:
            groups = coupled_param_groups(model, x)
        else:
            groups = per_layer_groups(model, classifier_names(model, x))
        lr = float(getattr(train_cfg, "lr", 0.1))
        if lr > 0.05:
            logger.info("sdprun: lr %.3g > 0.05; the paper recommends <= 0.05 for stability", lr)
        self.optimizer = SDPrun(sdprun_param_groups(model, groups, cfg.c, cfg.mu), lr=lr, c=cfg.c, mu=cfg.mu,
                                group_size_factor=cfg.group_size_factor, groups=groups)
        return self.optimizer

    def step_metrics(self, model: nn.Module) -> dict[str, float]:
        return {"sparsity": self.optimizer.sparsity()} if self.optimizer is not None else {}

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
        """Gate the model and switch off every channel whose Conv/Linear output rows are all exactly zero.

        Returns the gated model (``prunekit.augment``) with hard masks set, ready for ``prunekit.collapse``.
        A removed channel no longer emits BN's constant β, so the collapsed network equals the masked
        one, not the unmasked network with zero filters. Without the engine the model is returned as is.
        """
        if self.example_input is None:
            return model
        try:
            from prunekit.augment import augment
            from prunekit.curve import _mask_gate
        except ImportError:
            logger.warning("sdprun.finalize: prunekit.augment unavailable; zero filters left in place")
            return model
        x = self.example_input.to(next(model.parameters()).device)
        gated = augment(model, x, gate=_mask_gate())
        removed = 0
        for g in gated.groups:
            keep = zero_channel_keep_mask(g)
            if not keep.all():
                g.set_mask(keep)
                removed += int((~keep).sum())
        logger.info("sdprun.finalize: masked %d zero channels", removed)
        return gated


def sdprun_optimizer(
    model: nn.Module, train_cfg: Any, example_input: torch.Tensor | None = None, **config: Any
) -> SDPrun:
    """The :class:`SDPrun` optimizer for ``model`` with ``train_cfg.lr`` (for ``--optimizer sdprun`` with any method).

    Args:
        model: the (possibly gated) model to train; its gate logits, BN and biases get plain SGD.
        train_cfg: a ``TrainConfig`` (only ``lr`` is read).
        example_input: ``[N, C, H, W]``; with it the engine's coupled groups share one norm, without it
            every Conv/Linear's rows are separate structures.
        **config: fields of :class:`SDPrunMethod.Config` (``c``, ``mu``, ``group_size_factor``, ``coupled``).
    """
    method = SDPrunMethod(**config)
    if example_input is not None:
        method.prepare(model, example_input)
    return method.make_optimizer(model, train_cfg)
