"""Pieces the subcommands share: the parser class, option parsing and tables.

The CLI is the one place that writes to the terminal; library code only logs. This module imports no heavy
library (torch, pandas): ``prunekit --help`` and argument errors must answer before any is imported.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prunekit.errors import ConfigError

logger = logging.getLogger(__name__)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to every option's help unless the help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text:
            return text
        return super()._get_help_string(action)


DATA_ENV = "PRUNEKIT_DATA"


def fail(message: str) -> None:
    """One line on stderr: ``prunekit: error: <message>``."""
    sys.stderr.write(f"prunekit: error: {' '.join(str(message).split())}\n")


def out(text: str = "") -> None:
    """Write a line to stdout."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        fail(f"{message} (see '{self.prog} --help')")
        raise SystemExit(2)


def add_parser(subparsers: Any, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """Add a subcommand parser with the house formatter (every option shows its default)."""
    return subparsers.add_parser(name, help=help, description=description or help, formatter_class=HelpFormatter)


def parse_value(text: str) -> Any:
    """``"3"`` → 3, ``"0.5"`` → 0.5, ``"true"`` → True, ``"none"`` → None, ``"[1,2]"`` → [1, 2], else the string."""
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_kv(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    """Parse repeated ``key=value`` options; keys may use dashes (turned into underscores)."""
    result: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects key=value, got {item!r}")
        result[key.strip().replace("-", "_")] = parse_value(value)
    return result


def data_root(value: str | None) -> str | None:
    """The data root from ``--data-root`` or ``$PRUNEKIT_DATA``; a given folder must exist."""
    root = value or os.environ.get(DATA_ENV) or None
    if root is not None and not Path(root).expanduser().is_dir():
        source = "--data-root" if value else f"${DATA_ENV}"
        raise ConfigError(f"{source} {root!r} does not exist or is not a folder")
    return str(Path(root).expanduser()) if root else None


def add_data_root_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", default=None, metavar="DIR",
                        help=f"folder with dataset files (default from ${DATA_ENV}; shapes needs none)")


def format_table(rows: Sequence[tuple[str, str]], title: str | None = None) -> str:
    """A two-column text table."""
    width = max((len(k) for k, _ in rows), default=0)
    lines = [title, "-" * max(len(title), 20)] if title else []
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def human(n: float) -> str:
    """12345678 → '12.35M'."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:g}"


def model_macs(model: Any, example_input: Any) -> float | None:
    """MACs of one sample: of the network collapse would give for a gated model (its hard masks), else of
    ``model`` itself (``prunekit.cost``); None when they cannot be counted."""
    from prunekit.augment import GatedModel
    from prunekit.cost import count_macs, relaxed_macs

    try:
        if isinstance(model, GatedModel):
            return float(relaxed_macs(model, "hard"))
        return float(count_macs(model, example_input[:1]))
    except Exception as e:  # noqa: BLE001 - the summary table must not fail on an exotic model
        logger.debug("MACs not counted: %s", e)
        return None


def to_json(obj: dict[str, Any]) -> str:
    """JSON of a result dict, dropping the model object (``result["model"]``) if present."""
    from torch import nn

    return json.dumps({k: v for k, v in obj.items() if not isinstance(v, nn.Module)}, indent=2, default=str)
