"""``prunekit bench SUITE``: run a benchmark suite, write JSON + markdown, print the table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prunekit.bench import SUITES, run_suite  # no torch at import: the suites' modules are imported when run
from prunekit.cli._common import HelpFormatter, out
from prunekit.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="run a benchmark suite (JSON + markdown table)",
        description="Benchmarks: " + "; ".join(f"{k}: {v[2]}" for k, v in SUITES.items()),
        formatter_class=HelpFormatter,
    )
    p.add_argument("suite", choices=list(SUITES), help="which suite to run")
    p.add_argument("--out", default="bench-results", help="folder for <suite>.json and <suite>.md")
    p.add_argument("--preset", default=None, help="suite preset (e.g. quick, full, paper); default: the suite's own")
    p.add_argument("--resume", action="store_true",
                   help="reuse the trainings an earlier call left in --out when the budget is the same: an interrupted run "
                        "goes on, a finished one grows by more --seeds/--methods (suites that journal: pareto)")
    p.add_argument("--methods", default=None, metavar="A,B", help="only these methods (suites that take methods: pareto)")
    p.add_argument("--datasets", default=None, metavar="A,B", help="only these datasets (pareto)")
    p.add_argument("--seeds", default=None, metavar="0,1,2", help="these seeds; mean ± std over them (pareto)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a preset field, VALUE as JSON where it parses (e.g. epochs=3, targets=[0.5]); repeatable")
    p.set_defaults(func=run)


def _tuples(v: Any) -> Any:
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def _value(text: str) -> Any:
    """``--set``'s VALUE: JSON where it parses (lists become tuples, as presets hold them), else the text."""
    try:
        return _tuples(json.loads(text))
    except json.JSONDecodeError:
        return text


def options(args: argparse.Namespace) -> dict[str, Any]:
    """The suite options given on the command line (``--methods``, ``--datasets``, ``--seeds``, ``--set``)."""
    opts: dict[str, Any] = {}
    for key in ("methods", "datasets"):
        if getattr(args, key):
            opts[key] = tuple(x.strip() for x in getattr(args, key).split(",") if x.strip())
    if args.seeds:
        try:
            opts["seeds"] = tuple(int(x) for x in args.seeds.split(","))
        except ValueError:
            raise ConfigError(f"--seeds must be integers separated by commas, got {args.seeds!r}") from None
    for item in args.overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set must be KEY=VALUE, got {item!r}")
        opts[key.strip()] = _value(text)
    return opts


def run(args: argparse.Namespace) -> int:
    folder = Path(args.out)
    result = run_suite(args.suite, folder, args.preset, resume=args.resume, **options(args))
    md = folder / f"{args.suite}.md"
    text = result.get("markdown") if isinstance(result, dict) else None
    out(text or (md.read_text() if md.exists() else ""))
    out(f"results written to {folder}/")
    return 0
