"""Shared fixtures: RNG isolation for every test, one torch thread for tiny models, tiny CNNs, and the location of
the shared real datasets."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

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


@pytest.fixture
def one_thread():
    """One torch intra-op thread for the test (tiny models: more threads only add synchronisation cost on a shared
    machine); restored afterwards. Modules use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_tiny_cnn(widths: tuple[int, ...] = (8, 12, 16), in_channels: int = 3, classes: int = 4,
                  bias: bool = True) -> nn.Module:
    """conv3×3–BN–ReLU per width, global pooling, a linear head: the smallest net with coupled channel groups."""
    layers: list[nn.Module] = []
    c = in_channels
    for w in widths:
        layers += [nn.Conv2d(c, w, 3, padding=1, bias=bias), nn.BatchNorm2d(w), nn.ReLU()]
        c = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes))


@pytest.fixture
def tiny_cnn():
    """The :func:`make_tiny_cnn` builder as a fixture."""
    return make_tiny_cnn


def install_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> None:
    """Write module ``name`` (``source``) to ``tmp_path/mods``, importable here and, through PYTHONPATH, in the
    background runner's child processes (their experiment is given as ``"module:function"``)."""
    mods = tmp_path / "mods"
    mods.mkdir(exist_ok=True)
    (mods / f"{name}.py").write_text(source)
    monkeypatch.setenv("PYTHONPATH", str(mods))  # the children inherit it
    monkeypatch.syspath_prepend(str(mods))
    sys.modules.pop(name, None)
