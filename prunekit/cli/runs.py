"""``prunekit runs list|show|stop|resume|rm|wait``: background runs in a workspace's run store.

Also the ``--background`` option of ``prunekit train``: :func:`add_background_option` adds the flags and
:func:`launch_background` starts the configured run as a background process and prints its id.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
from typing import Any

from prunekit.cli._common import add_parser, format_table, out
from prunekit.errors import ConfigError

_WS_HELP = "run store folder (default: $PRUNEKIT_HOME or ./prunekit-runs)"


def add_workspace_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=None, metavar="DIR", help=_WS_HELP)


def add_background_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--background`` (and ``--workspace`` when missing) to a training parser."""
    parser.add_argument("--background", action="store_true",
                        help="train in a background process recorded in the run store; prints the run id and returns")
    if "--workspace" not in parser._option_string_actions:
        add_workspace_arg(parser)


def launch_background(args: argparse.Namespace, cfg: Any) -> int:
    """Start ``cfg`` (a RunConfig) as a background run; prints the run id (``--json``: a JSON object)."""
    from prunekit.train.runner import start_run

    h = start_run(cfg, workspace=getattr(args, "workspace", None), threads=getattr(args, "threads", None))
    if getattr(args, "json", False):
        out(json.dumps({"id": h.id, "workspace": str(h.workspace), "pid": h.pid}))
    else:
        out(h.id)
        out(f"# started in the background (pid {h.pid}); watch it with 'prunekit runs show {h.id}', "
            f"stop it with 'prunekit runs stop {h.id}'")
    return 0


def _when(t: float | None) -> str:
    return _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def _num(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def _list(args: argparse.Namespace) -> int:
    from prunekit.train.store import RunStore

    df = RunStore(args.workspace).list_runs(status=args.status, sweep_id=args.sweep)
    if args.json:
        out(df.to_json(orient="records"))
        return 0
    if df.empty:
        out("no runs")
        return 0
    header = f"{'id':<22} {'status':<11} {'prog':>5} {'model':<12} {'dataset':<10} {'method':<10} {'acc/test':>8}  name"
    out(header)
    for row in df.to_dict(orient="records"):
        out(f"{row['id']:<22} {row['status']:<11} {row['progress'] * 100:>4.0f}% {str(row['model'])[:12]:<12} "
            f"{str(row['dataset'])[:10]:<10} {str(row['method'])[:10]:<10} {_num(row['acc/test']):>8}  "
            f"{row['name'] or ''}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from prunekit.train.store import RunStore

    store = RunStore(args.workspace)
    info = store.get_run(args.run_id)
    m = store.metrics(args.run_id)
    last = m.sort_values("step").groupby("name").tail(1) if not m.empty else m
    if args.json:
        out(json.dumps({"run": {k: getattr(info, k) for k in info.__dataclass_fields__},
                        "last_metrics": {r.name: r.value for r in last.itertuples()},
                        "checkpoints": store.checkpoints(args.run_id).to_dict(orient="records")}, default=str))
        return 0
    cfg = info.config
    rows = [("id", info.id), ("name", info.name or "-"), ("status", info.status),
            ("experiment", f"{cfg.get('model')} on {cfg.get('dataset')}, method {cfg.get('method')} "
                           f"{cfg.get('method_options') or ''}"),
            ("progress", f"{info.progress * 100:.0f}%"), ("created", _when(info.created)),
            ("started", _when(info.started)), ("finished", _when(info.finished)),
            ("heartbeat", _when(info.heartbeat)), ("pid", str(info.pid or "-")), ("sweep", info.sweep_id or "-")]
    if info.error:
        rows.append(("error", info.error))
    ck = store.latest_checkpoint(args.run_id)
    rows.append(("checkpoint", str(ck) if ck else "-"))
    for r in last.itertuples():
        rows.append((r.name, f"{_num(r.value)} (step {r.step})"))
    rows.append(("log", str(store.run_dir(args.run_id) / "log.txt")))
    out(format_table(rows, title=f"run {info.id}"))
    return 0


def _stop(args: argparse.Namespace) -> int:
    from prunekit.train.runner import get_handle, stop_run

    stop_run(args.run_id, args.workspace)
    if args.wait:
        out(get_handle(args.run_id, args.workspace).wait(timeout=args.timeout).status)
    else:
        out(f"stop requested for {args.run_id}")
    return 0


def _resume(args: argparse.Namespace) -> int:
    from prunekit.train.runner import resume_run

    h = resume_run(args.run_id, args.workspace, threads=args.threads)
    if args.wait:
        info = h.wait(timeout=args.timeout)
        out(info.status + (f": {info.error}" if info.error else ""))
        return 0 if info.status == "done" else 1
    out(f"{h.id} resumed (pid {h.pid})")
    return 0


def _wait(args: argparse.Namespace) -> int:
    from prunekit.train.runner import get_handle

    info = get_handle(args.run_id, args.workspace).wait(timeout=args.timeout)
    out(info.status + (f": {info.error}" if info.error else ""))
    return 0 if info.status == "done" else 1


def _rm(args: argparse.Namespace) -> int:
    from prunekit.train.store import RunStore

    store = RunStore(args.workspace)
    for rid in args.run_ids:
        info = store.get_run(rid)
        if info.status in ("running", "queued") and not args.force:
            raise ConfigError(f"run {rid} is {info.status}; stop it first or pass --force")
        store.delete_run(rid)
        out(f"removed {rid}")
    return 0


def register(subparsers: Any) -> None:
    p = add_parser(subparsers, "runs", "list, inspect, stop, resume or remove background runs",
                   "Background runs recorded in the run store (see 'prunekit train --background', 'prunekit sweep').")
    sub = p.add_subparsers(title="actions", metavar="ACTION", dest="runs_action")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    ls = add_parser(sub, "list", "one line per run, newest first")
    ls.add_argument("--status", default=None, choices=["queued", "running", "done", "failed", "stopped", "interrupted"],
                    help="only runs with this status")
    ls.add_argument("--sweep", default=None, metavar="SWEEP_ID", help="only the runs of this sweep")
    ls.add_argument("--json", action="store_true", help="JSON records instead of a table")
    ls.set_defaults(func=_list)

    sh = add_parser(sub, "show", "status, timings, error and the latest metrics of one run")
    sh.add_argument("run_id")
    sh.add_argument("--json", action="store_true", help="JSON instead of a table")
    sh.set_defaults(func=_show)

    st = add_parser(sub, "stop", "stop a run gracefully (it finishes the step, checkpoints, ends 'stopped')")
    st.add_argument("run_id")
    st.add_argument("--wait", action="store_true", help="wait until it has stopped")
    st.add_argument("--timeout", type=float, default=None, help="seconds to wait at most")
    st.set_defaults(func=_stop)

    rs = add_parser(sub, "resume", "continue an interrupted, stopped or failed run from its last checkpoint")
    rs.add_argument("run_id")
    rs.add_argument("--threads", type=int, default=None, help="torch threads (default: as before)")
    rs.add_argument("--wait", action="store_true", help="wait until it ends; exit 1 unless it is done")
    rs.add_argument("--timeout", type=float, default=None, help="seconds to wait at most")
    rs.set_defaults(func=_resume)

    wt = add_parser(sub, "wait", "wait until a run ends; exit 1 unless it is done")
    wt.add_argument("run_id")
    wt.add_argument("--timeout", type=float, default=None, help="seconds to wait at most")
    wt.set_defaults(func=_wait)

    rm = add_parser(sub, "rm", "delete runs: their rows, metrics, checkpoints and logs")
    rm.add_argument("run_ids", nargs="+", metavar="run_id")
    rm.add_argument("--force", action="store_true", help="also remove queued or running runs")
    rm.set_defaults(func=_rm)

    for sp in (ls, sh, st, rs, wt, rm):
        add_workspace_arg(sp)
