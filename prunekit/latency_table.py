"""A per-layer latency table of a network on this device, and the relaxed latency it gives a gated network.

MACs are not latency: a conv's time is not bilinear in its widths (fixed per-call cost, kernels that like multiples
of 8, memory-bound 1×1 convs), and the non-conv layers cost time too. The table times every conv/linear of the
network *alone*, at its input size, batch and thread count, over a small grid of (input width, output width)
points, and the relaxed latency of a gated network is the sum over its layers of a **bilinear interpolation** of
that grid at the layer's soft channel counts (``prunekit.cost.CostModel.channels``): differentiable in the gate
values like the relaxed MACs, and exact on grid points.

* **Grid**: per gated width C, ``GRID_FRACTIONS`` of C rounded up to a multiple of 8 (of 4 below 32 channels)
  plus C, and 0 (a layer with no input or output channel is removed: 0 ms). A width no group can change (the
  image's channels, the classes) is a single point. Depthwise convs have one axis (in = out), grouped convs are
  timed whole and scaled by their MACs.
* **Timing**: every distinct layer (same type, widths, kernel, stride, input size) is timed once; all grid points
  are timed in turn, ``rounds`` times (interleaved, so that a change of machine load hits them all alike), and the
  fastest run kept (load only adds time; a slow outlier at a narrow width would otherwise spread to the wider
  points through the monotone table). The table is made monotone (a narrower layer never costs more: cumulative maximum along both
  axes), so the interpolation is monotone too and the relaxation never rewards keeping a channel.
* **Whole network**: the layers timed alone are not the network (BatchNorm, activations, pooling, additions and
  the framework's per-call cost are not timed, and a layer inside the network need not speed up as it does alone).
  The dense network is timed whole in the same rounds; the predicted ratio is ``c + (1 − c)·S(n)`` with S the
  width-dependent part (the layer sum, plus the untimed rest in proportion to the output activations, ÷ its dense
  value) and c the share of the dense latency that does not shrink (:class:`LatencyTable`). c is solved from a
  **reference network** (every group at half width, collapsed, timed in the same rounds: the table then predicts
  it exactly), or, without one, from the rest at a second batch size (4× or ¼; noisier).
* **Cache**: the table is stored as JSON in ``$XDG_CACHE_HOME/prunekit/latency`` (``~/.cache/prunekit/latency``),
  named by a hash of the layers, the input size, batch, threads, the CPU and the torch version; a second build
  with the same key reads it and times nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit._device import torch_threads
from prunekit.errors import ConfigError

logger = logging.getLogger(__name__)

GRID_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
Reference = tuple[dict[str, tuple[float, float]], nn.Module]  # (channel counts, the network at those counts)
TABLE_VERSION = 2
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVTS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/prunekit/latency`` or ``~/.cache/prunekit/latency`` (created when a table is written)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prunekit" / "latency"


def width_grid(c: int, fractions: tuple[float, ...] = GRID_FRACTIONS) -> list[int]:
    """The timed widths of a dimension of ``c`` channels: 0, then each fraction of ``c`` rounded up to a multiple of
    8 (4 below 32 channels, 1 below 8), then ``c``."""
    step = 8 if c >= 32 else 4 if c >= 8 else 1
    points = {min(c, max(step, step * math.ceil(f * c / step))) for f in fractions}
    return [0, *sorted(points | {c})]


# -- what decides a layer's time ----------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerSpec:
    """One conv/linear as the table times it: its type, full widths and everything else that sets its time.

    ``rest`` is the input shape without batch and channels (spatial size; a linear's leading dims); ``mode`` is
    ``"2d"`` (in × out grid), ``"depthwise"`` (one axis) or ``"scaled"`` (grouped: timed whole, scaled by MACs).
    """

    type: str
    c_in: int
    c_out: int
    rest: tuple[int, ...]
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    output_padding: tuple[int, ...] = ()
    groups: int = 1
    bias: bool = True
    mode: str = "2d"

    @property
    def key(self) -> str:
        return json.dumps([self.type, self.c_in, self.c_out, self.rest, self.kernel, self.stride, self.padding,
                           self.dilation, self.output_padding, self.groups, self.bias, self.mode])

    def build(self, c_in: int, c_out: int, batch: int) -> tuple[nn.Module, torch.Tensor]:
        """The layer at widths (``c_in``, ``c_out``) and an input batch for it (eval mode)."""
        if self.type == "Linear":
            return nn.Linear(c_in, c_out, bias=self.bias).eval(), torch.randn(batch, *self.rest, c_in)
        cls = getattr(nn, self.type)
        if self.mode == "depthwise":
            c_in = c_out
        groups = c_out if self.mode == "depthwise" else self.groups
        kw: dict[str, Any] = {"stride": self.stride, "padding": self.padding, "dilation": self.dilation,
                              "groups": groups, "bias": self.bias}
        if self.output_padding:
            kw["output_padding"] = self.output_padding
        mod = cls(c_in, c_out, self.kernel, **kw).eval()
        return mod, torch.randn(batch, c_in, *self.rest)


def _spec(mod: nn.Module, ishape: torch.Size) -> LayerSpec | None:
    if isinstance(mod, nn.Linear):
        return LayerSpec("Linear", mod.in_features, mod.out_features, tuple(ishape[1:-1]), bias=mod.bias is not None)
    if not isinstance(mod, _CONVS + _CONVTS) or isinstance(mod.padding, str):
        return None
    depthwise = mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels
    mode = "depthwise" if depthwise else "scaled" if mod.groups > 1 else "2d"
    return LayerSpec(type(mod).__name__, mod.in_channels, mod.out_channels, tuple(ishape[2:]), tuple(mod.kernel_size),
                     tuple(mod.stride), tuple(mod.padding), tuple(mod.dilation),
                     tuple(getattr(mod, "output_padding", ())) if isinstance(mod, _CONVTS) else (), mod.groups,
                     mod.bias is not None, mode)


def layer_specs(model: nn.Module, example_input: torch.Tensor) -> dict[str, tuple[LayerSpec, int]]:
    """Every conv/linear of ``model`` that runs on ``example_input`` -> (its :class:`LayerSpec`, output elements per
    sample) (one traced forward of the first sample)."""
    shapes: dict[str, tuple[torch.Size, int]] = {}

    def record(name: str, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:  # None: output stays
        shapes.setdefault(name, (inputs[0].shape, output.numel()))

    hooks = [m.register_forward_hook(lambda m, i, o, n=name: record(n, i, o))
             for name, m in model.named_modules() if isinstance(m, _CONVS + _CONVTS + (nn.Linear,))]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input[:1])
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    modules = dict(model.named_modules())
    return {n: (s, numel) for n, (shape, numel) in shapes.items() if (s := _spec(modules[n], shape)) is not None}


# -- interpolation -----------------------------------------------------------------------------------------
def _bracket(grid: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell index i (grid[i] ≤ n ≤ grid[i+1]) and the differentiable position t in it; a 1-point grid: (0, 0)."""
    if grid.numel() == 1:
        return torch.zeros((), dtype=torch.long), torch.zeros(())
    n = n.clamp(float(grid[0]), float(grid[-1]))
    i = (torch.searchsorted(grid, n.detach().reshape(1), right=True) - 1).clamp(0, grid.numel() - 2)[0]
    return i, (n - grid[i]) / (grid[i + 1] - grid[i])


def interpolate(grid_in: torch.Tensor, grid_out: torch.Tensor, ms: torch.Tensor, n_in: Any, n_out: Any) -> torch.Tensor:
    """Bilinear interpolation of ``ms`` [len(grid_in), len(grid_out)] at soft widths (``n_in``, ``n_out``).

    Exact on grid points, continuous, differentiable in ``n_in``/``n_out`` (0-d tensors or floats), monotone where
    ``ms`` is monotone along both axes; widths outside the grid are clamped to it.
    """
    n_in, n_out = torch.as_tensor(n_in, dtype=ms.dtype), torch.as_tensor(n_out, dtype=ms.dtype)
    i, s = _bracket(grid_in, n_in)
    j, t = _bracket(grid_out, n_out)
    i1, j1 = (i + 1).clamp(max=grid_in.numel() - 1), (j + 1).clamp(max=grid_out.numel() - 1)
    return ((1 - s) * (1 - t) * ms[i, j] + s * (1 - t) * ms[i1, j] + (1 - s) * t * ms[i, j1] + s * t * ms[i1, j1])


@dataclass
class _Entry:
    grid_in: torch.Tensor  # float [I]
    grid_out: torch.Tensor  # float [O]
    ms: torch.Tensor  # float [I, O], monotone along both axes
    scaled: bool = False  # a grouped conv timed whole: ms[-1, -1] scaled by (n_in/c_in)(n_out/c_out), its MACs


class LatencyTable:
    """Timed layers of one network on one device, input size, batch and thread count.

    The predicted latency ratio (slim ÷ dense) at soft widths n is ``c + (1 − c) · S(n)``: ``S(n) = (Σ_layers T_l(n)
    + rest · a(n)) ÷ (Σ_layers T_l(full) + rest)`` is what scales with the widths (the interpolated layer times, and
    the untimed rest ``rest = dense − layer sum`` of BatchNorm, activations and additions in proportion to the layers'
    soft output activations ``a(n)``), and ``c`` (:attr:`const_share`) the share of the dense latency that does not
    shrink at all (per-call costs; layers that run slower inside the network than alone).

    Attributes:
        key: what the table is valid for (layers and grids hashed, input shape, batch, threads, CPU, torch version).
        layers: layer name -> entry key (layers with the same spec and grid share one entry).
        outputs: layer name -> output elements per sample (the weights of a(n)).
        dense_ms: the whole dense network, measured (ms per batch).
        const_share: c in [0, 1).
        layer_sum_ms: the sum of the layer entries at full width; ``rest_ms`` = max(dense − layer sum, 0).
        timed: whether this object timed its layers (False: read from the cache).
    """

    def __init__(self, key: dict[str, Any], layers: dict[str, str], entries: dict[str, _Entry], dense_ms: float,
                 const_share: float = 0.0, outputs: dict[str, float] | None = None, timed: bool = False) -> None:
        self.key, self.layers, self.entries, self.timed = key, layers, entries, timed
        self.dense_ms, self.const_share = float(dense_ms), float(min(max(const_share, 0.0), 1.0 - 1e-6))
        self.outputs = dict(outputs or {n: 1.0 for n in layers})
        self.layer_sum_ms = float(sum(self.layer_ms(n, *self._full(n)) for n in layers))
        self.rest_ms = max(self.dense_ms - self.layer_sum_ms, 0.0)

    @property
    def const_ms(self) -> float:
        """The part of the dense latency that does not shrink with the widths (ms)."""
        return self.const_share * self.dense_ms

    def _full(self, name: str) -> tuple[float, float]:
        e = self.entries[self.layers[name]]
        return float(e.grid_in[-1]), float(e.grid_out[-1])

    def layer_ms(self, name: str, n_in: Any, n_out: Any) -> torch.Tensor:
        """Interpolated time of layer ``name`` alone at soft widths (``n_in``, ``n_out``), ms (differentiable)."""
        e = self.entries[self.layers[name]]
        if e.scaled:
            f = torch.as_tensor(n_in, dtype=torch.float64) / e.grid_in[-1] * n_out / e.grid_out[-1]
            return e.ms[-1, -1] * f
        return interpolate(e.grid_in, e.grid_out, e.ms, n_in, n_out)

    def _parts(self, counts: dict[str, tuple[Any, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(Σ layer times in ms, output activations ÷ dense) at soft channel counts (differentiable)."""
        total: torch.Tensor | float = 0.0
        act: torch.Tensor | float = 0.0
        for name in self.layers:
            n_in, n_out = counts.get(name, self._full(name))
            total = total + self.layer_ms(name, n_in, n_out)
            act = act + self.outputs[name] * torch.as_tensor(n_out, dtype=torch.float64) / self._full(name)[1]
        return torch.as_tensor(total), torch.as_tensor(act) / sum(self.outputs.values())

    def scalable(self, counts: dict[str, tuple[Any, Any]]) -> torch.Tensor:
        """S(n): the part of the prediction that scales with the widths, ÷ its dense value (float64)."""
        layers, act = self._parts(counts)
        return (layers + self.rest_ms * act) / max(self.layer_sum_ms + self.rest_ms, 1e-12)

    def ratio(self, counts: dict[str, tuple[Any, Any]]) -> torch.Tensor:
        """Predicted latency ÷ dense latency at soft channel counts ``{layer: (n_in, n_out)}`` (a timed layer not in
        ``counts``: full width); float32, differentiable, monotone in every width, 1 at full width."""
        return (self.const_share + (1.0 - self.const_share) * self.scalable(counts)).float()

    def predict_ms(self, counts: dict[str, tuple[Any, Any]]) -> float:
        """Predicted whole-network latency (ms) at ``counts``: the ratio times the measured dense latency."""
        return float(self.ratio(counts).detach()) * self.dense_ms

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "layers": self.layers, "outputs": self.outputs, "dense_ms": self.dense_ms,
                "const_share": self.const_share,
                "entries": {k: {"grid_in": e.grid_in.tolist(), "grid_out": e.grid_out.tolist(), "ms": e.ms.tolist(),
                                "scaled": e.scaled} for k, e in self.entries.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyTable:
        f64 = torch.float64
        entries = {k: _Entry(torch.tensor(e["grid_in"], dtype=f64), torch.tensor(e["grid_out"], dtype=f64),
                             torch.tensor(e["ms"], dtype=f64), e["scaled"]) for k, e in d["entries"].items()}
        return cls(d["key"], d["layers"], entries, d["dense_ms"], d["const_share"], d["outputs"])


def fit_const_share(table: LatencyTable, counts: dict[str, tuple[Any, Any]], measured_ratio: float) -> float:
    """The constant share c that makes ``table`` predict ``measured_ratio`` (a pruned network's latency ÷ the dense
    one's, timed in the same rounds) at ``counts``: c + (1 − c)·S = measured, clamped to [0, 1)."""
    s = float(table.scalable(counts))
    if s >= 1.0 - 1e-9:
        return 0.0
    return float(min(max((measured_ratio - s) / (1.0 - s), 0.0), 1.0 - 1e-6))


def split_rest(rest_a: float, batch_a: int, rest_b: float, batch_b: int) -> float:
    """The part of the untimed rest that does not grow with the batch, from the rest at two batch sizes (a line
    through both, clamped to [0, max(rest_a, 0)]); ``rest_a``'s batch is the table's."""
    if batch_a == batch_b:
        return 0.0
    per_sample = (rest_b - rest_a) / (batch_b - batch_a)
    return float(min(max(rest_a - per_sample * batch_a, 0.0), max(rest_a, 0.0)))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table_key(layers: dict[str, str], example_input: torch.Tensor, batch: int, threads: int,
              fractions: tuple[float, ...] = GRID_FRACTIONS) -> dict[str, Any]:
    """What a table is valid for (``layers``: name -> spec and grid); its hash names the cache file."""
    layers_hash = hashlib.sha1(json.dumps(sorted(layers.items())).encode()).hexdigest()[:16]
    return {"version": TABLE_VERSION, "layers": layers_hash, "input": list(example_input.shape[1:]), "batch": int(batch),
            "threads": int(threads), "device": f"cpu: {_cpu_name()}", "torch": torch.__version__.split("+")[0],
            "grid": list(fractions)}


def _key_path(key: dict[str, Any], directory: Path) -> Path:
    return directory / (hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20] + ".json")


def _grids(spec: LayerSpec, varies: tuple[bool, bool], fractions: tuple[float, ...]) -> tuple[list[int], list[int]]:
    if spec.mode == "scaled":
        return [spec.c_in], [spec.c_out]
    gi = width_grid(spec.c_in, fractions) if varies[0] and spec.mode == "2d" else [spec.c_in]
    go = width_grid(spec.c_out, fractions) if varies[1] or spec.mode == "depthwise" else [spec.c_out]
    return gi, go


@torch.inference_mode()
def _time_points(runs: list[tuple[nn.Module, torch.Tensor]], rounds: int, repeats: int) -> list[float]:
    """Fastest ms of each (module, input) over ``rounds`` × ``repeats`` runs, timed interleaved (every round times every
    run ``repeats`` times). The minimum, not the median: a shared machine's load only ever adds time, and one slow
    sample at a small width would spread to every wider grid point through the monotone table."""
    for mod, x in runs:  # warm-up (allocator, oneDNN primitive cache)
        mod(x)
    times: list[list[float]] = [[] for _ in runs]
    for r in range(rounds):
        order = list(range(len(runs)))
        order = order[r % len(order):] + order[: r % len(order)]
        for k in order:
            mod, x = runs[k]
            for _ in range(repeats):
                t0 = time.perf_counter()
                mod(x)
                times[k].append((time.perf_counter() - t0) * 1e3)
    return [min(t) for t in times]


def _monotone(ms: torch.Tensor) -> torch.Tensor:
    """Cumulative maximum along both axes: a narrower layer never costs more than a wider one."""
    return torch.cummax(torch.cummax(ms, dim=0).values, dim=1).values


def build_latency_table(
    model: nn.Module,
    example_input: torch.Tensor,
    batch: int = 1,
    *,
    threads: int | None = None,
    varying: set[tuple[str, str]] | None = None,
    rounds: int = 5,
    repeats: int = 3,
    fractions: tuple[float, ...] = GRID_FRACTIONS,
    cache: bool | str | Path = True,
    reference: Reference | Callable[[], Reference] | None = None,
) -> LatencyTable:
    """The latency table of ``model`` (a plain network) on this CPU, from the cache when it has one.

    Args:
        model: the dense network (not gated; it is timed whole once and left unchanged).
        example_input: one input like ``[1, C, H, W]`` (only its first sample is used).
        batch: the batch size the latencies are for.
        threads: intra-op threads while timing; None: torch's current count (part of the key either way).
        varying: ``{(layer, "in"|"out")}`` dims a gate can change (others are single grid points); None: all.
        rounds, repeats: interleaved timing passes and runs per point and pass (the median is kept).
        fractions: grid widths as fractions of each full width (see :func:`width_grid`).
        cache: True: the default :func:`cache_dir`; a folder; False: neither read nor write.
        reference: (channel counts, the collapsed network at those counts), e.g. every group at half width
            (``prunekit.methods.latency_reference``), or a function returning it (called only when timing): timed
            in the same rounds, and the constant part of the
            untimed rest is solved so that the table predicts it (:func:`fit_const_share`). None: the rest is split by
            timing the dense network at a second batch size (:func:`split_rest`; noisier).
    Returns:
        the :class:`LatencyTable` (``timed`` False when it came from the cache).
    """
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    if rounds < 1 or repeats < 1:
        raise ConfigError(f"rounds and repeats must be >= 1, got rounds={rounds}, repeats={repeats}")
    model = model.cpu()
    x = example_input[:1].cpu()
    threads = int(threads or torch.get_num_threads())
    specs = layer_specs(model, x)
    if not specs:
        raise ConfigError(f"{type(model).__name__} has no conv or linear layer to time")
    grids: dict[str, tuple[LayerSpec, list[int], list[int]]] = {}
    layers: dict[str, str] = {}
    for name, (spec, _) in specs.items():
        v = (True, True) if varying is None else ((name, "in") in varying, (name, "out") in varying)
        gi, go = _grids(spec, v, fractions)
        k = json.dumps([spec.key, gi, go])
        grids.setdefault(k, (spec, gi, go))
        layers[name] = k
    key = table_key(layers, x, batch, threads, fractions)
    key["reference"] = reference is not None
    path = _key_path(key, cache_dir() if cache is True else Path(cache)) if cache else None
    if path is not None and path.exists():
        try:
            table = LatencyTable.from_dict(json.loads(path.read_text()))
            if table.key == key:
                logger.info("latency table read from %s", path)
                return table
        except (OSError, ValueError, KeyError) as e:
            logger.warning("latency table %s unreadable (%s); timing again", path, e)
    t0 = time.perf_counter()
    if callable(reference):
        reference = reference()
    points = [spec.build(ci, co, batch) for spec, gi, go in grids.values() for ci in gi for co in go if ci and co]
    # the untimed rest (dense − layer sum) is split by a reference network or by a second batch size
    batch2 = batch * 4 if batch <= 16 else max(1, batch // 4)
    full2 = [] if reference else [spec.build(gi[-1], go[-1], batch2) for spec, gi, go in grids.values()]
    nets = [model] + ([reference[1].cpu()] if reference else [])
    modes = [n.training for n in nets]
    # the whole networks are more runs of the same interleaved rounds: load drift hits them like the layers
    whole = [(n.eval(), x.expand(batch, *x.shape[1:]).contiguous()) for n in nets]
    if not reference:
        whole.append((model, x.expand(batch2, *x.shape[1:]).contiguous()))
    try:
        with torch_threads(threads):
            ms = iter(_time_points([*points, *full2, *whole], rounds, repeats))
    finally:
        for n, mode in zip(nets, modes):
            n.train(mode)
    entries = {}
    for k, (spec, gi, go) in grids.items():
        grid = torch.tensor([[next(ms) if ci and co else 0.0 for co in go] for ci in gi], dtype=torch.float64)
        entries[k] = _Entry(torch.tensor(gi, dtype=torch.float64), torch.tensor(go, dtype=torch.float64),
                            _monotone(grid), spec.mode == "scaled")
    outputs = {n: float(numel) for n, (_, numel) in specs.items()}
    if reference:
        dense, ref_ms = next(ms), next(ms)
        share = fit_const_share(LatencyTable(key, layers, entries, dense, 0.0, outputs), reference[0], ref_ms / dense)
    else:
        full_ms2 = {k: next(ms) for k in grids}
        dense, dense2 = next(ms), next(ms)
        sum1 = sum(float(entries[k].ms[-1, -1]) for k in layers.values())
        sum2 = sum(full_ms2[k] for k in layers.values())
        share = split_rest(dense - sum1, batch, dense2 - sum2, batch2) / max(dense, 1e-12)
    table = LatencyTable(key, layers, entries, dense, share, outputs, timed=True)
    logger.info("latency table: %d layers, %d distinct, %d points timed in %.1fs; dense %.3f ms, layers alone "
                "%.3f ms, constant share %.2f", len(layers), len(entries), len(points), time.perf_counter() - t0,
                dense, table.layer_sum_ms, table.const_share)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(table.to_dict()))
        tmp.replace(path)
    return table


# -- a gated network's relaxed latency ------------------------------------------------------------------------
def attach_table(gated: nn.Module, table: LatencyTable) -> None:
    """Keep ``table`` on a GatedModel (a plain attribute, as its cost model): :func:`latency_ratio` reads it."""
    object.__setattr__(gated, "_latency_table", table)


def find_table(gated: nn.Module) -> LatencyTable | None:
    """The table attached to ``gated`` (None when there is none)."""
    return getattr(gated, "_latency_table", None)


def gated_table(gated: nn.Module) -> LatencyTable:
    """The table attached to ``gated``; ConfigError when there is none."""
    table = find_table(gated)
    if table is None:
        raise ConfigError("this gated model has no latency table: set the method's target_latency (or call "
                          "prunekit.latency_table.attach_table) before asking for a latency ratio")
    return table


def varying_dims(gated: nn.Module) -> set[tuple[str, str]]:
    """``{(layer, dim)}`` that some prunable group of ``gated`` can narrow."""
    return {(m.name, m.dim) for h in gated.groups for m in h.group.members}


def latency_ratio_of(gated: nn.Module, values: list[torch.Tensor]) -> torch.Tensor:
    """Predicted latency ÷ dense latency of ``gated`` for per-group gate values (effective, block gates applied):
    the table's bilinear interpolation at the cost model's soft channel counts (differentiable)."""
    from prunekit.cost import cost_model

    return gated_table(gated).ratio(cost_model(gated).channels(values))


def latency_ratio(gated: nn.Module, mode: str = "expected") -> torch.Tensor:
    """Relaxed latency ÷ dense latency at the gates' ``expected``, ``hard`` or ``eval`` values."""
    from prunekit.cost import gate_values

    return latency_ratio_of(gated, gate_values(gated, mode))
