"""``prunekit list models|datasets|methods``: what the registries hold."""

from __future__ import annotations

import argparse
import json
from typing import Any

from prunekit.cli._common import add_parser, out

WHAT = ("models", "datasets", "methods")


def register(subparsers: Any) -> None:
    p = add_parser(subparsers, "list", "list registered models, datasets or methods")
    p.add_argument("what", choices=WHAT, help="which registry to list")
    p.add_argument("--torchvision", action="store_true", help="models: include every torchvision model (tv:NAME)")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.add_argument("--details", action="store_true",
                   help="methods: each method's summary, paper, own rule, loss terms and options (from its file)")
    p.set_defaults(func=run)


def names(what: str, torchvision: bool = False) -> list[str]:
    if what == "models":
        from prunekit.models import list_models

        return list_models(include_torchvision=torchvision)
    if what == "datasets":
        from prunekit.data import list_datasets

        return list_datasets()
    from prunekit.methods import list_methods

    return list_methods()


def method_details(name: str) -> dict[str, Any]:
    """What a method says about itself (``prunekit.methods.base.Method``'s class attributes and options)."""
    from prunekit.methods import method_class

    cls = method_class(name)
    return {"name": name, "summary": cls.summary, "paper": cls.paper, "target_option": cls.target_option,
            "post_hoc": cls.post_hoc, "decision_rule": cls.decision_rule, "optimizer": cls.optimizer_help,
            "loss_terms": dict(cls.loss_help), "metrics": dict(cls.metric_help),
            "options": [{"name": s.name, "default": s.default, "kind": s.kind, "help": s.describe()}
                        for s in cls.options()]}


def _details_text(d: dict[str, Any]) -> str:
    lines = [f"{d['name']}: {d['summary']}"]
    if d["paper"]:
        lines.append(f"  paper: {d['paper']}")
    lines.append(f"  own rule: {d['decision_rule']}")
    lines.append(f"  target: {d['target_option'] or ('post hoc, pruned after training' if d['post_hoc'] else 'none')}")
    lines.append(f"  optimizer: {d['optimizer']}")
    for term, text in d["loss_terms"].items():
        lines.append(f"  loss/{term}: {text}")
    for o in d["options"]:
        lines.append(f"  {o['name']} ({o['kind']}, default {o['default']!r}): {o['help']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.what == "methods" and args.details:
        details = [method_details(n) for n in names("methods")]
        out(json.dumps(details, default=repr) if args.json else "\n\n".join(map(_details_text, details)))
        return 0
    items = names(args.what, args.torchvision)
    if args.json:
        out(json.dumps(items))
    else:
        for name in items:
            out(name)
        if args.what == "models" and not args.torchvision:
            out("tv:NAME  (every torchvision classification model; --torchvision lists them)")
    return 0
