"""Shared fixtures: RNG isolation for every test and the location of the shared real datasets."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_rng_state():
    """Tests may seed or consume torch/NumPy/Python RNGs; restore all three afterwards."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    yield
    random.setstate(py_state)
    np.random.set_state(np_state)
    torch.set_rng_state(torch_state)
    if cuda_states is not None:
        torch.cuda.set_rng_state_all(cuda_states)


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` next to the repository (real MNIST and CIFAR-10 JPEGs); skips when absent."""
    path = (REPO_ROOT / ".." / "shared" / "data").resolve()
    if not path.is_dir():
        pytest.skip(f"shared test data not found at {path}")
    return path
