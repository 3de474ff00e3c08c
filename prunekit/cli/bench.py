"""``prunekit bench SUITE``: run a benchmark suite, write JSON + markdown, print the table."""

from __future__ import annotations

import argparse
from pathlib import Path

from prunekit.cli._common import HelpFormatter


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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prunekit.bench import run_suite

    out = Path(args.out)
    result = run_suite(args.suite, out, args.preset)
    md = out / f"{args.suite}.md"
    text = result.get("markdown") if isinstance(result, dict) else None
    print(text or (md.read_text() if md.exists() else ""))
    print(f"results written to {out}/")
    return 0
