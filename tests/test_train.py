"""The training loop, checkpoints, evaluation and resume, on tiny models and tensor datasets (CPU, < 10 s)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit.errors import CheckpointError, ConfigError, PrunekitError
from prunekit.methods import list_methods
from prunekit.methods.base import Method
from prunekit.train import (
    Callback,
    DivergedError,
    TrainConfig,
    Trainer,
    evaluate,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    seed_everything,
)
from prunekit.train.evaluate import confusion_matrix, miou_from_confusion
from prunekit.train.loop import lr_factor


@pytest.fixture(autouse=True)
def _restore_rng():
    state = torch.get_rng_state()
    threads = torch.get_num_threads()
    yield
    torch.set_rng_state(state)
    torch.set_num_threads(threads)


def _data(n: int = 96, seed: int = 0) -> TensorDataset:
    """Linearly separable 4-class blobs in 8 dimensions."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, 8, generator=torch.Generator().manual_seed(123)) * 3
    y = torch.randint(0, 4, (n,), generator=g)
    x = centers[y] + torch.randn(n, 8, generator=g)
    return TensorDataset(x, y)


def _loaders(batch_size: int = 16) -> tuple[DataLoader, DataLoader]:
    return (DataLoader(_data(96, 0), batch_size=batch_size, shuffle=True),
            DataLoader(_data(48, 1), batch_size=batch_size))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 4))


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=16, lr=0.05, device="cpu", log_every=2, weight_decay=0.0)
    return TrainConfig(**{**base, **kw})


class Recorder(Callback):
    def __init__(self, stop_at: int | None = None) -> None:
        self.events: list[tuple[str, object]] = []
        self.stop_at = stop_at

    def on_train_start(self, trainer):
        self.events.append(("train_start", trainer.step))

    def on_step_end(self, trainer, logs):
        self.events.append(("step", dict(logs)))

    def on_layer_metrics(self, trainer, rows):
        self.events.append(("layers", rows))

    def on_epoch_end(self, trainer, logs):
        self.events.append(("epoch", dict(logs)))

    def on_train_end(self, trainer, result):
        self.events.append(("train_end", dict(result)))

    def should_stop(self, trainer):
        return self.stop_at is not None and trainer.step >= self.stop_at

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]


class SpyMethod(Method):
    """Records hook calls, adds an L2 regulariser term and gives the last layer its own lr group."""

    name = "spy-test"

    def __init__(self, last_lr: float | None = None) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.last_lr = last_lr
        self.counter = 0

    def param_groups(self, model, train_cfg):
        if self.last_lr is None:
            return super().param_groups(model, train_cfg)
        last = list(model[-1].parameters())
        rest = [p for p in model.parameters() if all(p is not q for q in last)]
        return [{"params": rest}, {"params": last, "lr": self.last_lr, "weight_decay": 0.0}]

    def on_epoch_start(self, model, epoch, num_epochs):
        self.calls.append(f"epoch_start:{epoch}")

    def on_epoch_end(self, model, epoch, num_epochs):
        self.calls.append(f"epoch_end:{epoch}")

    def regularizer(self, model, step, epoch):
        self.calls.append("regularizer")
        return {"l2": 1e-4 * sum((p**2).sum() for p in model.parameters())}

    def after_step(self, model, step, epoch):
        self.calls.append("after_step")
        self.counter += 1

    def step_metrics(self, model):
        return {"temperature": 1.5}

    def layer_metrics(self, model):
        return [{"layer": 0, "name": "gate_mean", "value": 0.5}]

    def finalize(self, model):
        self.calls.append("finalize")
        return model

    def state_dict(self):
        return {"counter": self.counter}

    def load_state_dict(self, state):
        self.counter = state["counter"]


def test_loss_decreases_and_accuracy_rises():
    rec = Recorder()
    result = Trainer(_model(), _loaders(), _cfg(epochs=4), callbacks=[rec]).fit()
    steps = [logs for k, logs in rec.events if k == "step"]
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert result["status"] == "completed"
    assert result["epochs"] == 4 and result["steps"] == 4 * 6
    assert result["metrics"]["acc/val"] > 0.8
    assert result["throughput"] > 0 and result["train_time_s"] > 0


def test_callbacks_called_in_order_with_metric_names():
    rec = Recorder()
    Trainer(_model(), _loaders(), _cfg(epochs=2), SpyMethod(), callbacks=[rec]).fit()
    kinds = rec.kinds()
    assert kinds[0] == "train_start" and kinds[-1] == "train_end"
    # 6 steps per epoch, log_every=2: three (step, layers) pairs before each epoch end; after finalize
    # the last step is logged once more with the final masks
    assert kinds[1:-1] == (["step", "layers"] * 3 + ["epoch"]) * 2 + ["step", "layers"]
    step_logs = rec.events[1][1]
    for key in ("loss", "loss/task", "loss/l2", "lr", "acc/train", "throughput", "temperature"):
        assert key in step_logs, key
    assert step_logs["loss"] == pytest.approx(step_logs["loss/task"] + step_logs["loss/l2"], rel=1e-5)
    epoch_logs = [v for k, v in rec.events if k == "epoch"]
    assert {"acc/val", "loss/val", "acc/train", "lr", "epoch"} <= set(epoch_logs[0])
    assert [e["epoch"] for e in epoch_logs] == [1, 2]


def test_method_hooks_in_documented_order():
    spy = SpyMethod()
    Trainer(_model(), _loaders(), _cfg(epochs=2, max_steps_per_epoch=2), spy).fit()
    per_step = ["regularizer", "after_step"]
    expected = []
    for e in range(2):
        expected += [f"epoch_start:{e}"] + per_step * 2 + [f"epoch_end:{e}"]
    assert spy.calls == expected + ["finalize"]
    assert spy.counter == 4


def test_param_groups_keep_their_own_lr_and_follow_the_schedule():
    trainer = Trainer(_model(), _loaders(), _cfg(epochs=2, lr=0.1, schedule="step", milestones=(1,), gamma=0.5),
                      SpyMethod(last_lr=0.01))
    trainer.fit()
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    # after two epochs the schedule stands at epoch 2, past milestone 1: each group's own lr times 0.5
    assert lrs == pytest.approx([0.1 * 0.5, 0.01 * 0.5])
    assert trainer.optimizer.param_groups[1]["weight_decay"] == 0.0


def test_lr_factor_schedules():
    assert lr_factor("cosine", 0, 10) == 1.0
    assert lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert lr_factor("step", 3, 10, milestones=(2, 4), gamma=0.1) == pytest.approx(0.1)
    assert lr_factor("step", 4, 10, milestones=(2, 4), gamma=0.1) == pytest.approx(0.01)
    assert lr_factor("constant", 7, 10) == 1.0


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_optimizers_build_and_train(optimizer):
    lr = 0.05 if optimizer == "sgd" else 0.01
    trainer = Trainer(_model(), _loaders(), _cfg(epochs=1, optimizer=optimizer, lr=lr, nesterov=True))
    result = trainer.fit()
    assert type(trainer.optimizer).__name__.lower() == optimizer
    assert result["metrics"]["acc/val"] > 0.4


def test_sdprun_optimizer_works_with_any_method():
    from prunekit.methods.sdprun import SDPrun

    trainer = Trainer(_model(), _loaders(), _cfg(optimizer="sdprun"))
    assert trainer.fit()["status"] == "completed"
    assert isinstance(trainer.optimizer, SDPrun)


def test_should_stop_ends_gracefully_and_checkpoints(tmp_path: Path):
    rec = Recorder(stop_at=3)
    result = Trainer(_model(), _loaders(), _cfg(epochs=5), callbacks=[rec], checkpoint_dir=tmp_path).fit()
    assert result["status"] == "stopped"
    assert result["steps"] == 3 and result["epochs"] == 0
    assert rec.kinds()[-1] == "train_end"
    ckpt = read_checkpoint(tmp_path / "last.pt")
    assert ckpt["step"] == 3 and ckpt["epoch"] == 0
    assert ckpt["extra"]["step_in_epoch"] == 3 and ckpt["extra"]["status"] == "stopped"


class _Explode(Method):
    name = "explode-test"

    def regularizer(self, model, step, epoch):
        return {"boom": torch.tensor(float("nan"))} if step == 2 else {}


def test_nan_loss_raises_diverged_after_telling_callbacks():
    rec = Recorder()
    with pytest.raises(DivergedError) as info:
        Trainer(_model(), _loaders(), _cfg(), _Explode(), callbacks=[rec]).fit()
    assert isinstance(info.value, PrunekitError)
    assert info.value.step == 2
    assert rec.events[-1][0] == "train_end" and rec.events[-1][1]["status"] == "diverged"


def test_max_steps_per_epoch_and_threads():
    trainer = Trainer(_model(), _loaders(), _cfg(epochs=2, max_steps_per_epoch=2, num_threads=1))
    result = trainer.fit()
    assert result["steps"] == 4
    assert torch.get_num_threads() == 1


def test_bad_task_is_config_error():
    with pytest.raises(ConfigError, match="task"):
        Trainer(_model(), _loaders(), _cfg(), task="detection")


# -- evaluation ------------------------------------------------------------------------------------------
class _Fixed(nn.Module):
    """Returns stored logits batch by batch (hand-made predictions)."""

    def __init__(self, outputs: list[torch.Tensor]) -> None:
        super().__init__()
        self.outputs = outputs
        self.i = 0
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = self.outputs[self.i]
        self.i += 1
        return out


def test_evaluate_accuracy_on_hand_made_predictions():
    labels = torch.tensor([0, 1, 2, 1])
    logits = torch.full((4, 3), -5.0)
    logits[0, 0] = logits[1, 1] = logits[2, 0] = logits[3, 1] = 5.0  # 3 of 4 right
    model = _Fixed([logits[:2], logits[2:]])
    loader = DataLoader(TensorDataset(torch.zeros(4, 1), labels), batch_size=2)
    model.train()
    r = evaluate(model, loader, "classification", "cpu")
    assert r["acc"] == pytest.approx(0.75)
    assert r["samples"] == 4
    assert r["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)
    assert model.training  # mode restored


def test_evaluate_miou_on_hand_made_masks():
    target = torch.tensor([[[0, 0], [1, 1]]])  # [1, 2, 2]; class 2 absent everywhere
    pred = torch.tensor([[[0, 1], [1, 1]]])
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float() * 10
    r = evaluate(_Fixed([logits]), [(torch.zeros(1, 1, 2, 2), target)], "segmentation", "cpu")
    # class 0: tp 1, union 2 -> 0.5; class 1: tp 2, union 3 -> 2/3; class 2 absent -> not averaged
    assert r["miou"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert r["pixel_acc"] == pytest.approx(0.75)


def test_confusion_matrix_ignores_255():
    cm = confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 255, 1]), 2)
    assert cm.tolist() == [[1, 0], [0, 1]]
    assert miou_from_confusion(cm) == (1.0, 1.0)


# -- checkpoints -------------------------------------------------------------------------------------------
def _trained(tmp_path: Path) -> tuple[Trainer, Path]:
    trainer = Trainer(_model(), _loaders(), _cfg(epochs=1, max_steps_per_epoch=2), SpyMethod(), checkpoint_dir=tmp_path)
    trainer.fit()
    return trainer, tmp_path / "last.pt"


def test_checkpoint_round_trip_weights_only(tmp_path: Path):
    trainer, path = _trained(tmp_path)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "prunekit-checkpoint" and raw["version"] == 1
    assert raw["step"] == 2 and raw["epoch"] == 1 and raw["method_state"] == {"counter": 2}
    assert raw["extra"]["status"] == "completed"
    fresh = _model()
    fresh[0].weight.data.zero_()
    spy = SpyMethod()
    load_checkpoint(path, model=fresh, method=spy)
    for a, b in zip(fresh.state_dict().values(), trainer.model.state_dict().values()):
        assert torch.equal(a, b)
    assert spy.counter == 2


def test_save_checkpoint_is_atomic_and_plain(tmp_path: Path):
    model = _model()
    path = save_checkpoint(tmp_path / "a" / "c.pt", model=model, step=5, epoch=2, config={"x": [1, 2]},
                           extra={"note": "hi"})
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.pt"]  # no temporary file left
    ckpt = read_checkpoint(path)
    assert ckpt["config"] == {"x": [1, 2]} and ckpt["extra"] == {"note": "hi"}


def test_corrupt_checkpoint_refused(tmp_path: Path):
    _, path = _trained(tmp_path)
    data = path.read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad, model=_model())
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        read_checkpoint(garbage)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")


def test_foreign_checkpoint_refused(tmp_path: Path):
    foreign = tmp_path / "foreign.pt"
    torch.save(_model().state_dict(), foreign)
    with pytest.raises(CheckpointError, match="not a prunekit checkpoint"):
        load_checkpoint(foreign, model=_model())
    newer = tmp_path / "newer.pt"
    torch.save({"format": "prunekit-checkpoint", "version": 99, "model": {}, "step": 0, "epoch": 0}, newer)
    with pytest.raises(CheckpointError, match="version"):
        read_checkpoint(newer)


class _Evil:
    """Unpickling this would create a file: the loader must refuse instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_code_is_not_executed(tmp_path: Path):
    evil, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    torch.save({"format": "prunekit-checkpoint", "version": 1, "model": {}, "step": 0, "epoch": 0,
                "extra": {"obj": _Evil(marker)}}, evil)
    with pytest.raises(CheckpointError):
        read_checkpoint(evil)
    assert not marker.exists()


def test_mismatched_state_dict_refused_and_nothing_loaded(tmp_path: Path):
    _, path = _trained(tmp_path)
    other = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 4))
    before = [t.clone() for t in other.state_dict().values()]
    with pytest.raises(CheckpointError, match=r"0\.weight \(16, 8\) vs model \(32, 8\)"):
        load_checkpoint(path, model=other)
    assert all(torch.equal(a, b) for a, b in zip(before, other.state_dict().values()))
    renamed = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.raises(CheckpointError, match="missing keys 2.weight"):
        load_checkpoint(path, model=renamed)


# -- resume --------------------------------------------------------------------------------------------
def _final_weights(trainer: Trainer) -> list[torch.Tensor]:
    return [t.detach().clone() for t in trainer.model.state_dict().values()]


def _run(cfg: TrainConfig, tmp: Path | None = None, resume: Path | None = None, stop_at: int | None = None):
    spy = SpyMethod()
    cbs = [Recorder(stop_at)]
    trainer = Trainer(_model(), _loaders(), cfg, spy, cbs, checkpoint_dir=tmp, resume_from=resume)
    result = trainer.fit()
    return trainer, result, cbs[0], spy


def test_resume_at_epoch_boundary_equals_uninterrupted(tmp_path: Path):
    cfg4 = _cfg(epochs=4, schedule="constant")
    full, full_result, _, _ = _run(cfg4)
    _run(_cfg(epochs=2, schedule="constant"), tmp_path)
    resumed, result, rec, spy = _run(cfg4, resume=tmp_path / "last.pt")
    assert result["steps"] == full_result["steps"] == 24
    assert rec.events[0] == ("train_start", 12)  # continues with the same step numbers
    assert spy.counter == 24  # method state restored (12) and advanced
    for a, b in zip(_final_weights(full), _final_weights(resumed)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("stop_at", [9, 12])  # mid-epoch, and exactly at the end of epoch 2 (6 steps/epoch)
def test_resume_after_stop_equals_uninterrupted(tmp_path: Path, stop_at: int):
    cfg = _cfg(epochs=4)  # cosine: the schedule depends on the total, so stop rather than shorten
    full, _, _, _ = _run(cfg)
    _, stopped, _, _ = _run(cfg, tmp_path, stop_at=stop_at)
    assert stopped["status"] == "stopped" and stopped["steps"] == stop_at
    resumed, result, rec, _ = _run(cfg, tmp_path, resume=tmp_path / "last.pt")
    assert result["status"] == "completed" and result["steps"] == 24
    epochs_logged = [v["epoch"] for k, v in rec.events if k == "epoch"]
    assert epochs_logged == list(range(stop_at // 6 + 1, 5))
    for a, b in zip(_final_weights(full), _final_weights(resumed)):
        assert torch.equal(a, b)


class _Log(Callback):
    """Everything a run reports, by step (throughput is a timing, left out), and an optional stop."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at, self.steps, self.layers, self.epochs = stop_at, {}, {}, {}

    def on_step_end(self, trainer, logs):
        self.steps[trainer.step] = {k: v for k, v in logs.items() if k != "throughput"}

    def on_layer_metrics(self, trainer, rows):
        self.layers[trainer.step] = rows

    def on_epoch_end(self, trainer, logs):
        self.epochs[trainer.epoch] = dict(logs)

    def should_stop(self, trainer) -> bool:
        return trainer.step == self.stop_at


def _same(a, b) -> bool:
    """Bit-exact equality of nested dicts/lists of tensors and numbers (NaN equals NaN)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and a != a:
        return isinstance(b, float) and b != b
    return a == b


def _method_run(name: str, tmp: Path | None = None, resume: Path | None = None, stop_at: int | None = None):
    from prunekit.train.config import RunConfig
    from prunekit.train.experiment import run_experiment

    # ResNet-20 (residual blocks: growing's block gates exist) on 16x16 shapes; 4 epochs of 3 steps, so a stop at
    # step 7 falls mid-epoch, mid-log-window (log_every=2), after the first prune/round of the scheduled methods
    cfg = RunConfig(model="resnet20", dataset="shapes", method=name,
                    data_options={"num_samples": 48, "num_test": 16, "image_size": 16},
                    train=TrainConfig(epochs=4, batch_size=16, max_steps_per_epoch=3, log_every=2, lr=0.05,
                                      device="cpu", num_threads=1))
    log = _Log(stop_at)
    result = run_experiment(cfg, callbacks=[log], checkpoint_dir=tmp, resume_from=resume)
    return result, log


@pytest.mark.parametrize("name", list_methods())
def test_every_method_resumes_bit_exact_after_a_mid_epoch_stop(tmp_path: Path, name: str):
    """Weights, masks (gate buffers are in the state dict), method state and report, every logged step, layer row
    and epoch metric after the stop, and the test accuracy: all identical to the uninterrupted run."""
    full, full_log = _method_run(name)
    stopped, _ = _method_run(name, tmp_path, stop_at=7)
    assert stopped["status"] == "stopped" and stopped["steps"] == 7
    assert read_checkpoint(tmp_path / "last.pt")["extra"]["step_in_epoch"] == 1
    resumed, log = _method_run(name, tmp_path, resume=tmp_path / "last.pt")
    assert resumed["status"] == "completed" and resumed["steps"] == full["steps"] == 12
    a, b = full["model"].state_dict(), resumed["model"].state_dict()
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert sorted(log.steps) == [8, 10, 12]
    assert [s for s in log.steps if not _same(full_log.steps[s], log.steps[s])] == []
    assert [s for s in log.layers if not _same(full_log.layers[s], log.layers[s])] == []
    assert sorted(log.epochs) == [3, 4] and all(_same(full_log.epochs[e], log.epochs[e]) for e in log.epochs)
    assert _same(full["method_report"], resumed["method_report"])
    assert full["metrics"]["acc/test"] == resumed["metrics"]["acc/test"]
    assert _same(full["metrics"], resumed["metrics"])


def test_mismatching_checkpoint_is_a_checkpoint_error_never_a_key_error(tmp_path: Path):
    from prunekit.optim import SplitOptimizer

    trainer, path = _trained(tmp_path)  # SGD, one group
    model = _model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    adam = torch.optim.Adam(model.parameters(), lr=0.1)
    with pytest.raises(CheckpointError, match="another optimizer kind"):
        load_checkpoint(path, model=model, optimizer=adam)
    split = SplitOptimizer([torch.optim.SGD(list(model.parameters())[:2], lr=0.1),
                            torch.optim.Adam(list(model.parameters())[2:], lr=0.1)])
    with pytest.raises(CheckpointError, match="split optimizer"):
        load_checkpoint(path, model=model, optimizer=split)
    # a split optimizer's checkpoint (also one written before it listed "param_groups") into a single one
    spath = save_checkpoint(tmp_path / "split.pt", model=model, optimizer=split, step=1)
    raw = torch.load(spath, weights_only=True)
    del raw["optimizer"]["param_groups"]
    torch.save(raw, tmp_path / "old_split.pt")
    for p in (spath, tmp_path / "old_split.pt"):
        with pytest.raises(CheckpointError, match="split optimizer"):
            load_checkpoint(p, model=model, optimizer=sgd)
    load_checkpoint(tmp_path / "old_split.pt", model=model, optimizer=split)  # an old split checkpoint still loads
    raw = torch.load(path, weights_only=True)
    raw["optimizer"] = {"state": {}}
    torch.save(raw, tmp_path / "no_groups.pt")
    with pytest.raises(CheckpointError, match="without parameter groups"):
        load_checkpoint(tmp_path / "no_groups.pt", model=model, optimizer=sgd)
    raw = torch.load(path, weights_only=True)
    raw["config"] = {"method": "crisp"}
    torch.save(raw, tmp_path / "crisp.pt")
    with pytest.raises(CheckpointError, match="written by method 'crisp', the run uses 'spy-test'"):
        load_checkpoint(tmp_path / "crisp.pt", model=model, method=SpyMethod())


def test_checkpoint_write_error_keeps_the_old_file_and_leaves_nothing(tmp_path: Path, monkeypatch):
    import errno

    import prunekit.train.checkpoint as ck
    from prunekit.train.checkpoint import CheckpointWriteError

    model = _model()
    path = save_checkpoint(tmp_path / "last.pt", model=model, step=3)
    (tmp_path / ".last.pt.dead.tmp").write_bytes(b"left by a killed writer")

    def full_disk(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError, match="at step 9: No space left on device") as info:
        save_checkpoint(path, model=model, step=9)
    assert info.value.errno == errno.ENOSPC and info.value.step == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # the stale and the partial temp file: gone
    assert read_checkpoint(path)["step"] == 3


def test_seed_everything_is_reproducible():
    seed_everything(3)
    a = torch.rand(3)
    seed_everything(3)
    assert torch.equal(a, torch.rand(3))


def test_model_device_and_torch_threads():
    from prunekit._device import model_device, torch_threads

    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")  # no parameters: the CPU
    assert model_device(torch.nn.Linear(2, 2), "cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="device"):
        model_device(torch.nn.Linear(2, 2), "tpu")
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"):
        with torch_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before  # restored even after an error
    with torch_threads(None):
        assert torch.get_num_threads() == before
