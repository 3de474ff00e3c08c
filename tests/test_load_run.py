"""``pk.load_run``: a trained run back through the public API (issue 20 item 10), with the outputs it reported on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import prunekit as pk
from prunekit.errors import CheckpointError, ConfigError
from prunekit.train.checkpoint import read_checkpoint, save_checkpoint
from prunekit.train.store import RunStore

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(method: str, **options) -> pk.RunConfig:
    return pk.RunConfig(
        model="resnet20", dataset="shapes", method=method, method_options=options,
        data_options={"num_samples": 128, "num_test": 32, "image_size": 16},
        train=pk.TrainConfig(epochs=2, batch_size=16, max_steps_per_epoch=2, log_every=1, device="cpu"),
    )


def _train(cfg: pk.RunConfig, folder: Path) -> dict:
    result = pk.run_experiment(cfg, checkpoint_dir=folder)
    assert result["status"] == "completed"
    return result


def _test_batch(loaded: pk.LoadedRun) -> torch.Tensor:
    return next(iter(loaded.loaders.test))[0]


@pytest.fixture(scope="module")
def crisp_run(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("crisp-run")
    return folder, _train(_tiny("crisp", target_macs=0.5), folder)


def _same_outputs(loaded: pk.LoadedRun, model: torch.nn.Module) -> None:
    x = _test_batch(loaded)
    with torch.no_grad():
        ours, theirs = loaded.model.eval()(x), model.eval()(x)
    assert torch.equal(ours, theirs), f"max difference {(ours - theirs).abs().max().item():.3g}"


def test_load_run_gives_the_model_the_run_reported_on(crisp_run):
    folder, result = crisp_run
    loaded = pk.load_run(folder)
    assert loaded.status == "completed" and loaded.finalized and loaded.run_id is None
    assert loaded.checkpoint == folder / "last.pt" and loaded.step == result["steps"] == 4
    assert loaded.config.method == "crisp" and loaded.config.method_options == {"target_macs": 0.5}
    assert isinstance(loaded.gated, pk.GatedModel)
    _same_outputs(loaded, result["model"])
    assert loaded.evaluate("test")["acc"] == result["metrics"]["acc/test"]
    # the finalized masks are the run's: collapsing gives the MACs the run ended with
    assert loaded.finalize() is loaded.model
    slim = pk.collapse(loaded.gated)
    assert slim.pk_collapse["max_diff"] < 1e-4
    assert pk.count_macs(slim, _test_batch(loaded)[:1]) == pytest.approx(
        float(pk.relaxed_macs(result["model"], "hard")), rel=1e-6)
    # finalize=False: the completed run as last checkpointed; finalize() later gives the same model (CRISP's final
    # masks need no data)
    raw = pk.load_run(folder, finalize=False)
    assert raw.status == "completed" and not raw.finalized
    raw.finalize()
    assert raw.finalized
    _same_outputs(raw, result["model"])


def test_load_run_reproduces_a_method_that_re_estimates_bn_after_finalize(tmp_path):
    """L0 re-estimates BatchNorm statistics after finalize on seeded training batches: the loaded model must be that
    model, not the last checkpoint with the masks fixed afterwards."""
    result = _train(_tiny("l0", target_macs=0.5), tmp_path)
    loaded = pk.load_run(tmp_path / "last.pt")
    assert type(loaded.method).recalibrate_bn_after_finalize and loaded.finalized
    _same_outputs(loaded, result["model"])
    assert loaded.evaluate("test")["acc"] == result["metrics"]["acc/test"]


def test_load_run_by_run_id_and_handle(crisp_run, tmp_path):
    folder, result = crisp_run
    ws = tmp_path / "ws"
    with RunStore(ws) as store:
        run_id = store.create_run(_tiny("crisp", target_macs=0.5).to_dict(), status="done")
        store.add_checkpoint(run_id, result["steps"], result["epochs"], folder / "last.pt")
    by_id = pk.load_run(run_id, workspace=ws)
    assert by_id.run_id == run_id and by_id.checkpoint == folder / "last.pt"
    _same_outputs(by_id, result["model"])
    by_handle = pk.load_run(pk.get_handle(run_id, ws))
    assert by_handle.run_id == run_id
    _same_outputs(by_handle, result["model"])


def test_an_unfinished_run_is_loaded_as_checkpointed_and_finalized_on_request(crisp_run, tmp_path):
    folder, result = crisp_run
    ckpt = read_checkpoint(folder / "last.pt")
    stopped = tmp_path / "stopped.pt"
    save_checkpoint(stopped, model=_Weights(ckpt["model"]), method_state=ckpt["method_state"], step=ckpt["step"], epoch=ckpt["epoch"], config=ckpt["config"],
                    extra={**ckpt["extra"], "status": "stopped"})
    loaded = pk.load_run(stopped)
    assert loaded.status == "stopped" and not loaded.finalized
    model = loaded.finalize()
    assert loaded.finalized and model is loaded.model and not model.training
    _same_outputs(loaded, result["model"])  # CRISP's finalize needs no data: the run's own final masks


class _Weights(torch.nn.Module):
    """Stands in for a model in save_checkpoint: only its state dict is written."""

    def __init__(self, state: dict) -> None:
        super().__init__()
        self._state = state

    def state_dict(self, *args, **kwargs) -> dict:  # type: ignore[override]
        return self._state


def test_bad_run_argument_names_the_argument_and_the_value(tmp_path, crisp_run):
    folder, result = crisp_run
    ws = tmp_path / "ws"
    RunStore(ws).close()
    with pytest.raises(ConfigError, match=r"run must be a run id, a run folder or a checkpoint file, got 'r-nosuch'.*"
                                          r"no run with that id"):
        pk.load_run("r-nosuch", workspace=ws)
    empty_ws = tmp_path / "no-store"
    with pytest.raises(ConfigError, match=r"got 'r-nosuch'.*has no run store"):
        pk.load_run("r-nosuch", workspace=empty_ws)
    assert not empty_ws.exists()  # looking up an id creates no workspace
    with pytest.raises(CheckpointError, match=r"checkpoint '.*missing\.pt' does not exist"):
        pk.load_run(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        pk.load_run(tmp_path)
    with pytest.raises(ConfigError, match="run must be a run id, a run folder or a checkpoint file, got 42"):
        pk.load_run(42)
    with pytest.raises(ConfigError, match="split must be 'test' or 'val', got 'train'"):
        pk.load_run(folder).evaluate("train")


def test_the_app_loads_the_network_the_run_reported_on(tmp_path):
    """The app's Explore and Collapse pages work on ``app_support.load_run``: for a method that re-estimates
    BatchNorm after finalize (L0) it must be the finalized network, not the last checkpoint as stored."""
    from prunekit.app_support import load_run as app_load_run

    result = _train(_tiny("l0", target_macs=0.5), tmp_path / "run")
    ws = tmp_path / "ws"
    with RunStore(ws) as store:
        run_id = store.create_run(_tiny("l0", target_macs=0.5).to_dict(), status="done")
        store.add_checkpoint(run_id, result["steps"], result["epochs"], tmp_path / "run" / "last.pt")
    loaded = app_load_run(ws, run_id)
    _same_outputs(loaded.experiment, result["model"])
    assert loaded.experiment.evaluate("test")["acc"] == result["metrics"]["acc/test"]
