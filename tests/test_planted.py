"""Planted-answer problems: each gated method must find the useless channels by its own rule, no calibration.

The network sees 8 input channels; a 1×1 conv (identity, only its diagonal trains) copies them into 8 gated channels, so channel i
of the only prunable group *is* input channel i. Channels 0–3 carry the label (class c raises channel c), 4–7
carry only noise (larger than the signal). A MACs target of 0.5 keeps 4 of the 8 channels: a method that
learned anything keeps 0–3. Calibration is switched off, so the masks are what the method's rule decided.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit.methods import create_method
from prunekit.methods._gated import mask_ratio
from prunekit.train.config import TrainConfig
from prunekit.train.loop import Trainer

SIGNAL = [0, 1, 2, 3]


def planted_data(n: int, seed: int) -> TensorDataset:
    """``n`` images [8, 6, 6]: channel y (of 0–3) raised by 1.5, channels 4–7 noise with std 2."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 8, 6, 6, generator=g) * 0.5
    x[:, 4:] = torch.randn(n, 4, 6, 6, generator=g) * 2.0
    x[torch.arange(n), y] += 1.5
    return TensorDataset(x, y)


def planted_net() -> nn.Module:
    conv = nn.Conv2d(8, 8, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(8).view(8, 8, 1, 1))
    # only the diagonal learns: channel i stays input channel i, so the answer cannot move (a frozen weight
    # would hide the conv from the autograd trace that finds the groups)
    conv.weight.register_hook(lambda g: g * torch.eye(8).view(8, 8, 1, 1))
    return nn.Sequential(conv, nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def train_planted(method_name: str, epochs: int = 6, **options):
    torch.manual_seed(0)
    train = DataLoader(planted_data(2048, 0), batch_size=64, shuffle=True)
    val = DataLoader(planted_data(512, 1), batch_size=256)
    method = create_method(method_name, **options)
    model = method.prepare(planted_net(), planted_data(2, 2).tensors[0])
    cfg = TrainConfig(epochs=epochs, lr=0.05, device="cpu", num_threads=1, log_every=8, warmup_epochs=0)
    result = Trainer(model, (train, val), cfg, method).fit()
    return method, result, model


@pytest.mark.parametrize("name, options", [
    ("crisp", {"target_macs": 0.5, "calibrate": False}),
    ("l0", {"target_macs": 0.5, "calibrate": False}),
    ("growing", {"target_macs": 0.5, "calibrate": False, "blocks": False}),
])
def test_gated_method_finds_the_planted_signal_channels_by_its_own_rule(name, options):
    method, result, gated = train_planted(name, **options)
    (group,) = gated.groups
    kept = set(torch.nonzero(group.gate.hard_mask()).flatten().tolist())
    report = method.report
    assert report["calibration_flips"] == 0.0  # calibration off: the masks are the rule's
    assert set(SIGNAL) <= kept, f"{name} removed a signal channel: kept {sorted(kept)}"
    assert len(kept - set(SIGNAL)) <= 1, f"{name} kept noise channels: kept {sorted(kept)}"
    assert abs(report["relaxation_macs_ratio"] - 0.5) <= 0.15
    assert report["relaxation_macs_ratio"] == pytest.approx(mask_ratio(gated, [group.gate.hard_mask()]))
    assert result["metrics"]["acc/val"] > 0.9  # the kept channels carry the label


@pytest.mark.parametrize("name", ["crisp", "l0", "growing", "dpp"])
def test_gated_run_with_split_optimizer_resumes_bit_exact(tmp_path, name):
    """Gate logits train with their own Adam (a SplitOptimizer): a stopped run resumes to the same weights."""
    from prunekit.train.callbacks import Callback

    class StopAt(Callback):
        def should_stop(self, trainer) -> bool:
            return trainer.step == 40

    def run(ckpt=None, resume=None, stop=False):
        torch.manual_seed(0)
        train = DataLoader(planted_data(512, 0), batch_size=32, shuffle=True)
        method = create_method(name, **({"keep": 0.5} if name == "dpp" else {"target_macs": 0.5}))
        model = method.prepare(planted_net(), planted_data(2, 2).tensors[0])
        cfg = TrainConfig(epochs=4, lr=0.05, device="cpu", num_threads=1, log_every=8)
        trainer = Trainer(model, (train, None), cfg, method, [StopAt()] if stop else [], checkpoint_dir=ckpt,
                          resume_from=resume)
        return trainer, trainer.fit()

    full, _ = run()
    assert type(full.optimizer).__name__ == "SplitOptimizer"
    _, stopped = run(tmp_path, stop=True)
    assert stopped["status"] == "stopped" and stopped["steps"] == 40
    resumed, result = run(tmp_path, resume=tmp_path / "last.pt")
    assert result["status"] == "completed" and result["steps"] == 64
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
