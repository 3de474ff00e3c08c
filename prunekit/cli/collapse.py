"""``prunekit collapse RUN``: turn a trained gated run into a slim dense network.

Loads the run (``prunekit.load_run``: a run folder, its checkpoint or a run id), lets the method fix its final
masks (a completed run's already are, exactly as the run finished; an unfinished run's are fixed now),
optionally prunes further at ``--threshold``, collapses exactly (``prunekit.collapse`` checks the outputs) and
prints params, MACs, latency and accuracy before (the hard-gated network) and after (the slim one).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from prunekit.cli._common import add_data_root_arg, add_parser, data_root, human, out, to_json
from prunekit.cli.runs import add_workspace_arg
from prunekit.errors import ConfigError


def register(subparsers: Any) -> None:
    p = add_parser(subparsers, "collapse", "collapse a trained gated run into a slim network",
                   "Load a run (the folder or checkpoint written by 'prunekit train --out DIR', or a run id of the run "
                   "store), fix the method's final masks, collapse exactly and compare before/after; saves the slim "
                   "model.")
    p.add_argument("source", metavar="RUN", help="a run folder (with last.pt), a checkpoint file or a run id")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="where to save the slim model (.pt or .safetensors; default: slim.pt beside the checkpoint)")
    p.add_argument("--threshold", type=float, default=None,
                   help="also remove structures whose gate value is <= this, after the method's own final masks")
    p.add_argument("--split", choices=("test", "val"), default="test", help="split for the accuracy columns")
    p.add_argument("--no-eval", action="store_true", help="skip the accuracy columns")
    p.add_argument("--no-save", action="store_true", help="do not write the slim model")
    add_data_root_arg(p)
    add_workspace_arg(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.set_defaults(func=run)


def collapse_checkpoint(source: str, threshold: float | None = None, evaluate_split: str | None = "test",
                        root: str | None = None, workspace: str | None = None) -> dict[str, Any]:
    """Load, finalise, collapse and measure a run; returns the numbers and the slim model (key ``slim``)."""
    import torch

    from prunekit.collapse import collapse
    from prunekit.compare import latency_forms
    from prunekit.cost import count_macs, count_params
    from prunekit.train.evaluate import evaluate
    from prunekit.train.load import load_run

    if threshold is not None and not 0 < threshold < 1:
        raise ConfigError(f"--threshold must be in (0, 1), got {threshold}")
    loaded = load_run(source, workspace, data_root=root)
    cfg = loaded.config
    if loaded.gated is None:
        raise ConfigError(f"the run's method {cfg.method!r} adds no gates: there is nothing to collapse")
    gated = loaded.finalize()
    if threshold is not None:
        gated.prune_(threshold)
    gated.eval()
    x = loaded.example_input[:1]
    t0 = time.perf_counter()
    slim = collapse(gated)
    seconds = time.perf_counter() - t0
    base = gated.model
    result: dict[str, Any] = {
        "checkpoint": str(loaded.checkpoint), "model": cfg.model, "dataset": cfg.dataset, "method": cfg.method,
        "status": loaded.status, "groups": len(gated.groups),
        "kept": int(sum(int(h.hard_mask().sum()) for h in gated.groups)),
        "structures": int(sum(h.size for h in gated.groups)),
        "params": {"before": count_params(base), "after": count_params(slim)},
        "macs": {"before": count_macs(base, x), "after": count_macs(slim, x)},
        # dense vs slim: eager, inference form (BN folded), ONNX Runtime when installed; batch 1 and 64
        "latency_ms": latency_forms(base, slim, x),
        "max_diff": slim.pk_collapse["max_diff"], "collapse_s": seconds,
        "removed_layers": slim.pk_collapse["removed"],
    }
    if evaluate_split is not None:
        loader = loaded.loaders.test if evaluate_split == "test" else loaded.loaders.val
        key = "acc" if loaded.task == "classification" else "miou"
        with torch.no_grad():
            before = evaluate(gated, loader, loaded.task, "cpu")[key]
            after = evaluate(slim, loader, loaded.task, "cpu")[key]
        result[f"{key}/{evaluate_split}"] = {"before": before, "after": after}
    result["slim"] = slim
    return result


def _rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = [("params", human(r["params"]["before"]), human(r["params"]["after"])),
            ("MACs", human(r["macs"]["before"]), human(r["macs"]["after"]))]
    for form, lat in r["latency_ms"].items():
        for b in lat["before"]:
            speed = lat["before"][b] / lat["after"][b]
            rows.append((f"latency b{b} {form} (cpu)", f"{lat['before'][b]:.2f} ms",
                         f"{lat['after'][b]:.2f} ms ({speed:.2f}x)"))
    for key in ("acc/test", "acc/val", "miou/test", "miou/val"):
        if key in r:
            rows.append((key, f"{r[key]['before']:.4f}", f"{r[key]['after']:.4f}"))
    return rows


def run(args: argparse.Namespace) -> int:
    r = collapse_checkpoint(args.source, args.threshold, None if args.no_eval else args.split,
                            data_root(args.data_root), args.workspace)
    slim = r.pop("slim")
    if not args.no_save:
        from prunekit.io import save_slim

        target = Path(args.out) if args.out else Path(r["checkpoint"]).parent / "slim.pt"
        save_slim(slim, target)
        r["saved"] = str(target)
    if args.json:
        out(to_json(r))
        return 0
    rows = _rows(r)
    w0 = max(len(a) for a, _, _ in rows)
    w1 = max(len("before"), *(len(b) for _, b, _ in rows))
    lines = ["prunekit collapse", "-" * 40, f"{r['model']} ({r['method']}) on {r['dataset']}: kept {r['kept']} of "
             f"{r['structures']} structures in {r['groups']} groups",
             f"{'':<{w0}}  {'before':>{w1}}  after"]
    lines += [f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]
    ratio = r["macs"]["after"] / max(r["macs"]["before"], 1)
    lines.append(f"MACs ratio {ratio:.3f}; max |slim − gated| {r['max_diff']:.2e}; collapse {r['collapse_s']:.2f} s")
    if r["status"] != "completed":
        lines.append(f"note: the run's status is {r['status']!r}; its final masks were fixed now")
    if "saved" in r:
        lines.append(f"saved {r['saved']}")
    out("\n".join(lines))
    return 0
