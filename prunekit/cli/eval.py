"""``prunekit eval RUN``: rebuild a trained run (``prunekit.load_run``) and evaluate it on a split."""

from __future__ import annotations

import argparse
from typing import Any

from prunekit.cli._common import add_data_root_arg, add_parser, data_root, format_table, out, to_json
from prunekit.cli.runs import add_workspace_arg


def register(subparsers: Any) -> None:
    p = add_parser(subparsers, "eval", "evaluate a trained run",
                   "Rebuild the model, data and method of a run (a checkpoint written by 'prunekit train --out', its "
                   "folder, or a run id of the run store) and evaluate it: top-1 accuracy for classification, mIoU "
                   "for segmentation. A completed run is evaluated as it finished (its method's final masks).")
    p.add_argument("checkpoint", metavar="RUN", help="a checkpoint file (last.pt), a run folder or a run id")
    p.add_argument("--split", choices=("test", "val"), default="test", help="which split to evaluate on")
    add_data_root_arg(p)
    add_workspace_arg(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch size (default: the run's)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from prunekit._device import resolve_device
    from prunekit.cost import count_params
    from prunekit.errors import ConfigError
    from prunekit.train.evaluate import evaluate
    from prunekit.train.load import load_run

    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = resolve_device(args.device)  # a bad --device fails before anything is loaded
    loaded = load_run(args.checkpoint, args.workspace, data_root=data_root(args.data_root))
    cfg = loaded.config
    loader = loaded.loaders.test if args.split == "test" else loaded.loaders.val
    if args.batch_size is not None:
        loader = DataLoader(loader.dataset, batch_size=args.batch_size, shuffle=False)
    r = evaluate(loaded.model, loader, loaded.task, device)
    metrics = {f"{k}/{args.split}": v for k, v in r.items() if k != "samples"}
    result = {"checkpoint": str(loaded.checkpoint), "model": cfg.model, "dataset": cfg.dataset, "method": cfg.method,
              "epoch": loaded.epoch, "step": loaded.step, "status": loaded.status, "samples": r["samples"],
              "params": count_params(loaded.model), "metrics": metrics}
    if args.json:
        out(to_json(result))
    else:
        rows = [("checkpoint", str(loaded.checkpoint)), ("model", f"{cfg.model} ({cfg.method})"),
                ("dataset", f"{cfg.dataset} [{args.split}, {r['samples']} samples]"),
                ("trained", f"{loaded.epoch} epochs, {loaded.step} steps ({loaded.status})")]
        rows += [(k, f"{v:.4f}") for k, v in metrics.items()]
        out(format_table(rows, title="prunekit eval"))
    return 0
