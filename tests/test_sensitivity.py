"""Layer sensitivity (``prunekit.sensitivity``) on a planted problem whose answer is known.

The net reads 8 input channels through two 1×1 convs into two coupled-channel groups joined by a
concatenation: ``signal`` copies channels 0–3 (class c raises channel c), ``noise`` copies channels 4–7 (noise
only). The head reads the signal group alone (its weights on the noise group are zero). Pruning the noise
group must cost nothing at any fraction; pruning the signal group loses one class per removed channel.
"""

from __future__ import annotations

import pytest
import torch
from test_planted import planted_data  # the planted problem's data: class c raises channel c, 4–7 noise
from torch import nn
from torch.utils.data import DataLoader

import prunekit as pk
from prunekit.augment import augment
from prunekit.bn import recalibrate_bn_
from prunekit.errors import ConfigError
from prunekit.gates import mask_gate_name
from prunekit.sensitivity import layer_sensitivity, removal_order

pytestmark = pytest.mark.usefixtures("one_thread")


class TwoGroups(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.signal = nn.Conv2d(8, 4, 1, bias=False)
        self.signal_bn = nn.BatchNorm2d(4)
        self.noise = nn.Conv2d(8, 4, 1, bias=False)
        self.noise_bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(8, 4)
        with torch.no_grad():
            eye = torch.eye(8).view(8, 8, 1, 1)
            self.signal.weight.copy_(eye[:4])
            self.noise.weight.copy_(eye[4:])
            self.head.weight.zero_()
            self.head.weight[:, :4] = 4 * torch.eye(4)
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.signal_bn(self.signal(x)))
        b = torch.relu(self.noise_bn(self.noise(x)))
        return self.head(torch.cat([a, b], 1).mean((2, 3)))


@pytest.fixture(scope="module")
def planted():
    train = DataLoader(planted_data(512, 0), batch_size=128)
    val = DataLoader(planted_data(512, 1), batch_size=128)
    net = TwoGroups().eval()
    recalibrate_bn_(net, train, None)  # "trained": statistics of the data it sees
    return net, train, val


def _drops(df, group: str) -> dict[float, float]:
    rows = df[df["group"] == group]
    return dict(zip(rows["fraction"], rows["drop"]))


def test_noise_group_costs_nothing_and_the_signal_group_a_lot(planted):
    net, train, val = planted
    before = {k: v.clone() for k, v in net.state_dict().items()}
    df = layer_sensitivity(net, val, fractions=(0.25, 0.5, 0.75), bn_loader=train, bn_batches=2, max_batches=2)
    assert df.attrs["ranking"] == "l2" and df.attrs["bn_recalibrated"] is True
    assert df.attrs["baseline"] > 0.95  # the planted net reads the label off the signal channels
    assert set(df["group"]) == {"signal", "noise"}
    noise, signal = _drops(df, "noise"), _drops(df, "signal")
    assert max(abs(d) for d in noise.values()) < 0.02
    # one class lost per removed signal channel: 25 %, 50 %, 75 % of the samples
    assert signal[0.25] == pytest.approx(0.25, abs=0.08)
    assert signal[0.75] == pytest.approx(0.75, abs=0.08)
    assert signal[0.25] < signal[0.5] < signal[0.75]
    assert list(df["removed"][df["group"] == "signal"]) == [1, 2, 3]
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # not modified


def test_gated_model_ranks_by_its_gates_and_counts_its_own_removals(planted):
    net, train, val = planted
    gated = augment(net, planted_data(2, 3).tensors[0], gate=mask_gate_name()).eval()
    signal = gated.group("signal")
    signal.set_mask(torch.tensor([True, True, False, True]))  # the run removed channel 2 already
    assert removal_order(signal, "gate")[0] == 2  # a removed channel ranks lowest
    df = layer_sensitivity(gated, val, fractions=(0.25, 0.5), bn_loader=train, bn_batches=2, max_batches=2)
    assert df.attrs["ranking"] == "gate"
    assert df.attrs["baseline"] == pytest.approx(0.75, abs=0.08)  # class 2 is gone in the run itself
    drops = _drops(df, "signal")
    assert abs(drops[0.25]) < 0.02  # 25 % of the width is the channel the run already removed
    assert drops[0.5] == pytest.approx(0.25, abs=0.08)
    assert bool((signal.gate.keep == torch.tensor([True, True, False, True])).all())  # restored on the copy's source


def test_public_name_and_bad_arguments(planted):
    net, train, val = planted
    assert pk.layer_sensitivity is layer_sensitivity
    with pytest.raises(ConfigError, match="fractions must be in"):
        layer_sensitivity(net, val, fractions=(0.5, 1.0))
    with pytest.raises(ConfigError, match="ranking must be one of"):
        layer_sensitivity(net, val, ranking="random")
    with pytest.raises(ConfigError, match="max_batches must be an integer"):
        layer_sensitivity(net, val, max_batches=0)
    with pytest.raises(ConfigError, match="needs a gated model"):
        layer_sensitivity(net, val, ranking="gate")


def test_run_store_keeps_analyses_by_run_kind_and_settings(tmp_path):
    from prunekit.train.store import MIGRATIONS, RunStore

    store = RunStore(tmp_path)
    assert store.schema_version == len(MIGRATIONS) >= 3
    rid = store.create_run({"model": "resnet20"})
    settings = {"fractions": [0.1, 0.5], "max_batches": 4, "checkpoint": "last.pt", "step": 30}
    assert store.get_analysis(rid, "sensitivity", settings) is None
    store.put_analysis(rid, "sensitivity", settings, {"rows": [{"group": "conv1", "drop": 0.1}]})
    reordered = dict(reversed(list(settings.items())))  # the same settings in another order: the same row
    assert store.get_analysis(rid, "sensitivity", reordered) == {"rows": [{"group": "conv1", "drop": 0.1}]}
    assert store.get_analysis(rid, "sensitivity", {**settings, "step": 60}) is None  # a newer checkpoint: not it
    store.put_analysis(rid, "sensitivity", settings, {"rows": []})  # replaced, not duplicated
    assert [a["result"] for a in store.analyses(rid, "sensitivity")] == [{"rows": []}]
    with pytest.raises(ConfigError, match="unknown run id"):
        store.put_analysis("r-nope", "sensitivity", settings, {})
    with pytest.raises(ConfigError, match="kind must be"):
        store.put_analysis(rid, "", settings, {})
    store.delete_run(rid)
    assert store.analyses(rid) == []


def test_the_app_computes_a_real_runs_sensitivity_from_its_checkpoint(tmp_path):
    """End to end as the Explore page's background job does it: a trained CRISP run loaded from its checkpoint."""
    from prunekit.app_support import compute_sensitivity, sensitivity_frame

    cfg = pk.RunConfig(model="resnet20", dataset="shapes", method="crisp", method_options={"target_macs": 0.5},
                       data_options={"num_samples": 64, "num_test": 16, "image_size": 16},
                       train=pk.TrainConfig(epochs=2, batch_size=16, max_steps_per_epoch=2, log_every=1,
                                            device="cpu"))
    assert pk.run_experiment(cfg, checkpoint_dir=tmp_path)["status"] == "completed"
    (ckpt,) = tmp_path.glob("*.pt")
    settings = {"fractions": [0.5, 0.9], "max_batches": 1, "bn_batches": 1}
    df = sensitivity_frame(compute_sensitivity(None, ckpt, settings))
    loaded = pk.load_run(ckpt)
    assert list(dict.fromkeys(df["group"])) == [h.name for h in loaded.model.groups]
    assert len(df) == 2 * len(loaded.model.groups) and df.attrs["ranking"] == "gate"
    assert (df["removed"] >= (df["size"] * df["fraction"]).astype(int)).all()
    assert df["drop"].to_numpy() == pytest.approx(df.attrs["baseline"] - df["accuracy"].to_numpy())
