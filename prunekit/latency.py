"""Measured latency on the user's device: warm-up, then the median of repeated timed runs."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from prunekit._device import model_device, torch_threads
from prunekit.errors import ConfigError


def _batch(example_input: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """The first input repeated to ``batch_size`` (contiguous, on ``device``)."""
    return example_input[:1].to(device).expand(batch_size, *example_input.shape[1:]).contiguous()


def _forward_ms(model: nn.Module, x: torch.Tensor, device: torch.device) -> float:
    """One forward in milliseconds (CUDA synchronised before and after)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    model(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) * 1e3


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    example_input: torch.Tensor,
    batch_sizes: tuple[int, ...] = (1, 64),
    *,
    device: str | torch.device | None = None,
    warmup: int = 3,
    repeats: int = 10,
    min_seconds: float = 0.0,
    threads: int | None = None,
) -> dict[int, float]:
    """Median forward latency in milliseconds per batch size.

    Args:
        model: any module (evaluated in eval mode on ``device``).
        example_input: one input, e.g. [1, 3, 32, 32]; it is repeated to each batch size.
        batch_sizes: batch sizes to time (1 and 64 by default).
        device: ``None``/``"auto"`` resolves like the trainer; CUDA timings synchronise the device.
        warmup: untimed runs first (allocator, oneDNN/cuDNN autotuning).
        repeats: timed runs; the median is reported.
        min_seconds: keep repeating until this much time was measured (stabler numbers for tiny nets).
        threads: intra-op threads while timing (restored after); ``None`` keeps torch's setting.
    Returns:
        ``{batch_size: median_ms}``.
    """
    dev = model_device(model, device)
    was = model.training
    model.eval().to(dev)
    out: dict[int, float] = {}
    with torch_threads(threads):
        try:
            for bs in batch_sizes:
                x = _batch(example_input, bs, dev)
                for _ in range(warmup):
                    model(x)
                times: list[float] = []
                t_start = time.perf_counter()
                while len(times) < repeats or time.perf_counter() - t_start < min_seconds:
                    times.append(_forward_ms(model, x, dev))
                out[bs] = statistics.median(times)
        finally:
            model.train(was)
    return out


@torch.inference_mode()
def measure_latency_interleaved(
    models: dict[str, nn.Module],
    example_input: torch.Tensor,
    batch_sizes: tuple[int, ...] = (1, 64),
    *,
    device: str | torch.device | None = None,
    warmup: int = 2,
    rounds: int = 5,
    repeats: int = 3,
    threads: int | None = None,
) -> dict[str, dict[int, float]]:
    """Median latency of several networks, timed in turn so that a change of machine load hits them all alike.

    Timing A completely and then B turns any drift of a shared CPU's load into a false A-vs-B difference;
    here every round times each network (in a rotated order) ``repeats`` times per batch size, and the
    median is taken over all rounds. Use it whenever two latencies are going to be divided.

    Args:
        models: name -> module (each evaluated in eval mode on ``device``; modes are restored).
        example_input: one input, e.g. ``[1, 3, 32, 32]``; repeated to each batch size.
        batch_sizes: batch sizes to time.
        device: as in ``measure_latency``.
        warmup: untimed runs per network and batch size before the first round.
        rounds: passes over all networks; >= 1.
        repeats: timed runs per network, batch size and round; >= 1.
        threads: intra-op threads while timing (restored after); ``None`` keeps torch's setting.

    Returns:
        ``{name: {batch_size: median_ms}}``.
    """
    if rounds < 1 or repeats < 1:
        raise ConfigError(f"rounds and repeats must be >= 1, got rounds={rounds}, repeats={repeats}")
    if not models:
        return {}
    dev = model_device(next(iter(models.values())), device)
    modes = {k: m.training for k, m in models.items()}
    names = list(models)
    times: dict[str, dict[int, list[float]]] = {k: {bs: [] for bs in batch_sizes} for k in names}
    with torch_threads(threads):
        try:
            inputs = {bs: _batch(example_input, bs, dev) for bs in batch_sizes}
            for k in names:
                models[k].eval().to(dev)
                for bs in batch_sizes:
                    for _ in range(warmup):
                        models[k](inputs[bs])
            for r in range(rounds):
                order = names[r % len(names):] + names[: r % len(names)]
                for bs in batch_sizes:
                    for k in order:
                        times[k][bs] += [_forward_ms(models[k], inputs[bs], dev) for _ in range(repeats)]
        finally:
            for k, m in models.items():
                m.train(modes[k])
    return {k: {bs: statistics.median(v) for bs, v in per.items()} for k, per in times.items()}


def measure_latency_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    batch_sizes: tuple[int, ...] = (1, 64),
    *,
    warmup: int = 3,
    repeats: int = 10,
    threads: int | None = None,
) -> dict[int, float]:
    """Median CPU latency (ms) per batch size of ``model`` exported to ONNX and run by ONNX Runtime.

    Args:
        model: any exportable module (exported in eval mode with a dynamic batch dimension, to a temporary file).
        example_input: one input, repeated to each batch size.
        batch_sizes, warmup, repeats: as in :func:`measure_latency`.
        threads: ONNX Runtime's intra-op threads; ``None``: torch's current thread count, so that eager and
            ONNX Runtime timings are comparable.
    Returns:
        ``{batch_size: median_ms}``. Needs ``onnxruntime`` (``pip install 'prunekit[onnx]'``).
    """
    import tempfile
    from pathlib import Path

    from prunekit.io import export_onnx

    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ConfigError("ONNX Runtime timing needs the onnxruntime package: pip install 'prunekit[onnx]'") from e
    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    cpu_model = model.to("cpu").eval()
    with tempfile.TemporaryDirectory() as d:
        path = export_onnx(cpu_model, example_input[:1].cpu(), Path(d) / "model.onnx")
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out: dict[int, float] = {}
    for bs in batch_sizes:
        x = _batch(example_input, bs, torch.device("cpu")).numpy()
        for _ in range(warmup):
            session.run(None, {name: x})
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            session.run(None, {name: x})
            times.append((time.perf_counter() - t0) * 1e3)
        out[bs] = statistics.median(times)
    return out

