"""The fault matrix: every registered method × every fault a run meets, each with its expected outcome.

Process faults run the real background runner (``start_run`` / ``resume_run``, a fresh interpreter per process)
on a tiny experiment written to ``tmp_path``: a 3-layer CNN on 8×8 ``shapes`` images, 3 epochs of 4 steps. The
experiment can block at a given step (touching a marker file, so the test kills it exactly there, mid-epoch) or
pause a checkpoint write between the temporary file and its rename. In-process faults (NaN loss, disk full,
the store locked by another writer) train the same experiment in the test process, cheaply, for every method.

Outcomes asserted per cell (:data:`FAULTS`): resumable with a continuous history and the uninterrupted run's
weights and test accuracy; ``stopped``; ``failed`` with the step and the reason; nothing half-written and the
old checkpoint loadable; no lost metric rows and no read errors.

``python tests/test_faults.py`` runs this file and prints the method × fault table of the README.
"""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import install_module

from prunekit.methods import list_methods
from prunekit.train.checkpoint import CheckpointWriteError, read_checkpoint
from prunekit.train.config import RunConfig, TrainConfig
from prunekit.train.loop import DivergedError
from prunekit.train.runner import resume_run, start_run
from prunekit.train.store import RunStore, StoreCallback

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = list_methods()
# SIGTERM and a kill inside a checkpoint write test the runner and the checkpoint writer, not the method: one method
# per optimizer family (plain SGD, the split weights + gate-logits optimizer, sDprun's own); every method's graceful
# stop and resume is also checked in-process (test_train.py::test_every_method_resumes_bit_exact_after_a_mid_epoch_stop)
OPTIMIZER_FAMILIES = ["dense", "crisp", "sdprun"]
STEPS_PER_EPOCH, EPOCHS = 4, 3
TOTAL = STEPS_PER_EPOCH * EPOCHS

#: fault -> the outcome every method must show (the README's table prints these for the cells that passed)
FAULTS = {
    "sigkill_mid_epoch": "interrupted → resumed, continuous history, same weights",
    "sigkill_in_checkpoint_write": "old checkpoint loadable, temp file cleaned → resumed, same weights",
    "sigterm": "stopped (mid-epoch checkpoint) → resumed, same weights",
    "nan_loss": "failed with step and reason",
    "disk_full": "failed with step and ENOSPC; old checkpoint loadable, nothing half-written → resumed",
    "store_locked": "no lost metric rows, no crash",
    "app_polling_two_runs": "no read errors, rows complete",
}

_EXPERIMENT = textwrap.dedent('''
    """Tiny experiment for the fault tests: options under data_options["fault"] (removed before the data)."""
    import os
    import time
    from pathlib import Path

    import torch
    from torch import nn

    import prunekit.train.checkpoint as ck
    from prunekit.data import make_loaders
    from prunekit.methods import create_method
    from prunekit.train.evaluate import evaluate
    from prunekit.train.loop import Trainer


    def tiny_cnn():
        layers, c = [], 3
        for w in (8, 12, 16):
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
            c = w
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))


    def _block(marker, release=None):
        """Touch ``marker`` (the test waits for it), then wait for ``release`` (or for SIGKILL)."""
        Path(marker).touch()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (release and Path(release).exists()):
            time.sleep(0.01)


    def run(cfg, callbacks=(), checkpoint_dir=None, resume_from=None):
        opts = dict(cfg.data_options)
        fault = opts.pop("fault", {})
        torch.manual_seed(cfg.train.seed)
        loaders = make_loaders(cfg.dataset, cfg.train.batch_size, seed=cfg.train.seed, **opts)
        method = create_method(cfg.method, **cfg.method_options)
        example = torch.stack([loaders.train.dataset[i][0] for i in range(2)])
        model = method.prepare(tiny_cnn(), example)
        calls = [0]

        def hook(mod, inp, out):
            if mod.training:
                calls[0] += 1
                if fault.get("block_at") == calls[0] and not Path(fault["marker"]).exists():
                    _block(fault["marker"], fault.get("release"))
                if fault.get("nan_at") is not None and calls[0] > fault["nan_at"]:
                    return out * float("nan")
            return out

        model.register_forward_hook(hook)
        if fault.get("pause_write") is not None:  # pause the n-th checkpoint write between temp file and rename
            real_replace, saves = os.replace, [0]

            def replace(src, dst):
                if Path(dst).name == "last.pt":
                    saves[0] += 1
                    if saves[0] == fault["pause_write"] and not Path(fault["marker"]).exists():
                        _block(fault["marker"])
                return real_replace(src, dst)

            ck.os.replace = replace
        trainer = Trainer(model, loaders, cfg.train, method, callbacks, checkpoint_dir=checkpoint_dir,
                          resume_from=resume_from, run_config=cfg.to_dict())
        result = trainer.fit()
        test = evaluate(trainer.model, loaders.test, "classification", trainer.device)
        result["metrics"]["acc/test"] = test["acc"]
        state = trainer.model.state_dict()
        result["weights"] = {k: v.double().sum().item() for k, v in state.items() if v.is_floating_point()}
        result["model"] = trainer.model
        return result
''')
EXP = "pk_fault_experiment:run"


@pytest.fixture
def exp(tmp_path, monkeypatch):
    """The experiment module importable here and in the runner's children; returns the workspace."""
    install_module(tmp_path, monkeypatch, "pk_fault_experiment", _EXPERIMENT)
    return tmp_path / "ws"


def _cfg(method: str, **fault) -> RunConfig:
    return RunConfig(model="resnet20", dataset="shapes", method=method,
                     data_options={"num_samples": 72, "num_test": 16, "image_size": 8, "fault": fault},
                     val_fraction=0.1,
                     train=TrainConfig(epochs=EPOCHS, batch_size=16, max_steps_per_epoch=STEPS_PER_EPOCH, log_every=1,
                                       lr=0.05, device="cpu", num_threads=1, seed=1))


_REFERENCE: dict[str, dict] = {}


def _reference(method: str) -> dict:
    """The uninterrupted run in this process (cached per method)."""
    if method not in _REFERENCE:
        import pk_fault_experiment

        r = pk_fault_experiment.run(_cfg(method))
        _REFERENCE[method] = {"weights": r["weights"], "acc": r["metrics"]["acc/test"]}
    return _REFERENCE[method]


def _wait_for(pred, what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout} s")
        time.sleep(0.02)


def _assert_same_as_uninterrupted(info, method: str) -> None:
    ref = _reference(method)
    assert info.status == "done", info.error
    assert info.result["steps"] == TOTAL
    assert info.result["weights"] == ref["weights"]  # float64 sums of every tensor: bit-exact in practice
    assert info.result["metrics"]["acc/test"] == ref["acc"]


def _assert_continuous(store: RunStore, run_id: str) -> None:
    assert store.metrics(run_id, ["loss"]).step.tolist() == list(range(1, TOTAL + 1))  # no gap, no duplicate
    assert store.metrics(run_id, ["acc/val"]).step.tolist() == [STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]


# -- process faults: the real background runner (two fresh interpreters per case: ~10-25 s on a busy 2-core box) ---
@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_sigkill_mid_epoch(exp, tmp_path, method):
    marker = tmp_path / "blocked"
    h = start_run(_cfg(method, block_at=STEPS_PER_EPOCH + 3, marker=str(marker)), workspace=exp, experiment=EXP,
                  threads=1)
    s = RunStore(exp)
    _wait_for(marker.exists, "run blocked in epoch 2")
    # the metric rows after the checkpoint reach the store (heartbeat flush) before the kill: resume deletes them
    _wait_for(lambda: s.metrics(h.id, ["loss"]).step.max() == STEPS_PER_EPOCH + 2, "rows after the checkpoint")
    os.kill(h.pid, signal.SIGKILL)
    h.process.wait()
    info = s.get_run(h.id)
    assert info.status == "interrupted" and "ended without reporting" in info.error
    assert read_checkpoint(s.latest_checkpoint(h.id))["step"] == STEPS_PER_EPOCH
    info = resume_run(h.id, workspace=exp).wait(timeout=120)
    _assert_same_as_uninterrupted(info, method)
    _assert_continuous(s, h.id)


@pytest.mark.slow
@pytest.mark.parametrize("method", OPTIMIZER_FAMILIES)
def test_sigkill_in_checkpoint_write(exp, tmp_path, method):
    marker = tmp_path / "writing"
    h = start_run(_cfg(method, pause_write=2, marker=str(marker)), workspace=exp, experiment=EXP, threads=1)
    s = RunStore(exp)
    _wait_for(marker.exists, "second checkpoint written to its temporary file")
    ckdir = exp / "runs" / h.id / "checkpoints"
    temps = list(ckdir.glob(".last.pt.*.tmp"))
    assert len(temps) == 1 and temps[0].stat().st_size > 0  # fully written, not yet renamed
    os.kill(h.pid, signal.SIGKILL)
    h.process.wait()
    assert s.get_run(h.id).status == "interrupted"
    assert read_checkpoint(ckdir / "last.pt")["step"] == STEPS_PER_EPOCH  # the old checkpoint, intact
    info = resume_run(h.id, workspace=exp).wait(timeout=120)
    _assert_same_as_uninterrupted(info, method)
    _assert_continuous(s, h.id)
    assert sorted(p.name for p in ckdir.iterdir()) == ["last.pt"]  # the killed writer's temp file: removed


@pytest.mark.slow
@pytest.mark.parametrize("method", OPTIMIZER_FAMILIES)
def test_sigterm(exp, tmp_path, method):
    marker, release = tmp_path / "blocked", tmp_path / "release"
    h = start_run(_cfg(method, block_at=STEPS_PER_EPOCH + 2, marker=str(marker), release=str(release)),
                  workspace=exp, experiment=EXP, threads=1)
    s = RunStore(exp)
    _wait_for(marker.exists, "run blocked in epoch 2")
    os.kill(h.pid, signal.SIGTERM)
    release.touch()
    info = h.wait(timeout=60)
    assert info.status == "stopped" and info.error is None
    ckpt = read_checkpoint(s.latest_checkpoint(h.id))
    assert ckpt["step"] == STEPS_PER_EPOCH + 2 and ckpt["extra"]["step_in_epoch"] == 2  # where it stopped
    info = resume_run(h.id, workspace=exp).wait(timeout=120)
    _assert_same_as_uninterrupted(info, method)
    _assert_continuous(s, h.id)


# -- in-process faults ------------------------------------------------------------------------------------
def _train_here(store: RunStore, cfg: RunConfig, ckdir: Path, resume: Path | None = None, run_id: str | None = None):
    import pk_fault_experiment

    run_id = run_id or store.create_run(cfg.to_dict())
    cb = StoreCallback(store, run_id, checkpoint_dir=ckdir, heartbeat_interval=0.05)
    try:
        return run_id, pk_fault_experiment.run(cfg, callbacks=[cb], checkpoint_dir=ckdir, resume_from=resume), None
    except Exception as e:  # noqa: BLE001 - the test asserts on it
        return run_id, None, e


@pytest.mark.parametrize("method", METHODS)
def test_nan_loss(exp, tmp_path, method):
    s = RunStore(exp)
    nan_at = STEPS_PER_EPOCH + 1  # the loss of step 5 (0-based) is NaN, after the first checkpoint
    rid, _, err = _train_here(s, _cfg(method, nan_at=nan_at), tmp_path / "ck")
    assert isinstance(err, DivergedError) and err.step == nan_at
    info = s.get_run(rid)
    assert info.status == "failed" and "diverged" in info.error and f"step {nan_at}" in info.error
    assert read_checkpoint(tmp_path / "ck" / "last.pt")["step"] == STEPS_PER_EPOCH  # the last good one


@pytest.mark.parametrize("method", METHODS)
def test_disk_full(exp, tmp_path, method, monkeypatch):
    import prunekit.train.checkpoint as ck

    s = RunStore(exp)
    ckdir = tmp_path / "ck"
    real_save, saves = torch.save, [0]

    def save(obj, f, *a, **k):  # the second checkpoint hits a full disk after writing part of it
        saves[0] += 1
        if saves[0] == 2:
            f.write(b"\0" * 1024)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ck.torch, "save", save)
    rid, _, err = _train_here(s, _cfg(method), ckdir)
    assert isinstance(err, CheckpointWriteError) and err.errno == errno.ENOSPC
    info = s.get_run(rid)
    assert info.status == "failed"
    assert f"at step {2 * STEPS_PER_EPOCH}" in info.error and "No space left on device" in info.error
    assert sorted(p.name for p in ckdir.iterdir()) == ["last.pt"]  # nothing half-written
    assert read_checkpoint(ckdir / "last.pt")["step"] == STEPS_PER_EPOCH  # the old checkpoint, loadable
    monkeypatch.setattr(ck.torch, "save", real_save)  # space freed: the run resumes from the old checkpoint
    s.truncate_after(rid, STEPS_PER_EPOCH)
    _, result, err = _train_here(s, _cfg(method), ckdir, resume=ckdir / "last.pt", run_id=rid)
    assert err is None and result["weights"] == _reference(method)["weights"]
    _assert_continuous(s, rid)


@pytest.mark.parametrize("method", METHODS)
def test_store_locked(exp, tmp_path, method):
    """Another writer holds the database's write lock for 1 s mid-run: writes wait, no row is lost."""
    s = RunStore(exp)
    locked, release = threading.Event(), threading.Event()

    def other_writer():
        c = sqlite3.connect(s.path, timeout=30, isolation_level=None)
        c.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(10)
        c.execute("COMMIT")
        c.close()

    from prunekit.train.callbacks import Callback

    class LockAt(Callback):
        def on_step_end(self, trainer, logs):
            if trainer.step == 2:
                threading.Thread(target=other_writer, daemon=True).start()
                assert locked.wait(10)
                threading.Timer(1.0, release.set).start()

    import pk_fault_experiment

    rid = s.create_run(_cfg(method).to_dict())
    cb = StoreCallback(s, rid, checkpoint_dir=tmp_path / "ck", heartbeat_interval=0.05)
    t0 = time.monotonic()
    pk_fault_experiment.run(_cfg(method), callbacks=[LockAt(), cb], checkpoint_dir=tmp_path / "ck")
    assert release.is_set() and time.monotonic() - t0 >= 1.0  # the run did meet the lock
    assert s.get_run(rid).status == "done"
    _assert_continuous(s, rid)
    layer_steps = sorted(s.layer_metrics(rid).step.unique().tolist())
    assert layer_steps in ([], list(range(1, TOTAL + 1)))  # per-layer rows (gated methods): every step too


# -- the app polling the store while two background runs write ----------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("pair", [["crisp", "sdprun"]], ids=lambda p: "+".join(p))
def test_app_polling_two_runs(exp, pair):
    """Two background runs write while four threads read through one shared store, as the app's pages do."""
    app = RunStore(exp)  # the app keeps one store per process (st.cache_resource) for all its threads
    handles = [start_run(_cfg(m), workspace=exp, experiment=EXP, threads=1) for m in pair]
    errors: list[BaseException] = []
    reads = [0]
    done = threading.Event()

    def poll():
        while not done.is_set():
            try:
                runs = app.list_runs()
                assert len(runs) == 2
                for h in handles:
                    app.get_run(h.id)
                    m = app.metrics(h.id, ["loss"])
                    assert m.step.is_monotonic_increasing
                    app.layer_metrics(h.id, step="last")
                    app.checkpoints(h.id)
                reads[0] += 1
            except BaseException as e:  # noqa: BLE001 - collected and asserted below
                errors.append(e)
            time.sleep(0.01)

    pollers = [threading.Thread(target=poll, daemon=True) for _ in range(4)]
    for t in pollers:
        t.start()
    try:
        infos = [h.wait(timeout=180) for h in handles]
    finally:
        done.set()
        for t in pollers:
            t.join(10)
    assert errors == [], errors[:3]
    assert reads[0] > 10
    for h, info in zip(handles, infos):
        assert info.status == "done", info.error
        _assert_continuous(app, h.id)
        assert app.metrics(h.id, ["acc/test"]).value.tolist() == [info.result["metrics"]["acc/test"]]


# -- the README table -------------------------------------------------------------------------------------
def fault_table(outcomes: dict[tuple[str, str], bool]) -> str:
    """Markdown: one row per method, one column per fault; a cell is ✓ (passed), ✗ (failed) or – (not run)."""
    faults = list(FAULTS)
    lines = ["| method | " + " | ".join(f.replace("_", " ") for f in faults) + " |",
             "|---|" + "---|" * len(faults)]
    for m in METHODS:
        cells = [{True: "✓", False: "✗"}.get(outcomes.get((m, f)), "–") for f in faults]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Expected outcome per fault:", ""] + [f"- {f.replace('_', ' ')}: {o}" for f, o in FAULTS.items()]
    return "\n".join(lines) + "\n"


class _Collect:
    def __init__(self) -> None:
        self.outcomes: dict[tuple[str, str], bool] = {}

    def pytest_runtest_logreport(self, report):
        if report.when != "call" and not report.failed:
            return
        name, _, param = report.nodeid.split("::")[-1].partition("[")
        fault = name.removeprefix("test_")
        if fault in FAULTS:
            for m in param.rstrip("]").split("+"):
                ok = report.passed and self.outcomes.get((m, fault), True)
                self.outcomes[(m, fault)] = ok


if __name__ == "__main__":
    collect = _Collect()
    code = pytest.main([__file__, "-q", "-p", "no:cacheprovider", *sys.argv[1:]], plugins=[collect])
    sys.stdout.write(fault_table(collect.outcomes))
    sys.exit(code)
