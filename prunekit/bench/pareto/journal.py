"""The journal of ``bench pareto``: finished (dataset, method, seed) trainings, for resuming and extending.

Every finished training is appended to ``pareto.partial.jsonl`` with the option variants it ran. A later
call with ``resume=True`` reuses a journalled training when the **budget** is the same (every preset
field but the selection ``methods``, ``datasets``, ``seeds`` and ``grid``) and the method's variants are
the same; so a one-seed run can be extended with more seeds, methods or datasets, or with a new variant
of one method (only that method is trained again). Failed trainings are always run again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from prunekit.errors import ConfigError

logger = logging.getLogger(__name__)

JOURNAL = "pareto.partial.jsonl"
SELECTION = ("methods", "datasets", "seeds", "grid")  # which trainings run, not how each one trains


def _plain(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def _budget(settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in _plain(settings).items() if k not in SELECTION}


def grid_variants(grid: Any, method: str) -> list[dict[str, Any]]:
    """A method's option variants in a preset's (or a journal's JSON) grid; ``[{}]`` when it has none."""
    for name, variants in grid:
        if name == method:
            return [dict(v) for v in variants]
    return [{}]


def open_journal(out_dir: Path, settings: dict[str, Any], resume: bool) -> tuple[list[dict[str, Any]], set[tuple]]:
    """Start the journal, or with ``resume`` reread it: the reusable rows and their (dataset, method, seed).

    Raises:
        ConfigError: ``resume`` with a journal of another budget (names the fields that differ).
    """
    path = out_dir / JOURNAL
    out_dir.mkdir(parents=True, exist_ok=True)
    want = _plain(settings)
    if not (resume and path.is_file()):
        path.write_text(json.dumps({"settings": want}) + "\n")
        return [], set()
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    had = lines[0].get("settings") if lines and isinstance(lines[0], dict) else None
    if not isinstance(had, dict) or _budget(had) != _budget(want):
        old, new = _budget(had or {}), _budget(want)
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                         if old.get(k) != new.get(k))
        raise ConfigError(f"resume: {path} was written with other settings ({diff}); rerun without resume to start over")
    kept: dict[tuple, list[dict[str, Any]]] = {}
    for line in lines[1:]:
        key = (line["dataset"], line["method"], line["seed"])
        if all("error" in r for r in line["rows"]):  # failures: run again
            continue
        if key[0] not in want["datasets"] or key[2] not in want["seeds"]:
            continue
        if key[1] != "dense" and key[1] not in want["methods"]:
            continue
        ran = line.get("variants", grid_variants(had.get("grid", []), key[1]))
        if ran != grid_variants(want["grid"], key[1]):  # the method's variants changed: train it again
            continue
        kept[key] = line["rows"]
    logger.info("bench pareto: resuming with %d finished (dataset, method, seed) from %s", len(kept), path)
    return [r for rows in kept.values() for r in rows], set(kept)


def journal(out_dir: Path, dataset: str, method: str, seed: int, variants: list[dict[str, Any]],
            rows: list[dict[str, Any]]) -> None:
    """Append one finished (dataset, method, seed) with the option variants it ran."""
    line = {"dataset": dataset, "method": method, "seed": seed, "variants": _plain(variants), "rows": rows}
    with open(out_dir / JOURNAL, "a") as f:
        f.write(json.dumps(line, default=str) + "\n")
