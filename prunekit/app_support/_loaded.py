"""A run rebuilt from a checkpoint, and what the pages do with it: what-if thresholds, collapse and compare.

Models shared between sessions are mutated by the what-if evaluation (hard masks), so each
:class:`LoadedRun` carries a lock and restores its masks before releasing it. Model work runs on
:data:`~prunekit.app_support._process.APP_THREADS` threads (:func:`app_threads`).
"""

from __future__ import annotations

import io
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from prunekit.app_support._process import app_threads, file_version, st_cached
from prunekit.app_support._runs import describe_error, open_store
from prunekit.augment import find_gated
from prunekit.errors import ConfigError
from prunekit.train.config import RunConfig


@dataclass
class LoadedRun:
    """A run's model rebuilt from a checkpoint, with its data; shared between sessions under ``lock``."""

    run_id: str
    checkpoint: Path
    step: int
    config: RunConfig
    experiment: Any  # prunekit.train.load.LoadedRun: model, loaders, task, example_input
    lock: threading.Lock = field(default_factory=threading.Lock)
    _eval_cache: dict[int, list[Any]] = field(default_factory=dict, repr=False)

    def eval_batches(self, max_samples: int) -> list[Any]:
        """The first ``max_samples`` samples (whole batches, at least one) of the run's validation split, or its
        test split when it keeps none; read once and kept, so a what-if step is model compute only."""
        if max_samples < 1:
            raise ConfigError(f"max_samples must be >= 1, got {max_samples}")
        if max_samples not in self._eval_cache:
            batches, seen = [], 0
            for x, y in _eval_loader(self):
                batches.append((x, y))
                seen += len(x)
                if seen >= max_samples:
                    break
            self._eval_cache[max_samples] = batches
        return self._eval_cache[max_samples]

    @property
    def model(self) -> nn.Module:
        return self.experiment.model

    @property
    def gated(self) -> Any | None:
        """The GatedModel inside the prepared model (None for methods without gates)."""
        return find_gated(self.model)


def _eval_loader(loaded: LoadedRun) -> Any:
    """The run's validation loader, or its test loader when the run keeps no validation split."""
    val = loaded.experiment.loaders.val
    return val if len(val.dataset) else loaded.experiment.loaders.test


def load_run(workspace: str | Path | None, run_id: str, checkpoint: str | Path | None = None) -> LoadedRun:
    """Rebuild run ``run_id`` and load ``checkpoint`` (default: its latest) with ``pk.load_run``.

    A completed run comes back finalized exactly as it ended (its method's final masks and, for the methods that
    ask, BatchNorm re-estimated): the last checkpoint is written before that, and a page that collapsed or
    re-thresholded the checkpoint as stored would show another network than the run reported on.

    Raises:
        ConfigError: unknown run, or a run without checkpoint yet.
        CheckpointError: a corrupt or mismatching checkpoint.
        DataNotFoundError: the run's dataset is not on this machine.
    """
    from prunekit.train.load import load_run as load_trained

    store = open_store(workspace)
    store.get_run(run_id)
    path = Path(checkpoint) if checkpoint is not None else store.latest_checkpoint(run_id)
    if path is None:
        raise ConfigError(f"run {run_id!r} has no checkpoint yet (one is written after every epoch)")
    run = load_trained(path)
    run.model.eval()
    return LoadedRun(run_id, path, int(run.step), run.config, run)


def cached_run(workspace: str | None, run_id: str, checkpoint: str) -> LoadedRun:
    """``load_run`` cached per (workspace, run, checkpoint file version) for all sessions.

    The key includes the file's mtime and size: the loop rewrites ``last.pt`` after every epoch, and the same
    path must then give the new weights. Loading runs on :data:`APP_THREADS` threads.
    """
    return st_cached("run", _load_run_at)(workspace, run_id, str(checkpoint), file_version(checkpoint))


def _load_run_at(workspace: str | None, run_id: str, checkpoint: str, version: tuple[int, int] | None) -> LoadedRun:
    del version  # part of the cache key only
    with app_threads():
        return load_run(workspace, run_id, checkpoint)


# -- what-if threshold -------------------------------------------------------------------------------
# 1,024 samples: the default run's whole validation split (800 of 8,000 shapes), in ~0.3 s on a quiet 2-core CPU
WHAT_IF_SAMPLES = 1024


def what_if(loaded: LoadedRun, threshold: float, *, max_samples: int = WHAT_IF_SAMPLES) -> dict[str, Any]:
    """Accuracy and MACs that re-thresholding the checkpoint's gates at ``threshold`` would give.

    Applies every gate's own prune rule (``GatedModel.prune_``: keep iff eval gate value > threshold, a critical
    group keeps its strongest channel) on top of the checkpoint's keep masks, evaluates on the first
    ``max_samples`` validation samples (whole batches, read once per loaded run; the whole split when it is
    smaller, so at the method's own threshold the answer is the run's reported validation accuracy), reads the
    hard MACs ratio (equal to the collapsed network's), and restores the masks: the shared model is unchanged.

    Returns:
        ``{"threshold", "acc", "samples", "macs_ratio", "kept", "total", "seconds", "per_group": DataFrame}``
        with ``per_group`` columns ``group, size, trained, kept`` (channels kept by the checkpoint / at threshold).
    """
    from prunekit.cost import macs_ratio
    from prunekit.train.evaluate import evaluate

    if not 0 <= threshold <= 1:
        raise ConfigError(f"threshold must be in [0, 1], got {threshold}")
    gated = loaded.gated
    if gated is None:
        raise ConfigError(f"method {loaded.config.method!r} has no gates, so there is no threshold to explore")
    t0 = time.perf_counter()
    with loaded.lock, app_threads():
        batches = loaded.eval_batches(max_samples)
        saved = [h.gate.keep.clone() for h in gated.groups]
        try:
            trained = [int(h.hard_mask().sum()) for h in gated.groups]
            gated.prune_(threshold)
            kept = [int(h.hard_mask().sum()) for h in gated.groups]
            res = evaluate(loaded.model, batches, loaded.experiment.task)
            macs = float(macs_ratio(gated, "hard"))
        finally:
            for h, keep in zip(gated.groups, saved):
                h.gate.keep.copy_(keep)
    per_group = pd.DataFrame({"group": [h.name for h in gated.groups], "size": [h.size for h in gated.groups],
                              "trained": trained, "kept": kept})
    return {
        "threshold": float(threshold), "acc": res.get("acc", res.get("miou")), "samples": res["samples"],
        "macs_ratio": macs, "kept": int(per_group["kept"].sum()), "total": int(per_group["size"].sum()),
        "seconds": time.perf_counter() - t0, "per_group": per_group,
    }


# -- collapse and compare ----------------------------------------------------------------------------
def collapse_and_compare(loaded: LoadedRun, out_dir: str | Path, *, max_batches: int = 8) -> dict[str, Any]:
    """Collapse the loaded run's gated model, compare original vs slim, save the slim model and its ONNX.

    Returns:
        ``prunekit.compare``'s dict (made JSON-able) plus ``files`` (paths of the slim spec+weights and ONNX),
        ``checkpoint``, ``step`` and ``seconds``.

    Raises:
        CollapseError: the slim network's outputs would differ from the masked network's.
    """
    import copy

    from prunekit.collapse import collapse
    from prunekit.compare import compare, latency_forms
    from prunekit.io import export_onnx, save_slim

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x = loaded.experiment.example_input
    loader = _eval_loader(loaded)
    with loaded.lock:
        original = copy.deepcopy(loaded.model).eval()
    gated = find_gated(original)
    if gated is None:
        raise ConfigError(f"method {loaded.config.method!r} leaves no gates in the model, so there is nothing to collapse")
    slim = collapse(gated, x).eval()
    result = jsonable(compare(original, slim, loader, x, task=loaded.experiment.task, max_batches=max_batches))
    # dense vs slim as deployed: BatchNorm folded, and in ONNX Runtime when it is installed
    result["latency_forms"] = jsonable(latency_forms(gated.model, slim, x))
    files = {"slim": str(save_slim(slim, out_dir / "slim.pt"))}
    try:
        export_onnx(slim, x[:1], out_dir / "slim.onnx")
        files["onnx"] = str(out_dir / "slim.onnx")
    except Exception as e:  # noqa: BLE001 - ONNX export is optional (onnx not installed, unsupported op): report it
        result["onnx_error"] = describe_error(e)
    result.update(files=files, checkpoint=str(loaded.checkpoint), step=loaded.step,
                  seconds=time.perf_counter() - t0, created=time.time())
    return result


def jsonable(obj: Any) -> Any:
    """Tensors, numpy scalars, tuples and paths turned into JSON types, recursively."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    if isinstance(obj, str | int | float | bool) or obj is None:
        return obj
    return str(obj)


def widths_frame(result: dict[str, Any]) -> pd.DataFrame:
    """Per-layer widths ``layer, before, after`` from a compare result, whichever shape it uses.

    Accepts ``widths: {layer: [before, after]}``, ``widths: [{layer, before, after}]`` or
    ``widths_before``/``widths_after`` dicts.
    """
    w = result.get("widths") or result.get("layer_widths")
    rows: list[dict[str, Any]] = []
    if isinstance(w, dict):
        for layer, v in w.items():
            if isinstance(v, dict):
                rows.append({"layer": layer, "before": v.get("before"), "after": v.get("after")})
            else:
                rows.append({"layer": layer, "before": v[0], "after": v[1]})
    elif isinstance(w, list):
        rows = [{"layer": r.get("layer") or r.get("name"), "before": r["before"], "after": r["after"]} for r in w]
    elif isinstance(result.get("widths_before"), dict):
        after = result.get("widths_after") or {}
        rows = [{"layer": k, "before": v, "after": after.get(k, 0)} for k, v in result["widths_before"].items()]
    return pd.DataFrame(rows, columns=["layer", "before", "after"])


def zip_files(paths: list[str | Path]) -> bytes:
    """A zip of files and folders (folders recursively), for one download button."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in map(Path, paths):
            if p.is_dir():
                for f in sorted(p.rglob("*")):
                    if f.is_file():
                        z.write(f, f.relative_to(p.parent))
            elif p.is_file():
                z.write(p, p.name)
    return buf.getvalue()
