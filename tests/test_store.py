"""The SQLite run store: round trip, idempotent writes, schema migration, bad files, concurrency."""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest

from prunekit.errors import CheckpointError, ConfigError
from prunekit.train import store as store_mod
from prunekit.train.store import MIGRATIONS, RunStore, StoreCallback
from prunekit.train.store import schema as schema_mod

CFG = {"model": "resnet20", "dataset": "shapes", "method": "crisp", "name": "t", "train": {"epochs": 1}}


def test_round_trip(tmp_path):
    s = RunStore(tmp_path)
    rid = s.create_run(CFG)
    info = s.get_run(rid)
    assert info.status == "queued" and info.config == CFG and info.name == "t" and info.progress == 0.0
    assert (tmp_path / "runs" / rid).is_dir()
    s.log_scalars(rid, 10, 0, {"loss": 2.5, "acc/train": 0.25})
    s.log_scalars(rid, 20, 0, {"loss": 2.0, "acc/train": 0.5})
    s.log_layers(rid, 20, 0, [
        {"layer": "conv1", "name": "gate_mean", "value": 0.7},
        {"layer": "conv1", "name": "gate_hist", "value": None, "data": {"edges": [0, 0.5, 1], "counts": [3, 5]}},
    ])
    s.log_layers(rid, 10, 0, [{"layer": "conv1", "name": "gate_mean", "value": 0.9}])
    df = s.metrics(rid)
    assert list(df.columns) == ["step", "epoch", "name", "value"]
    assert df.step.tolist() == [10, 10, 20, 20]
    assert df[(df.step == 20) & (df.name == "loss")].value.item() == 2.0
    assert s.metrics(rid, ["loss"], since_step=15).value.tolist() == [2.0]
    lm = s.layer_metrics(rid)
    assert len(lm) == 3
    last = s.layer_metrics(rid, step="last")
    assert set(last.step) == {20}
    hist = last[last.name == "gate_hist"].data.item()
    assert hist == {"edges": [0, 0.5, 1], "counts": [3, 5]}
    assert math.isnan(last[last.name == "gate_hist"].value.item())

    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"x")
    s.add_checkpoint(rid, 20, 1, ckpt)
    assert s.checkpoints(rid).step.tolist() == [20] and s.latest_checkpoint(rid) == ckpt
    cid = s.add_collapse_result(rid, {"macs_ratio": 0.5, "max_abs_diff": 1e-6})
    assert s.collapse_results(rid) == [{"id": cid, "created": pytest.approx(time.time(), abs=60),
                                        "macs_ratio": 0.5, "max_abs_diff": 1e-6}]

    s.set_status(rid, "running", pid=os.getpid())
    s.heartbeat(rid, 0.5)
    info = s.get_run(rid)
    assert info.status == "running" and info.pid == os.getpid() and info.progress == 0.5 and info.started
    s.log_scalars(rid, 30, 1, {"acc/test": 0.8, "macs_ratio/hard": 0.45})
    s.set_status(rid, "done", result={"metrics": {"acc/test": 0.81}})
    runs = s.list_runs()
    row = runs.iloc[0]
    assert row.id == rid and row.status == "done" and row.progress == 1.0 and row.method == "crisp"
    assert row["acc/test"] == 0.81 and row["macs_ratio/hard"] == 0.45
    assert s.list_runs(status="running").empty

    # another process (a notebook) sees everything after the writer flushed
    other = RunStore(tmp_path)
    assert len(other.metrics(rid)) == 6 and other.get_run(rid).status == "done"

    s.delete_run(rid)
    assert not (tmp_path / "runs" / rid).exists()
    with pytest.raises(ConfigError, match=rid):
        s.get_run(rid)
    assert s.metrics(rid).empty and s.layer_metrics(rid).empty


def test_writes_are_idempotent_and_truncate(tmp_path):
    s = RunStore(tmp_path)
    rid = s.create_run(CFG)
    for step in (1, 2, 3, 4):
        s.log_scalars(rid, step, 0, {"loss": float(step)})
        s.log_layers(rid, step, 0, [{"layer": "a", "name": "keep_ratio", "value": step / 10}])
    s.flush()
    s.truncate_after(rid, 2)  # what resume does before re-running steps 3, 4
    s.log_scalars(rid, 3, 0, {"loss": 30.0})
    s.log_scalars(rid, 3, 0, {"loss": 31.0})  # the same (run, step, name) twice: one row, the last value
    df = s.metrics(rid)
    assert df.step.tolist() == [1, 2, 3] and df.value.tolist() == [1.0, 2.0, 31.0]
    assert s.layer_metrics(rid).step.tolist() == [1, 2]


def test_buffered_writes_are_invisible_until_flushed(tmp_path):
    s = RunStore(tmp_path, flush_interval=3600)
    rid = s.create_run(CFG)
    s.log_scalars(rid, 1, 0, {"loss": 1.0})
    reader = RunStore(tmp_path)
    assert reader.metrics(rid).empty  # buffered in the writer
    s.flush()
    assert len(reader.metrics(rid)) == 1


def test_schema_version_and_migration(tmp_path, monkeypatch):
    s = RunStore(tmp_path)
    assert s.schema_version == len(MIGRATIONS) >= 2
    s.close()
    # a database at version 1 (before the `runner` column) is migrated in place, keeping its rows
    db = tmp_path / "v1" / "runs.sqlite"
    db.parent.mkdir()
    c = sqlite3.connect(db)
    for sql in MIGRATIONS[0]:
        c.execute(sql)
    c.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    c.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    c.execute(f"PRAGMA application_id = {store_mod.APPLICATION_ID}")
    c.execute("INSERT INTO runs (id, config, status, created, updated) VALUES ('r1', '{}', 'done', 1, 1)")
    c.commit()
    c.close()
    s1 = RunStore(db.parent)
    assert s1.schema_version == len(MIGRATIONS)
    assert s1.get_run("r1").status == "done" and s1.get_run("r1").runner is None
    s1.close()
    # a future migration step is applied on open, once
    monkeypatch.setattr(schema_mod, "MIGRATIONS", [*MIGRATIONS, ["CREATE TABLE extra (x INTEGER)"]])
    s2 = RunStore(db.parent)
    assert s2.schema_version == len(MIGRATIONS) + 1
    assert s2._conn.execute("SELECT COUNT(*) FROM extra").fetchone() == (0,)
    s2.close()
    # ... and an older prunekit refuses the newer file instead of misreading it
    monkeypatch.setattr(schema_mod, "MIGRATIONS", MIGRATIONS)
    with pytest.raises(CheckpointError, match="newer"):
        RunStore(db.parent)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "foreign"])
def test_corrupt_or_foreign_database_is_refused_untouched(tmp_path, kind):
    db = tmp_path / "runs.sqlite"
    if kind == "garbage":
        db.write_bytes(b"this is not a database at all\n" * 100)
    elif kind == "truncated":
        db.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    else:
        c = sqlite3.connect(db)
        c.execute("CREATE TABLE customers (id INTEGER, name TEXT)")
        c.execute("INSERT INTO customers VALUES (1, 'ada')")
        c.commit()
        c.close()
    before = db.read_bytes()
    with pytest.raises(CheckpointError, match="left untouched"):
        RunStore(tmp_path)
    assert db.read_bytes() == before
    assert not (tmp_path / "runs.sqlite-wal").exists() or kind == "foreign"


def test_workspace_that_cannot_be_created(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot be created"):
        RunStore(blocker / "ws")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions, so a read-only folder is writable")
def test_read_only_workspace(tmp_path):
    ws = tmp_path / "ws"
    RunStore(ws).close()
    ws.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="read-only"):
            RunStore(ws)
    finally:
        ws.chmod(0o700)


def test_bad_arguments(tmp_path):
    s = RunStore(tmp_path)
    with pytest.raises(ConfigError, match="nope"):
        s.get_run("nope")
    with pytest.raises(ConfigError, match="status"):
        s.create_run(CFG, status="paused")
    rid = s.create_run(CFG)
    with pytest.raises(ConfigError, match="exploded"):
        s.set_status(rid, "exploded")
    with pytest.raises(ConfigError, match="nope"):
        s.get_sweep("nope")


def test_dead_process_is_marked_interrupted(tmp_path):
    s = RunStore(tmp_path)
    rid = s.create_run(CFG)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    s.set_status(rid, "running", pid=p.pid)
    info = s.get_run(rid)
    assert info.status == "interrupted" and str(p.pid) in info.error and info.finished
    # a run on another machine is judged by its heartbeat alone
    rid2 = s.create_run(CFG)
    s.set_status(rid2, "running", pid=1)
    s._write("UPDATE runs SET host='elsewhere/x', heartbeat=? WHERE id=?", (time.time(), rid2))
    assert s.get_run(rid2).status == "running"
    s._write("UPDATE runs SET heartbeat=? WHERE id=?", (time.time() - 60, rid2))
    assert s.list_runs(status="interrupted").id.tolist() == [rid2, rid] or set(
        s.list_runs(status="interrupted").id) == {rid, rid2}


def test_sweeps_table(tmp_path):
    s = RunStore(tmp_path)
    sid = s.create_sweep("crisp macs", {"grid": {"method_options.target_macs": [0.3, 0.5]}})
    r1, r2 = s.create_run(CFG, sweep_id=sid), s.create_run(CFG, sweep_id=sid)
    s.create_run(CFG)
    s.set_status(r1, "done")
    sw = s.sweeps()
    assert sw.id.tolist() == [sid] and sw.runs.item() == 2 and sw.done.item() == 1 and sw.pending.item() == 1
    assert set(s.list_runs(sweep_id=sid).id) == {r1, r2}


class _FakeTrainer(SimpleNamespace):
    pass


def test_store_callback_logs_and_polls_stop(tmp_path):
    s = RunStore(tmp_path)
    rid = s.create_run(CFG)
    cb = StoreCallback(s, rid, poll_interval=0.0, heartbeat_interval=0.05, checkpoint_dir=tmp_path / "ck")
    tr = _FakeTrainer(step=0, epoch=0, steps_per_epoch=4, config=SimpleNamespace(epochs=2))
    cb.on_train_start(tr)
    assert s.get_run(rid).status == "running"
    for step in range(1, 5):
        tr.step = step
        cb.on_step_end(tr, {"loss": 1.0 / step})
        cb.on_layer_metrics(tr, [{"layer": "l1", "name": "gate_mean", "value": 0.5}])
        assert not cb.should_stop(tr)
    (tmp_path / "ck").mkdir()
    cb.on_epoch_end(tr, {"acc/val": 0.5, "epoch": 1})
    tr.epoch = 1
    (tmp_path / "ck" / "last.pt").write_bytes(b"ckpt")  # the loop writes it right after on_epoch_end
    tr.step = 5
    cb.on_step_end(tr, {"loss": 0.1})
    assert s.checkpoints(rid)[["step", "epoch"]].values.tolist() == [[4, 1]]
    time.sleep(0.3)
    assert s.get_run(rid).progress == pytest.approx(5 / 8)  # written by the heartbeat thread
    s.request_stop(rid)
    assert cb.should_stop(tr)
    cb.on_train_end(tr, {"status": "stopped"})
    info = s.get_run(rid)
    assert info.status == "stopped" and info.heartbeat
    m = s.metrics(rid)
    assert m[m.name == "loss"].step.tolist() == [1, 2, 3, 4, 5]
    assert m[m.name == "acc/val"].epoch.tolist() == [0]
    assert len(s.layer_metrics(rid)) == 4


def test_store_callback_marks_divergence(tmp_path):
    s = RunStore(tmp_path)
    rid = s.create_run(CFG)
    cb = StoreCallback(s, rid, heartbeat_interval=0)
    tr = _FakeTrainer(step=3, epoch=0)
    cb.on_train_start(tr)
    cb.on_step_end(tr, {"loss": float("nan")})
    assert cb.should_stop(tr)
    cb.on_train_end(tr, {"status": "diverged", "error": "training diverged: loss is nan at step 3"})
    info = s.get_run(rid)
    assert info.status == "failed" and "step 3" in info.error


_WRITER = textwrap.dedent("""
    import sys, time
    from prunekit.train.store import RunStore
    s = RunStore(sys.argv[1], flush_interval=0.05)
    rid = sys.argv[2]
    s.set_status(rid, "running")
    for step in range(1, 401):
        s.log_scalars(rid, step, 0, {"loss": 1.0 / step, "acc/train": step / 400})
        s.log_layers(rid, step, 0, [{"layer": f"l{i}", "name": "gate_mean", "value": 0.5} for i in range(8)])
        if step % 20 == 0:
            s.heartbeat(rid, step / 400)
        time.sleep(0.002)
    s.set_status(rid, "done")
    s.close()
""")


@pytest.mark.slow  # two interpreters importing torch (via prunekit.train) on a busy 2-core machine: ~20 s
def test_two_writers_and_a_polling_reader_never_lock(tmp_path):
    s = RunStore(tmp_path)
    rids = [s.create_run(CFG), s.create_run(CFG)]
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), r], stderr=subprocess.PIPE, text=True)
             for r in rids]
    reader = RunStore(tmp_path)
    polls = 0
    deadline = time.monotonic() + 60
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        for r in rids:  # what the app's live view does every 200 ms
            reader.metrics(r)
            reader.layer_metrics(r, step="last")
        reader.list_runs()
        polls += 1
        time.sleep(0.2)
    errs = [p.communicate()[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    assert not any("locked" in e for e in errs)
    assert polls >= 2
    for r in rids:
        m = reader.metrics(r, ["loss"])
        assert m.step.tolist() == list(range(1, 401))
        assert len(reader.layer_metrics(r)) == 400 * 8
        assert reader.get_run(r).status == "done"
