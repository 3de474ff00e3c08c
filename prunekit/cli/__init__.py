"""The ``prunekit`` command.

Each subcommand is a module of this package exposing ``register(subparsers)``, which adds its parser
and sets ``func`` (``func(args) -> int``) with ``set_defaults``. Modules not written yet are skipped.

Errors: bad input (``ConfigError``, ``CheckpointError``, argparse errors) prints one line
``prunekit: error: <message>`` on stderr and exits with status 2; other prunekit errors exit 1.
``--debug`` shows the traceback and debug logs instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence

from prunekit import __version__
from prunekit.cli._common import HelpFormatter, Parser, fail
from prunekit.errors import CheckpointError, ConfigError, PrunekitError

logger = logging.getLogger(__name__)

COMMANDS = ["train", "eval", "list", "collapse", "compare", "bench", "runs", "sweep", "app"]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand registered."""
    parser = Parser(
        prog="prunekit",
        description="Structured pruning for PyTorch CNNs: train, prune, collapse and compare models.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="show info logs (epoch summaries)")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"prunekit.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"prunekit.cli.{name}":
                raise
            logger.debug("prunekit %s: command module not available, skipped", name)
            continue
        module.register(sub)
    # `prunekit train ... --debug` works too: the subcommand flag defaults to SUPPRESS so it never
    # overwrites the top-level value.
    for sp in sub.choices.values():
        for flag, text in (("--debug", "show tracebacks and debug logs"), ("--verbose", "show info logs")):
            if flag not in sp._option_string_actions:
                sp.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    # (no list()/eval() calls here: importing the subcommand modules binds `list` and `eval` in this namespace)
    argv = [*(sys.argv[1:] if argv is None else argv)]
    debug = "--debug" in argv
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help, --version, bad arguments (exit 2)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    if getattr(args, "verbose", False) and not args.debug:
        logging.getLogger("prunekit").setLevel(logging.INFO)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        fail("interrupted")
        return 130
    except (ConfigError, CheckpointError) as e:
        if args.debug:
            traceback.print_exc()
        fail(str(e))
        return 2
    except PrunekitError as e:
        if args.debug:
            traceback.print_exc()
        fail(str(e))
        return 1
    except Exception as e:  # a bug: one line unless --debug
        if args.debug:
            traceback.print_exc()
        fail(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback)")
        return 1


__all__ = ["COMMANDS", "build_parser", "main"]
