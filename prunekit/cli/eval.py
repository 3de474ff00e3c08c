"""``prunekit eval CHECKPOINT``: rebuild the checkpoint's experiment and evaluate it on a split."""

from __future__ import annotations

import argparse
from typing import Any

from prunekit.cli._common import add_data_root_arg, add_parser, data_root, format_table, out, to_json
from prunekit.cost import count_params
from prunekit.errors import CheckpointError
from prunekit.train.checkpoint import check_state_dict, read_checkpoint
from prunekit.train.config import RunConfig
from prunekit.train.evaluate import evaluate
from prunekit.train.experiment import build_experiment


def register(subparsers: Any) -> None:
    p = add_parser(subparsers, "eval", "evaluate a training checkpoint",
                   "Rebuild the model, data and method stored in CHECKPOINT (written by 'prunekit train --out') "
                   "and evaluate it: top-1 accuracy for classification, mIoU for segmentation.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint file (last.pt)")
    p.add_argument("--split", choices=("test", "val"), default="test", help="which split to evaluate on")
    add_data_root_arg(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch size (default: the run's)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    ckpt = read_checkpoint(args.checkpoint)
    cfg_dict = ckpt.get("config") or {}
    if "model" not in cfg_dict:
        raise CheckpointError(f"checkpoint {args.checkpoint!r} holds no run config; it was not written by 'prunekit train'")
    cfg = RunConfig.from_dict(cfg_dict)
    train = cfg.train.__class__(**{**cfg.train.__dict__, "device": args.device,
                                   "batch_size": args.batch_size or cfg.train.batch_size})
    cfg = cfg.replace(train=train, data_root=data_root(args.data_root) or cfg.data_root)
    exp = build_experiment(cfg)
    check_state_dict(exp.model, ckpt["model"], source=f"checkpoint {args.checkpoint!r}")
    exp.model.load_state_dict(ckpt["model"])
    exp.method.load_state_dict(ckpt.get("method_state") or {})
    model = exp.model
    status = (ckpt.get("extra") or {}).get("status")
    if status == "completed":  # what run_experiment reported on: the finalised model
        model = exp.method.finalize(model)
    loader = exp.loaders.test if args.split == "test" else exp.loaders.val
    r = evaluate(model, loader, exp.task, cfg.train.device)
    metrics = {f"{k}/{args.split}": v for k, v in r.items() if k != "samples"}
    result = {"checkpoint": str(args.checkpoint), "model": cfg.model, "dataset": cfg.dataset, "method": cfg.method,
              "epoch": ckpt["epoch"], "step": ckpt["step"], "status": status, "samples": r["samples"],
              "params": count_params(model), "metrics": metrics}
    if args.json:
        out(to_json(result))
    else:
        rows = [("checkpoint", str(args.checkpoint)), ("model", f"{cfg.model} ({cfg.method})"),
                ("dataset", f"{cfg.dataset} [{args.split}, {r['samples']} samples]"),
                ("trained", f"{ckpt['epoch']} epochs, {ckpt['step']} steps ({status})")]
        rows += [(k, f"{v:.4f}") for k, v in metrics.items()]
        out(format_table(rows, title="prunekit eval"))
    return 0
