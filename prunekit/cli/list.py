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


def run(args: argparse.Namespace) -> int:
    items = names(args.what, args.torchvision)
    if args.json:
        out(json.dumps(items))
    else:
        for name in items:
            out(name)
        if args.what == "models" and not args.torchvision:
            out("tv:NAME  (every torchvision classification model; --torchvision lists them)")
    return 0
