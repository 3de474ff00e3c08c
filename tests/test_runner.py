"""Background runs: launch, NaN failure, graceful stop, kill -9 then resume, sweeps.

The runs train a tiny MLP through the real ``Trainer`` (checkpointing, resume, callbacks) via an
experiment module written to ``tmp_path``; the runner imports it by ``module:function`` path.
"""

from __future__ import annotations

import os
import signal
import textwrap
import time

import pytest
from conftest import install_module

from prunekit._device import run_threads, thread_env
from prunekit.errors import ConfigError
from prunekit.train.config import RunConfig, TrainConfig
from prunekit.train.runner import resume_run, start_run, stop_run
from prunekit.train.store import RunStore
from prunekit.train.sweep import create_sweep, expand_grid, run_sweep

_TOY = textwrap.dedent('''
    import time
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    from prunekit.train.loop import Trainer

    def run(cfg, callbacks=(), checkpoint_dir=None, resume_from=None):
        opts = cfg.data_options
        g = torch.Generator().manual_seed(123)
        x = torch.randn(int(opts.get("n", 256)), 8, generator=g)
        y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
        train = DataLoader(TensorDataset(x, y), batch_size=cfg.train.batch_size, shuffle=True)
        val = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=64)
        torch.manual_seed(cfg.train.seed)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        calls = [0]

        def hook(mod, inp, out):
            if mod.training:
                calls[0] += 1
                time.sleep(opts.get("sleep", 0))
                if opts.get("nan_at") is not None and calls[0] > opts["nan_at"]:
                    return out * float("nan")
            return out

        model.register_forward_hook(hook)
        trainer = Trainer(model, (train, val), cfg.train, None, callbacks, checkpoint_dir=checkpoint_dir,
                          resume_from=resume_from, run_config=cfg.to_dict())
        result = trainer.fit()
        result["weight_sum"] = float(sum(p.detach().double().abs().sum() for p in model.parameters()))
        return result
''')
EXP = "pk_toy_experiment:run"


@pytest.fixture
def toy(tmp_path, monkeypatch):
    install_module(tmp_path, monkeypatch, "pk_toy_experiment", _TOY)
    return tmp_path / "ws"


def _cfg(epochs: int = 2, **data: object) -> RunConfig:
    return RunConfig(train=TrainConfig(epochs=epochs, batch_size=16, lr=0.05, log_every=2, seed=3),
                     data_options=dict(data))


def _reference_weight_sum(cfg: RunConfig) -> float:
    import pk_toy_experiment

    return pk_toy_experiment.run(cfg)["weight_sum"]


def _wait_for(pred, timeout: float = 90.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(every)


def _assert_continuous(store: RunStore, run_id: str, last_step: int) -> None:
    m = store.metrics(run_id, ["loss"])
    assert m.step.tolist() == list(range(2, last_step + 1, 2))  # log_every=2: no gap, no duplicate


def test_thread_settings():
    env = thread_env(3)
    assert env["OMP_NUM_THREADS"] == "3" and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert run_threads() == max(1, len(os.sched_getaffinity(0)) - 1)
    assert run_threads(concurrency=64) == 1 and run_threads(3) == 3
    with pytest.raises(ConfigError, match="threads must be >= 1, got 0"):
        run_threads(0)


def test_bad_requests_store_nothing(toy):
    with pytest.raises(ConfigError, match="epochs"):
        start_run({"train": {"epochs": -1}}, workspace=toy)
    with pytest.raises(ConfigError, match="unknown run config keys: modle"):
        start_run({"modle": "x"}, workspace=toy)
    with pytest.raises(ConfigError, match="threads"):
        start_run(_cfg(), workspace=toy, threads=0)
    assert RunStore(toy).list_runs().empty
    with pytest.raises(ConfigError, match="r-missing"):
        resume_run("r-missing", workspace=toy)
    s = RunStore(toy)
    rid = s.create_run(_cfg().to_dict())
    with pytest.raises(ConfigError, match="queued"):
        resume_run(rid, workspace=toy)
    stop_run(rid, workspace=toy)  # never launched: stopped at once
    assert s.get_run(rid).status == "stopped"


def test_expand_grid():
    cfgs = expand_grid(RunConfig(method="crisp"), {"method_options.target_macs": [0.3, 0.5], "train.lr": [0.1]})
    assert [c.method_options["target_macs"] for c in cfgs] == [0.3, 0.5]
    assert all(c.train.lr == 0.1 for c in cfgs) and cfgs[0].name == "crisp target_macs=0.3 lr=0.1"
    with pytest.raises(ConfigError, match="lr"):
        expand_grid(RunConfig(), {"train.lr": [-1.0]})
    with pytest.raises(ConfigError, match="non-empty"):
        expand_grid(RunConfig(), {"train.lr": []})
    with pytest.raises(ConfigError):
        expand_grid(RunConfig(), {"train.nonsense": [1]})
    with pytest.raises(ConfigError, match="unknown option.*dense.*target_macs"):  # validated where it is built
        expand_grid(RunConfig(method="dense"), {"method_options.target_macs": [0.5]})


@pytest.mark.slow
def test_run_done_and_nan_fails_with_step(toy):
    ok = start_run(_cfg(), workspace=toy, experiment=EXP, threads=1)
    bad = start_run(_cfg(nan_at=5), workspace=toy, experiment=EXP, threads=1)
    info = ok.wait(timeout=120)
    assert info.status == "done", info.error
    assert info.result["steps"] == 32 and info.progress == 1.0 and info.finished >= info.started
    s = RunStore(toy)
    _assert_continuous(s, ok.id, 32)
    assert s.metrics(ok.id, ["acc/val"]).step.tolist() == [16, 32]
    assert s.checkpoints(ok.id).step.tolist() == [32]
    assert info.result["weight_sum"] == pytest.approx(_reference_weight_sum(_cfg()), rel=1e-6)
    binfo = bad.wait(timeout=120)
    assert binfo.status == "failed"
    assert "diverged" in binfo.error and "step 5" in binfo.error


@pytest.mark.slow
def test_graceful_stop_then_resume(toy):
    cfg = _cfg(epochs=3, sleep=0.05)
    h = start_run(cfg, workspace=toy, experiment=EXP, threads=1)
    s = RunStore(toy)
    _wait_for(lambda: not s.metrics(h.id, ["loss"]).empty)
    h.stop()
    info = h.wait(timeout=60)
    assert info.status == "stopped" and info.error is None
    ck = s.checkpoints(h.id)
    assert len(ck) == 1 and 0 < ck.step.item() < 48  # checkpointed mid-run, where it stopped
    h2 = resume_run(h.id, workspace=toy)
    info = h2.wait(timeout=120)
    assert info.status == "done", info.error
    _assert_continuous(s, h.id, 48)
    assert info.result["weight_sum"] == pytest.approx(_reference_weight_sum(_cfg(epochs=3)), rel=1e-6)


@pytest.mark.slow
def test_kill_9_then_resume_is_continuous_and_equal(toy):
    cfg = _cfg(epochs=4, sleep=0.08)
    h = start_run(cfg, workspace=toy, experiment=EXP, threads=1)
    s = RunStore(toy)
    _wait_for(lambda: not s.checkpoints(h.id).empty)  # end of epoch 1
    _wait_for(lambda: s.metrics(h.id, ["loss"]).step.max() > 16)  # some metrics beyond the checkpoint
    os.kill(h.pid, signal.SIGKILL)
    h.process.wait()
    info = s.get_run(h.id)
    assert info.status == "interrupted" and "ended without reporting" in info.error
    assert s.metrics(h.id, ["loss"]).step.max() < 64
    h2 = resume_run(h.id, workspace=toy)
    info = h2.wait(timeout=120)
    assert info.status == "done", info.error
    _assert_continuous(s, h.id, 64)
    assert s.metrics(h.id, ["acc/val"]).step.tolist() == [16, 32, 48, 64]
    ref = _reference_weight_sum(_cfg(epochs=4))
    assert info.result["weight_sum"] == pytest.approx(ref, rel=1e-6)


@pytest.mark.slow
def test_sweep_bookkeeping(toy):
    sweep_id, run_ids = create_sweep(_cfg(epochs=1), {"train.lr": [0.05, 0.01]}, name="lr sweep", workspace=toy)
    s = RunStore(toy)
    assert s.list_runs(sweep_id=sweep_id).status.tolist() == ["queued", "queued"]
    out = run_sweep(sweep_id, workspace=toy, concurrency=2, threads=1, experiment=EXP, poll=0.2, timeout=180)
    assert sorted(out.id) == sorted(run_ids) and (out.status == "done").all(), out.error.tolist()
    assert sorted(s.get_run(r).config["train"]["lr"] for r in run_ids) == [0.01, 0.05]
    sw = s.sweeps()
    assert sw.id.tolist() == [sweep_id] and sw.done.item() == 2 and sw.pending.item() == 0
    assert sw.config.item()["grid"] == {"train.lr": [0.05, 0.01]}


def test_cli_runs_and_sweep_arguments(tmp_path, capsys):
    from prunekit.cli import main

    ws = str(tmp_path / "ws")
    s = RunStore(ws)
    done = s.create_run(_cfg().to_dict())
    s.log_scalars(done, 32, 1, {"acc/test": 0.75})
    s.set_status(done, "done")
    queued = s.create_run(_cfg().to_dict())
    assert main(["runs", "list", "--workspace", ws]) == 0
    listing = capsys.readouterr().out
    assert done in listing and queued in listing and "0.75" in listing
    assert main(["runs", "show", done, "--workspace", ws]) == 0
    assert "acc/test" in capsys.readouterr().out
    assert main(["runs", "show", "r-nope", "--workspace", ws]) == 2
    assert "r-nope" in capsys.readouterr().err
    assert main(["runs", "rm", queued, "--workspace", ws]) == 2  # queued: needs --force
    assert "--force" in capsys.readouterr().err
    assert main(["runs", "stop", queued, "--workspace", ws]) == 0
    assert s.get_run(queued).status == "stopped"
    assert main(["runs", "rm", done, queued, "--workspace", ws]) == 0
    assert s.list_runs().empty
    assert main(["sweep", "--method", "dense", "--workspace", ws]) == 2
    assert "--target-macs" in capsys.readouterr().err
    assert main(["sweep", "--method", "dense", "--grid", "train.lr=0.1,-1", "--workspace", ws]) == 2
    assert "lr must be > 0" in capsys.readouterr().err
    assert s.sweeps().empty  # nothing queued when one grid point is invalid


@pytest.mark.slow
def test_default_experiment_in_the_background(tmp_path):
    cfg = RunConfig(model="resnet20", dataset="shapes", method="dense",
                    data_options={"num_samples": 64, "num_test": 32, "image_size": 16},
                    train=TrainConfig(epochs=1, batch_size=16, max_steps_per_epoch=2, log_every=1, device="cpu"))
    h = start_run(cfg, workspace=tmp_path, threads=1)
    info = h.wait(timeout=240)
    assert info.status == "done", info.error
    assert 0 <= info.result["metrics"]["acc/test"] <= 1 and "model" not in info.result
    s = RunStore(tmp_path)
    assert s.metrics(h.id, ["loss"]).step.tolist() == [1, 2]
    row = s.list_runs().iloc[0]
    assert row["acc/test"] == pytest.approx(info.result["metrics"]["acc/test"])
    assert s.latest_checkpoint(h.id) is not None and "threads" in (tmp_path / "runs" / h.id / "log.txt").read_text()
