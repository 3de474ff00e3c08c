"""The one device resolver every entry point uses."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from prunekit.errors import ConfigError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``/``None``/``"cuda"``/``"cuda:1"``/``"mps"``/``"cpu"`` into a ``torch.device``.

    ``auto`` prefers CUDA, then MPS, then CPU. Asking for a device that is absent is a ConfigError.
    """
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda[:N] or mps, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} requested but MPS is not available")
    return dev


def model_device(model: nn.Module, device: str | torch.device | None = None) -> torch.device:
    """``device`` resolved when given, else where ``model`` lives (its first parameter), else the CPU."""
    if device is not None:
        return resolve_device(device)
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (``None``: leave the setting alone); restore it after."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def available_cores() -> int:
    """Cores this process may run on (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_threads(requested: int | None = None, concurrency: int = 1) -> int:
    """The intra-op threads of a training run: ``requested`` (``TrainConfig.num_threads``, ``--threads``) when
    given, else leave one core to the UI and share the rest among ``concurrency`` runs. The one place a run's
    thread count is decided (runner, sweeps, the app's runs)."""
    if requested is not None:
        if int(requested) < 1:
            raise ConfigError(f"threads must be >= 1, got {requested}")
        return int(requested)
    return max(1, (available_cores() - 1) // max(1, concurrency))


def thread_env(threads: int, wait_policy: str = "PASSIVE") -> dict[str, str]:
    """Environment a training child needs *before* torch loads its OpenMP runtime."""
    n = str(int(threads))
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n,
            "OMP_WAIT_POLICY": wait_policy, "KMP_BLOCKTIME": "0"}
