"""What the Streamlit pages need beyond layout: the store, run forms, cached models, what-if and collapse.

The pages under ``app/`` only lay out widgets; every decision and computation lives here so it can be
tested without a browser. Streamlit appears only in the ``cached_*`` wrappers (``st.cache_resource`` keeps
one store and one loaded model per checkpoint for all sessions); the rest is plain Python.

Models shared between sessions are mutated by the what-if evaluation (hard masks), so each
:class:`LoadedRun` carries a lock and restores its masks before releasing it.

Performance (issue 8: re-render ≤ 0.5 s while a run trains, training ≥ 0.8× as fast with the app open): the
app shares the CPU with the runs it shows, and every session's script holds the app's GIL while it builds
figures. So live views read only the rows logged since their last refresh (:func:`live_metrics`), figures are
built once per data version and shared by all sessions (:func:`cached_figure`), checkpoints without gates are
never loaded (:func:`checkpoint_has_gates`), and model work in the app runs on one thread (:func:`app_threads`).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import gc
import inspect
import io
import json
import logging
import re
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from prunekit.errors import ConfigError, PrunekitError
from prunekit.train.config import RunConfig, TrainConfig

logger = logging.getLogger(__name__)

# The experiment `make run` opens on: small, offline, and it shows every view of the app.
DEFAULT_MODEL, DEFAULT_DATASET, DEFAULT_METHOD, DEFAULT_TARGET = "resnet20", "shapes", "crisp", 0.5
ACTIVE = ("queued", "running")
# Live views refresh this often while a run trains (issue 8: ~1-2 s). A refresh that finds no new rows costs a
# few ms (cached figures); runs flush their metrics every 2 s, so charts are rebuilt at most that often.
LIVE_EVERY_S = 1.5
# Intra-op torch threads for model work inside the app process (the runner leaves one core to the UI).
APP_THREADS = 1
_TARGET_NAMES = ("target_macs", "target", "target_ratio", "target_flops", "macs_target")


# -- errors as messages ----------------------------------------------------------------------------
def describe_error(e: BaseException) -> str:
    """One line for the user: prunekit's own errors verbatim, anything else with its type."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, PrunekitError | ValueError | FileNotFoundError):
        return msg or type(e).__name__
    if isinstance(e, ImportError):
        return f"a part of prunekit is not available yet ({msg})"
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


# -- store and runner --------------------------------------------------------------------------------
def open_store(workspace: str | Path | None = None) -> Any:
    """A :class:`prunekit.train.store.RunStore` on ``workspace`` (default: ``$PRUNEKIT_HOME`` or ./prunekit-runs)."""
    from prunekit.train.store import RunStore

    return RunStore(workspace)


def start(config: RunConfig, workspace: str | Path | None = None) -> str:
    """Start ``config`` in a background process (it outlives the app); returns the run id."""
    from prunekit.train.runner import start_run

    return start_run(config, workspace=workspace).id


def stop(run_id: str, workspace: str | Path | None = None) -> None:
    from prunekit.train.runner import stop_run

    stop_run(run_id, workspace=workspace)


def resume(run_id: str, workspace: str | Path | None = None) -> str:
    from prunekit.train.runner import resume_run

    return resume_run(run_id, workspace=workspace).id


def run_label(row: dict[str, Any] | pd.Series) -> str:
    """``<id> · <name or model/dataset/method> · <status>`` for select boxes."""
    name = row.get("name") or f"{row.get('model')} / {row.get('dataset')} / {row.get('method')}"
    return f"{row['id']} · {name} · {row.get('status')}"


def pick_run(runs: pd.DataFrame, wanted: str | None) -> str | None:
    """``wanted`` if it still exists, else the newest active run, else the newest run."""
    if runs is None or runs.empty:
        return None
    if wanted is not None and wanted in set(runs["id"]):
        return wanted
    active = runs[runs["status"].isin(ACTIVE)]
    return str((active if not active.empty else runs)["id"].iloc[0])


# -- the run form: methods' configs with their defaults and documentation ----------------------------
@dataclass(frozen=True)
class FieldSpec:
    """One method option for the form: name, the paper's default, a kind for the widget and help text."""

    name: str
    default: Any
    kind: str  # "bool" | "int" | "float" | "text" (JSON or plain string)
    help: str


def _field_comments(cls: type) -> dict[str, str]:
    """Trailing ``# comments`` of a dataclass's field lines, read from its source (empty if unavailable)."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for line in src.splitlines():
        m = re.match(r"\s+(\w+)\s*:[^#=]*(?:=[^#]*)?#\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _docstring_args(cls: type) -> dict[str, str]:
    """``name: text`` entries of a Google-style ``Args:``/``Attributes:`` section."""
    doc = inspect.getdoc(cls) or ""
    out, current = {}, None
    for line in doc.splitlines():
        m = re.match(r"\s{0,8}(\w+)(?: \(.*?\))?:\s+(.+)$", line)
        if m and m.group(1) not in ("Args", "Attributes", "Returns", "Raises"):
            current = m.group(1)
            out[current] = m.group(2).strip()
        elif current and line.startswith("        ") and line.strip():
            out[current] += " " + line.strip()
    return out


def _kind(value: Any, annotation: Any) -> str:
    ann = str(annotation)
    if isinstance(value, bool) or ann == "bool":
        return "bool"
    if isinstance(value, int) and ann in ("int", "<class 'int'>"):
        return "int"
    if isinstance(value, float) and "None" not in ann:
        return "float"
    return "text"


def method_fields(method: str) -> list[FieldSpec]:
    """The options of ``method``'s frozen Config with their defaults and help (field comments, docstring)."""
    from prunekit.methods import create_method

    cfg_cls = type(create_method(method).config)
    comments, doc = _field_comments(cfg_cls), _docstring_args(cfg_cls)
    specs = []
    for f in dataclasses.fields(cfg_cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        help_ = f.metadata.get("help") or comments.get(f.name) or doc.get(f.name) or ""
        specs.append(FieldSpec(f.name, default, _kind(default, f.type), help_))
    return specs


def target_field(method: str) -> str | None:
    """The name of the method's size-target option (``target_macs``, ...), if it has one."""
    names = [s.name for s in method_fields(method)]
    return next((n for n in _TARGET_NAMES if n in names), None)


def parse_option(spec: FieldSpec, value: Any) -> Any:
    """Turn a form value back into the option's type; text fields accept JSON (lists, null) or plain strings."""
    if spec.kind != "text":
        return value
    if not isinstance(value, str):
        return value
    text = value.strip()
    if isinstance(spec.default, str):
        return text
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError(f"{spec.name} must be JSON like {json.dumps(spec.default)}, got {value!r}") from None
    return tuple(parsed) if isinstance(spec.default, tuple) and isinstance(parsed, list) else parsed


def option_text(value: Any) -> str:
    """How a text-kind default is shown in the form (JSON, strings bare)."""
    if isinstance(value, str):
        return value
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def build_run_config(
    *,
    model: str = DEFAULT_MODEL,
    dataset: str = DEFAULT_DATASET,
    method: str = DEFAULT_METHOD,
    target: float | None = DEFAULT_TARGET,
    method_options: dict[str, Any] | None = None,
    data_options: dict[str, Any] | None = None,
    name: str | None = None,
    **train: Any,
) -> RunConfig:
    """A validated RunConfig from the form; ``target`` goes to the method's target option when it has one.

    Options equal to the method's defaults are dropped so the stored config shows only what the user changed.
    """
    specs = {s.name: s for s in method_fields(method)}
    opts = {k: v for k, v in (method_options or {}).items() if k in specs and v != specs[k].default}
    tf = target_field(method)
    if target is not None and tf is not None:
        if not 0 < float(target) <= 1:
            raise ConfigError(f"target must be in (0, 1], got {target}")
        opts[tf] = float(target)
    from prunekit.methods import create_method

    create_method(method, **opts)  # validates option values now rather than in the background process
    return RunConfig(model=model, dataset=dataset, method=method, method_options=opts, train=TrainConfig(**train),
                     data_options=dict(data_options or {}), name=name or None)


def default_config(**train: Any) -> RunConfig:
    """ResNet-20 on ``shapes`` with CRISP at 50% MACs (falls back to the dense baseline if CRISP is absent)."""
    from prunekit.methods import list_methods

    method = DEFAULT_METHOD if DEFAULT_METHOD in list_methods() else "dense"
    train.setdefault("epochs", 3)
    return build_run_config(method=method, name="default: resnet20 / shapes / crisp 50%", **train)


def find_default_run(runs: pd.DataFrame) -> str | None:
    """Newest run of the default experiment (model, dataset and method match), or None."""
    if runs is None or runs.empty:
        return None
    m = runs[(runs["model"] == DEFAULT_MODEL) & (runs["dataset"] == DEFAULT_DATASET) & (runs["method"] == DEFAULT_METHOD)]
    return None if m.empty else str(m["id"].iloc[0])


# -- loaded runs -------------------------------------------------------------------------------------
@dataclass
class LoadedRun:
    """A run's model rebuilt from a checkpoint, with its data; shared between sessions under ``lock``."""

    run_id: str
    checkpoint: Path
    step: int
    config: RunConfig
    experiment: Any  # prunekit.train.experiment.Experiment
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def model(self) -> nn.Module:
        return self.experiment.model

    @property
    def gated(self) -> Any | None:
        """The GatedModel inside the prepared model (None for methods without gates)."""
        return find_gated(self.model)


def find_gated(model: nn.Module) -> Any | None:
    """The module exposing ``groups`` and ``gate_values()`` (prunekit's GatedModel), if any."""
    for m in model.modules():
        if hasattr(m, "groups") and callable(getattr(m, "gate_values", None)) and not isinstance(m, nn.Conv2d):
            return m
    return None


def load_run(workspace: str | Path | None, run_id: str, checkpoint: str | Path | None = None) -> LoadedRun:
    """Rebuild run ``run_id`` (config from the store) and load ``checkpoint`` (default: its latest).

    Raises:
        ConfigError: unknown run, or a run without checkpoint yet.
        CheckpointError: a corrupt or mismatching checkpoint.
        DataNotFoundError: the run's dataset is not on this machine.
    """
    from prunekit.train.checkpoint import load_checkpoint
    from prunekit.train.experiment import build_experiment

    store = open_store(workspace)
    info = store.get_run(run_id)
    path = Path(checkpoint) if checkpoint is not None else store.latest_checkpoint(run_id)
    if path is None:
        raise ConfigError(f"run {run_id!r} has no checkpoint yet (one is written after every epoch)")
    cfg = RunConfig.from_dict(info.config)
    exp = build_experiment(cfg)
    ckpt = load_checkpoint(path, model=exp.model, method=exp.method)
    exp.model.eval()
    return LoadedRun(run_id, path, int(ckpt["step"]), cfg, exp)


def cached_store(workspace: str | None) -> Any:
    """One RunStore per workspace for the whole app process (``st.cache_resource``)."""
    return _st_cached("store", open_store)(workspace)


def cached_run(workspace: str | None, run_id: str, checkpoint: str) -> LoadedRun:
    """``load_run`` cached per (workspace, run, checkpoint file version) for all sessions.

    The key includes the file's mtime and size: the loop rewrites ``last.pt`` after every epoch, and the same
    path must then give the new weights. Loading runs on :data:`APP_THREADS` threads.
    """
    return _st_cached("run", _load_run_at)(workspace, run_id, str(checkpoint), file_version(checkpoint))


def _load_run_at(workspace: str | None, run_id: str, checkpoint: str, version: tuple[int, int] | None) -> LoadedRun:
    del version  # part of the cache key only
    with app_threads():
        return load_run(workspace, run_id, checkpoint)


def file_version(path: str | Path) -> tuple[int, int] | None:
    """``(mtime_ns, size)`` of a file, None if it is missing: a cache key that changes when the file is rewritten."""
    try:
        st_ = Path(path).stat()
    except OSError:
        return None
    return (st_.st_mtime_ns, st_.st_size)


_GATE_KEY = re.compile(r"(^|\.)gates\.\d+\.keep$")
_HAS_GATES: dict[tuple[str, tuple[int, int] | None], bool] = {}


def checkpoint_has_gates(path: str | Path) -> bool:
    """Whether a checkpoint's model holds pruning gates (``gates.<i>.keep`` buffers), without building the model.

    Reads the file's tensors only (``weights_only=True``, memory-mapped); cached per file version. The what-if
    and collapse views use it to say "this method has no gates" without spending seconds rebuilding a model
    for nothing while a run trains. An unreadable file counts as gated so that loading it reports the error.
    """
    key = (str(path), file_version(path))
    if key not in _HAS_GATES:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            state = ckpt.get("model", {}) if isinstance(ckpt, dict) else {}
            _HAS_GATES[key] = any(_GATE_KEY.search(str(k)) for k in state)
        except Exception:  # noqa: BLE001 - a corrupt file is load_run's to report, with its own message
            return True
        if len(_HAS_GATES) > 256:
            _HAS_GATES.pop(next(iter(_HAS_GATES)))
    return _HAS_GATES[key]


# -- the app process: garbage collector and torch threads ---------------------------------------------
_SETTLED = False
_SETTLE_LOCK = threading.Lock()


def settle_process() -> bool:
    """Once per app process, after the pages' imports: move every live object out of the collector's reach.

    Streamlit runs a full ``gc.collect(2)`` after every script and fragment run (``runner.postScriptGC``). With
    torch, pandas and plotly loaded that walks ~300k objects, 0.2-0.4 s holding the GIL, after each 2 s live
    refresh: a fifth of a core taken from the run being watched, and every other tab's click waits behind it.
    ``gc.freeze()`` (after one last collection) puts the modules' objects in the permanent generation, so the
    later passes only look at what the pages create; ``gc.unfreeze`` at exit lets the interpreter clean up.

    Returns:
        True on the call that froze, False afterwards.
    """
    global _SETTLED
    with _SETTLE_LOCK:
        if _SETTLED:
            return False
        _SETTLED = True
    gc.collect()
    gc.freeze()
    atexit.register(gc.unfreeze)
    return True


# -- torch threads ----------------------------------------------------------------------------------
_THREADS_LOCK = threading.Lock()
_THREADS_USERS = 0
_THREADS_SAVED = 0


@contextlib.contextmanager
def app_threads(n: int = APP_THREADS) -> Iterator[None]:
    """Run the block's torch work on ``n`` intra-op threads; the previous count comes back when the last
    concurrent user (other sessions' threads) leaves.

    The app process shares the machine with the runs it shows: the runner gives a run all cores but one, so
    model work in the app (loading a checkpoint, what-if evaluation) stays on that one.
    """
    global _THREADS_USERS, _THREADS_SAVED
    with _THREADS_LOCK:
        if _THREADS_USERS == 0:
            _THREADS_SAVED = torch.get_num_threads()
            torch.set_num_threads(max(1, int(n)))
        _THREADS_USERS += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_USERS -= 1
            if _THREADS_USERS == 0:
                torch.set_num_threads(_THREADS_SAVED)


_CACHED: dict[str, Any] = {}


def _st_cached(key: str, fn: Any) -> Any:
    if key not in _CACHED:
        import streamlit as st

        _CACHED[key] = st.cache_resource(show_spinner=False, max_entries=8)(fn)
    return _CACHED[key]


# -- what-if threshold -------------------------------------------------------------------------------
def what_if(loaded: LoadedRun, threshold: float, *, max_batches: int = 4) -> dict[str, Any]:
    """Accuracy and MACs that re-thresholding the checkpoint's gates at ``threshold`` would give.

    Applies every gate's own prune rule (``GatedModel.prune_``: keep iff eval gate value > threshold, a critical
    group keeps its strongest channel) on top of the checkpoint's keep masks, evaluates on the first
    ``max_batches`` validation batches, reads the hard MACs ratio (equal to the collapsed network's), and
    restores the masks: the shared model is unchanged afterwards.

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
    val = loaded.experiment.loaders.val
    loader = val if len(val.dataset) else loaded.experiment.loaders.test
    with loaded.lock, app_threads():
        saved = [h.gate.keep.clone() for h in gated.groups]
        try:
            trained = [int(h.hard_mask().sum()) for h in gated.groups]
            gated.prune_(threshold)
            kept = [int(h.hard_mask().sum()) for h in gated.groups]
            res = evaluate(loaded.model, loader, loaded.experiment.task, max_batches=max_batches)
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
    from prunekit.compare import compare
    from prunekit.io import export_onnx, save_slim

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x = loaded.experiment.example_input
    val = loaded.experiment.loaders.val
    loader = val if len(val.dataset) else loaded.experiment.loaders.test
    with loaded.lock:
        original = copy.deepcopy(loaded.model).eval()
    gated = find_gated(original)
    if gated is None:
        raise ConfigError(f"method {loaded.config.method!r} leaves no gates in the model, so there is nothing to collapse")
    slim = collapse(gated, x).eval()
    result = jsonable(compare(original, slim, loader, x, task=loaded.experiment.task, max_batches=max_batches))
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


def runs_for_explore(store: Any) -> pd.DataFrame:
    """``list_runs`` plus the latest collapse measurements (latency batch 1, slim MACs ratio) per run."""
    runs = store.list_runs()
    lat, macs = [], []
    for rid in runs["id"]:
        res = store.collapse_results(rid)
        last = res[-1] if res else {}
        slim, orig = last.get("slim", {}) or {}, last.get("original", {}) or {}
        lat_ms = slim.get("latency_b1_ms")
        if lat_ms is None and isinstance(slim.get("latency_ms"), dict):
            lat_ms = slim["latency_ms"].get("1")
        lat.append(lat_ms)
        macs.append(slim["macs"] / orig["macs"] if slim.get("macs") and orig.get("macs") else None)
    runs = runs.assign(**{"latency_b1_ms": lat, "macs_ratio/slim": macs})
    return runs


def cached_runs_for_explore(workspace: str | None, ttl: float = 2.0) -> pd.DataFrame:
    """:func:`runs_for_explore` shared by all sessions for ``ttl`` seconds (``st.cache_data``)."""
    key = f"explore_runs_{ttl:g}"
    if key not in _CACHED:
        import streamlit as st

        _CACHED[key] = st.cache_data(show_spinner=False, ttl=ttl, max_entries=8)(_runs_for_explore_at)
    return _CACHED[key](workspace)


def _runs_for_explore_at(workspace: str | None) -> pd.DataFrame:
    return runs_for_explore(cached_store(workspace))


# -- live views: incremental reads, figures built once per data version --------------------------------
@dataclass(frozen=True)
class LiveSnapshot:
    """A run's row and its scalar metrics (``RunStore.metrics``' long table) as a live view last read them.

    Attributes:
        run_id: the run.
        info: its ``RunInfo``.
        metrics: columns ``step, epoch, name, value``, sorted by step.
        full_read: whether this snapshot read every row (False: only rows since the previous snapshot).
    """

    run_id: str
    info: Any
    metrics: pd.DataFrame
    full_read: bool = True

    @property
    def life(self) -> tuple[Any, ...]:
        """Identifies one life of the run: a resume (new pid, status change) may drop rows, so it starts over."""
        return _life(self.info)

    @property
    def last_step(self) -> int:
        return int(self.metrics["step"].iloc[-1]) if not self.metrics.empty else 0


def live_metrics(store: Any, run_id: str, previous: LiveSnapshot | None = None) -> LiveSnapshot:
    """The run's row and all its scalar metrics, reading only the rows at or after ``previous``'s last step.

    Rows of the last step are read again (end-of-epoch metrics arrive at the step of the last training log). A
    different run, an empty table or a new life of the run (status, pid or start time changed: a resumed run's
    store drops the rows after its checkpoint) reads everything. The result equals ``store.metrics(run_id)``.
    """
    info = store.get_run(run_id)
    if previous is None or previous.run_id != run_id or previous.life != _life(info) or previous.metrics.empty:
        return LiveSnapshot(run_id, info, store.metrics(run_id), full_read=True)
    since = previous.last_step
    new = store.metrics(run_id, since_step=since)
    old = previous.metrics[previous.metrics["step"] < since]
    metrics = new if old.empty else pd.concat([old, new], ignore_index=True) if not new.empty else old
    return LiveSnapshot(run_id, info, metrics.reset_index(drop=True), full_read=False)


def _life(info: Any) -> tuple[Any, ...]:
    return (info.status, info.pid, info.started)


FIGURE_CACHE_SIZE = 256
_FIGURES: OrderedDict[tuple, Any] = OrderedDict()
_FIG_LOCK = threading.Lock()


def cached_figure(key: tuple, build: Callable[[], Any]) -> Any:
    """``build()`` once per ``key`` for the whole app process (LRU of :data:`FIGURE_CACHE_SIZE` entries).

    Values are shared between sessions and must be treated as read-only (``st.plotly_chart`` only copies a
    figure). A figure rebuilt from unchanged data also leaves the browser's chart alone: Streamlit sends the
    same spec, so Chromium does not lay the chart out again on every refresh.
    """
    with _FIG_LOCK:
        if key in _FIGURES:
            _FIGURES.move_to_end(key)
            return _FIGURES[key]
    value = build()
    with _FIG_LOCK:
        _FIGURES[key] = value
        while len(_FIGURES) > FIGURE_CACHE_SIZE:
            _FIGURES.popitem(last=False)
    return value


def clear_figure_cache() -> None:
    with _FIG_LOCK:
        _FIGURES.clear()


def frame_version(df: pd.DataFrame | None) -> tuple[int, int, float]:
    """``(rows, last step, sum of values)``: changes whenever an append-only table of a run gains a row."""
    if df is None or df.empty:
        return (0, -1, 0.0)
    values = pd.to_numeric(df["value"], errors="coerce") if "value" in df else pd.Series(dtype=float)
    return (len(df), int(df["step"].max()), float(values.sum()))


# Name prefixes each training chart reads; its figure and its one-line reading read nothing else, so a chart
# is rebuilt only when one of its own series gained a row.
TRAINING_VIEWS: dict[str, tuple[str, ...]] = {
    "loss": ("loss",),
    "acc": ("acc/", "miou/"),
    "macs": ("macs_ratio/",),
    "temp": ("temperature", "lr"),
}


def training_figures(
    snap: LiveSnapshot, target: float | None = None, views: tuple[str, ...] = tuple(TRAINING_VIEWS)
) -> dict[str, tuple[Any, str]]:
    """``{view: (figure, reading)}`` of the training scalars (``viz.loss_figure`` + ``viz.explain_loss``, ...)."""
    from prunekit import viz

    builders = {
        "loss": lambda m: (viz.loss_figure(m), viz.explain_loss(m)),
        "acc": lambda m: (viz.accuracy_figure(m), viz.explain_accuracy(m)),
        "macs": lambda m: (viz.macs_figure(m, target), viz.explain_macs(m, target)),
        "temp": lambda m: (viz.temperature_figure(m), viz.explain_temperature(m)),
    }
    m = snap.metrics
    names = m["name"].astype(str) if not m.empty else pd.Series(dtype=str)
    out = {}
    for view in views:
        rows = m[names.str.startswith(TRAINING_VIEWS[view])] if not m.empty else m
        key = ("training", view, snap.run_id, snap.life, target if view == "macs" else None, frame_version(rows))
        out[view] = cached_figure(key, lambda b=builders[view]: b(m))
    return out


GATE_NAMES = ("gate_values", "gate_hist")
TREND_NAMES = ("confidence", "diversity", "entropy", "flip_rate")


def gate_figures(store: Any, snap: LiveSnapshot) -> dict[str, tuple[Any, str]]:
    """``{"violin": ..., "heat": ...}`` (figure, reading) of the gates at the latest logged step."""
    from prunekit import viz

    last = store.layer_metrics(snap.run_id, names=list(GATE_NAMES), step="last")
    key = ("gates", snap.run_id, snap.life, frame_version(last))
    return cached_figure(key, lambda: {
        "violin": (viz.gate_distribution_figure(last), viz.explain_gate_distribution(last)),
        "heat": (viz.gate_heatmap_figure(last), viz.explain_gate_heatmap(last)),
    })


def trend_figures(store: Any, snap: LiveSnapshot) -> dict[str, tuple[Any, str]]:
    """``{name: (figure, reading)}`` of each per-layer trend the method logs (confidence, diversity, ...).

    The latest step's rows decide whether anything changed; the whole history is read only then.
    """
    from prunekit import viz

    last = store.layer_metrics(snap.run_id, names=list(TREND_NAMES), step="last")

    def build() -> dict[str, tuple[Any, str]]:
        trends = store.layer_metrics(snap.run_id, names=list(TREND_NAMES)) if not last.empty else last
        present = [n for n in TREND_NAMES if (trends["name"] == n).any()] if not trends.empty else []
        return {n: (viz.layer_trend_figure(trends, n), viz.explain_layer_trend(trends, n)) for n in present}

    return cached_figure(("trends", snap.run_id, snap.life, frame_version(last)), build)


def tradeoff(
    runs: pd.DataFrame, x: str, y: str, anchors: pd.DataFrame | None, x_label: str
) -> tuple[Any, str]:
    """(``viz.tradeoff_figure``, ``viz.explain_tradeoff``) cached on the content of the runs shown."""
    from prunekit import viz

    cols = [c for c in ("id", "name", "method", x, y) if c in runs]
    digest = int(pd.util.hash_pandas_object(runs[cols].astype(str), index=False).sum()) if not runs.empty else 0
    akey = None if anchors is None else int(pd.util.hash_pandas_object(anchors.astype(str), index=False).sum())
    key = ("tradeoff", x, y, x_label, akey, len(runs), digest)
    return cached_figure(key, lambda: (viz.tradeoff_figure(runs, x=x, y=y, anchors=anchors, x_label=x_label),
                                       viz.explain_tradeoff(runs, x=x, y=y)))
