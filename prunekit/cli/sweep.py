"""``prunekit sweep``: the same experiment over several option values, recorded as one sweep.

Takes every flag of ``prunekit train``; ``--target-macs`` (and any ``--grid KEY=V1,V2``) take comma-separated
lists. The runs are queued in the run store, then a scheduler launches them as background processes, at most
``--concurrency`` at a time. By default the scheduler runs in this terminal and prints a table when the sweep
is over (Ctrl-C leaves the remaining runs queued: run the same sweep again with ``--resume-sweep ID``);
``--background`` detaches the scheduler and returns at once.

    prunekit sweep --model resnet20 --dataset shapes --method crisp --target-macs 0.3,0.5,0.7
    prunekit sweep --method dense --grid train.lr=0.1,0.05 --grid train.seed=0,1 --concurrency 2
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from prunekit.cli import train as train_cli
from prunekit.cli._common import HelpFormatter, out, parse_value
from prunekit.errors import ConfigError


def _values(text: str, flag: str) -> list[Any]:
    vals = [parse_value(v) for v in text.split(",") if v.strip()]
    if not vals:
        raise ConfigError(f"{flag} expects comma-separated values, got {text!r}")
    return vals


def grid_from_args(args: argparse.Namespace) -> dict[str, list[Any]]:
    """``--target-macs 0.3,0.5`` and ``--grid key=v1,v2`` as ``{dotted.key: [values]}``."""
    from prunekit.methods import method_class

    grid: dict[str, list[Any]] = {}
    if args.target_macs_list:
        option = method_class(args.method).target_option
        if option is None:
            raise ConfigError(f"--target-macs: method {args.method!r} has no target option")
        grid[f"method_options.{option}"] = _values(args.target_macs_list, "--target-macs")
    for item in args.grid or ():
        key, sep, vals = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--grid expects KEY=V1,V2,..., got {item!r}")
        key = key.strip()
        if "." not in key:  # bare names: a method option, as --method-opt does
            key = f"method_options.{key.replace('-', '_')}"
        grid[key] = _values(vals, "--grid")
    if not grid:
        raise ConfigError("sweep needs something to vary: --target-macs V1,V2,... or --grid KEY=V1,V2,...")
    return grid


def _run(args: argparse.Namespace) -> int:
    from prunekit.train.sweep import create_sweep, expand_grid, run_sweep, start_sweep_scheduler

    if args.concurrency < 1:
        raise ConfigError(f"--concurrency must be >= 1, got {args.concurrency}")
    if args.resume_sweep:
        sweep_id = args.resume_sweep
    else:
        grid = grid_from_args(args)
        base = train_cli.config_from_args(args)
        expand_grid(base, grid)  # every point is a validated RunConfig before anything is queued
        sweep_id, run_ids = create_sweep(base, grid, name=args.sweep_name, workspace=args.workspace)
        out(f"sweep {sweep_id}: {len(run_ids)} runs queued ({', '.join(run_ids)})")
    threads = args.threads
    if args.background:
        pid = start_sweep_scheduler(sweep_id, workspace=args.workspace, concurrency=args.concurrency, threads=threads)
        out(f"scheduler running in the background (pid {pid}); follow it with 'prunekit runs list --sweep {sweep_id}'")
        return 0
    df = run_sweep(sweep_id, workspace=args.workspace, concurrency=args.concurrency, threads=threads)
    if args.json:
        out(df.to_json(orient="records"))
    else:
        for r in df.sort_values("created").to_dict(orient="records"):
            acc = r.get("acc/test")
            acc_s = "-" if acc is None or (isinstance(acc, float) and math.isnan(acc)) else f"{acc:.4f}"
            out(f"{r['id']:<22} {r['status']:<11} acc/test {acc_s:>7}  {r['name'] or ''}"
                + (f"  ({r['error']})" if r["error"] else ""))
    return 0 if (df.status == "done").all() else 1


def register(subparsers: Any) -> None:
    # every `prunekit train` flag, by building its parser and inheriting from it
    scratch = argparse.ArgumentParser(add_help=False).add_subparsers()
    train_cli.register(scratch)
    parent = scratch.choices["train"]
    p = subparsers.add_parser("sweep", parents=[parent], conflict_handler="resolve", formatter_class=HelpFormatter,
                              help="train one experiment over several option values (a sweep)",
                              description=__doc__.split("\n\n")[1])
    g = p.add_argument_group("sweep")
    g.add_argument("--target-macs", dest="target_macs_list", default=None, metavar="V1,V2,...",
                   help="target MACs ratios to sweep (fractions of dense MACs; the method's target option)")
    g.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="another option to sweep: a method option (keep=0.3,0.5) or a dotted config path "
                        "(train.lr=0.1,0.05); repeatable, the grid is the product")
    g.add_argument("--concurrency", type=int, default=1, help="runs training at the same time")
    g.add_argument("--background", action="store_true", help="detach the scheduler and return at once")
    g.add_argument("--sweep-name", default=None, help="a name for the sweep")
    g.add_argument("--resume-sweep", default=None, metavar="SWEEP_ID",
                   help="launch the still-queued runs of an existing sweep instead of creating one")
    g.add_argument("--workspace", default=None, metavar="DIR",
                   help="run store folder (default: $PRUNEKIT_HOME or ./prunekit-runs)")
    p.set_defaults(func=_run)
    # flags of `train` that mean nothing here
    for flag in ("--out", "--resume", "--no-progress"):
        action = p._option_string_actions.get(flag)
        if action is not None:
            action.help = argparse.SUPPRESS


check = train_cli.check  # the names and KEY=VALUE options, before torch is imported
complete = train_cli.complete  # defaults, choices and method-option flags, from torch-importing modules

__all__ = ["check", "complete", "grid_from_args", "register"]
