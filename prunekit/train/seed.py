"""Deterministic seeding of every random number generator a run touches."""

from __future__ import annotations

import random

import numpy as np
import torch

# Large odd multiplier so that (seed, epoch) pairs map to distinct, well-spread 63-bit seeds.
_EPOCH_MIX = 0x9E3779B97F4A7C15


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device) with ``seed``.

    This does not switch torch to deterministic kernels; on CPU the default kernels already give
    bit-identical results run to run.
    """
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed derived from ``(seed, epoch)``: what makes each epoch's data order and noise reproducible."""
    return (int(seed) * _EPOCH_MIX + int(epoch) + 1) % (2**63 - 1)


def get_rng_state() -> dict:
    """Every generator's state as tensors and plain Python types (loadable with ``weights_only=True``)."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` returned (CUDA states only when the device count matches)."""
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
