"""Measured latency on the user's device: warm-up, then the median of repeated timed runs."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from prunekit._device import resolve_device


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
    Returns:
        ``{batch_size: median_ms}``.
    """
    dev = resolve_device(device) if device is not None else next((p.device for p in model.parameters()), torch.device("cpu"))
    was = model.training
    model.eval().to(dev)
    out: dict[int, float] = {}
    try:
        for bs in batch_sizes:
            x = example_input[:1].to(dev).expand(bs, *example_input.shape[1:]).contiguous()
            for _ in range(warmup):
                model(x)
            times: list[float] = []
            t_start = time.perf_counter()
            while len(times) < repeats or time.perf_counter() - t_start < min_seconds:
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                t0 = time.perf_counter()
                model(x)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                times.append((time.perf_counter() - t0) * 1e3)
            out[bs] = statistics.median(times)
    finally:
        model.train(was)
    return out
