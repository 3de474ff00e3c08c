"""What the app process shares between its sessions: the garbage collector, torch threads and every cache.

All of the app layer's module-level state lives here (the figure LRU, the gate-presence cache, the
Streamlit cache wrappers, the thread counter and the settle flag), so there is one place to reset and one
place a test patches.

Performance (issue 8: re-render ≤ 0.5 s while a run trains, training ≥ 0.8× as fast with the app open): the
app shares the CPU with the runs it shows, and every session's script holds the app's GIL while it builds
figures. So figures are built once per data version and shared by all sessions (:func:`cached_figure`),
checkpoints without gates are never loaded (:func:`checkpoint_has_gates`), model work in the app runs on one
thread (:func:`app_threads`) and the collector skips the modules' objects (:func:`settle_process`).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# Intra-op torch threads for model work inside the app process (the runner leaves one core to the UI).
APP_THREADS = 1
FIGURE_CACHE_SIZE = 256

_SETTLED = False
_SETTLE_LOCK = threading.Lock()
_THREADS_LOCK = threading.Lock()
_THREADS_USERS = 0
_THREADS_SAVED = 0
_CACHED: dict[str, Any] = {}
_FIGURES: OrderedDict[tuple, Any] = OrderedDict()
_FIG_LOCK = threading.Lock()
_GATE_KEY = re.compile(r"(^|\.)gates\.\d+\.keep$")
_HAS_GATES: dict[tuple[str, tuple[int, int] | None], bool] = {}
_JOBS: dict[tuple, Job] = {}
_JOBS_LOCK = threading.Lock()

logger = logging.getLogger(__name__)


# -- garbage collector ------------------------------------------------------------------------------
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


# -- Streamlit's caches, created on first use (importing this package does not import Streamlit) ---------
def st_cached(key: str, fn: Callable[..., Any], *, ttl: float | None = None) -> Callable[..., Any]:
    """``fn`` behind ``st.cache_resource`` (one object shared by all sessions), or ``st.cache_data`` with
    ``ttl`` seconds when ``ttl`` is given (a copy per call); one wrapper per ``key`` for the process."""
    if key not in _CACHED:
        import streamlit as st

        if ttl is None:
            _CACHED[key] = st.cache_resource(show_spinner=False, max_entries=8)(fn)
        else:
            _CACHED[key] = st.cache_data(show_spinner=False, ttl=ttl, max_entries=8)(fn)
    return _CACHED[key]


# -- figures shared by all sessions -------------------------------------------------------------------
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


# -- checkpoint files ---------------------------------------------------------------------------------
def file_version(path: str | Path) -> tuple[int, int] | None:
    """``(mtime_ns, size)`` of a file, None if it is missing: a cache key that changes when the file is rewritten."""
    try:
        st_ = Path(path).stat()
    except OSError:
        return None
    return (st_.st_mtime_ns, st_.st_size)


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


# -- background jobs ----------------------------------------------------------------------------------
@dataclass
class Job:
    """Work on a daemon thread of the app process, shared by all sessions; pages poll it and never wait.

    The worker writes only its own fields (``progress``, then ``done`` and ``error``) and its results to the run
    store; it never calls Streamlit (``st.*`` from a worker thread has no session to talk to).

    Attributes:
        key: identifies the work (one job per key at a time).
        started: ``time.time()`` at start.
        progress: share done, 0..1, as the worker reports it.
        done: the worker has returned or raised.
        error: the exception it raised (None: none).
    """

    key: tuple
    started: float
    progress: float = 0.0
    done: bool = False
    error: BaseException | None = None
    thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return not self.done


def background_job(key: tuple, work: Callable[[Job], None]) -> Job:
    """Run ``work(job)`` on a daemon thread, once per ``key``: a job with that key that is running or finished
    without error is returned as it is; a failed one is started again."""
    with _JOBS_LOCK:
        job = _JOBS.get(key)
        if job is not None and (job.running or job.error is None):
            return job
        job = _JOBS[key] = Job(key, time.time())

    def run() -> None:
        try:
            work(job)
        except BaseException as e:  # noqa: BLE001 - reported on the page that polls the job
            logger.exception("background job %s failed", key)
            job.error = e
        finally:
            job.done = True

    job.thread = threading.Thread(target=run, daemon=True, name=f"prunekit-job-{key[0]}")
    job.thread.start()
    return job


def find_job(key: tuple) -> Job | None:
    """The job started with ``key`` (running or finished), or None."""
    with _JOBS_LOCK:
        return _JOBS.get(key)
