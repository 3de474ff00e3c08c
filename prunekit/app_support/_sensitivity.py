"""Layer sensitivity for the Explore page: computed once per run, checkpoint and settings in the background,
kept in the run store, read back as the table :func:`prunekit.layer_sensitivity` returns.

The work runs on a :func:`~prunekit.app_support._process.background_job` thread with its own copy of the run
(``pk.load_run`` of the checkpoint: a completed run finalized as it ended, so the baseline is the accuracy the
run reported), on :data:`~prunekit.app_support._process.APP_THREADS` torch threads; the page polls the job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from prunekit.app_support._process import Job, app_threads, background_job, find_job

KIND = "sensitivity"
# What the app computes: five fractions from 10 % to 90 % of each group, four evaluation batches of the
# validation split (the what-if subset) and four training batches to re-estimate BatchNorm per point.
SENSITIVITY_SETTINGS: dict[str, Any] = {"fractions": [0.1, 0.3, 0.5, 0.7, 0.9], "max_batches": 4, "bn_batches": 4}


def sensitivity_settings(store: Any, run_id: str, checkpoint: str | Path) -> dict[str, Any]:
    """The settings a result is stored under: the app's settings plus the checkpoint (file name and step)."""
    return {**SENSITIVITY_SETTINGS, "checkpoint": Path(checkpoint).name, "step": store.checkpoint_step(run_id, checkpoint)}


def stored_sensitivity(store: Any, run_id: str, settings: dict[str, Any]) -> pd.DataFrame | None:
    """The stored table for exactly these settings (with its ``attrs``), or None when not computed yet."""
    result = store.get_analysis(run_id, KIND, settings)
    return None if result is None else sensitivity_frame(result)


def sensitivity_frame(result: dict[str, Any]) -> pd.DataFrame:
    """A stored result (``{"rows": [...], "attrs": {...}}``) as ``layer_sensitivity``'s DataFrame."""
    from prunekit.sensitivity import COLUMNS

    df = pd.DataFrame(result.get("rows") or [], columns=list(COLUMNS))
    df.attrs.update(result.get("attrs") or {})
    return df


def compute_sensitivity(workspace: str | Path | None, checkpoint: str | Path, settings: dict[str, Any],
                        job: Job | None = None) -> dict[str, Any]:
    """Load the run at ``checkpoint`` and run ``layer_sensitivity`` on its validation subset; a JSON-able result."""
    from prunekit.app_support._loaded import jsonable
    from prunekit.sensitivity import layer_sensitivity
    from prunekit.train.load import load_run

    with app_threads():
        run = load_run(checkpoint, workspace)
        val = run.loaders.val
        evaluation = val if len(val.dataset) else run.loaders.test
        df = layer_sensitivity(
            run.model, evaluation, settings["fractions"], bn_loader=run.loaders.train,
            bn_batches=settings["bn_batches"], max_batches=settings["max_batches"], task=run.task,
            progress=None if job is None else (lambda p: setattr(job, "progress", p)),
        )
    return {"rows": jsonable(df.to_dict("records")), "attrs": jsonable(dict(df.attrs))}


def sensitivity_job_key(workspace: str | Path | None, run_id: str, settings: dict[str, Any]) -> tuple:
    from prunekit.train.store import RunStore

    return (KIND, str(workspace), run_id, RunStore.analysis_key(settings))


def start_sensitivity(store: Any, workspace: str | Path | None, run_id: str, checkpoint: str | Path,
                      settings: dict[str, Any]) -> Job:
    """Compute and store the run's sensitivity in the background (once per run and settings); returns the job."""

    def work(job: Job) -> None:
        result = compute_sensitivity(workspace, checkpoint, settings, job)
        store.put_analysis(run_id, KIND, settings, result)

    return background_job(sensitivity_job_key(workspace, run_id, settings), work)


def sensitivity_job(workspace: str | Path | None, run_id: str, settings: dict[str, Any]) -> Job | None:
    """The background job computing these settings for the run, if one was started in this app process."""
    return find_job(sensitivity_job_key(workspace, run_id, settings))
