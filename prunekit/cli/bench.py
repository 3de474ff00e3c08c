"""``prunekit bench SUITE``: run a benchmark suite, write JSON + markdown, print the table."""

from __future__ import annotations

import argparse
from pathlib import Path

from prunekit.cli._common import HelpFormatter, out


def register(sub: argparse._SubParsersAction) -> None:
    from prunekit.bench import SUITES

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
                   help="reuse the finished runs an interrupted call left in --out (suites that journal: pareto)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prunekit.bench import run_suite

    folder = Path(args.out)
    result = run_suite(args.suite, folder, args.preset, resume=args.resume)
    md = folder / f"{args.suite}.md"
    text = result.get("markdown") if isinstance(result, dict) else None
    out(text or (md.read_text() if md.exists() else ""))
    out(f"results written to {folder}/")
    return 0
