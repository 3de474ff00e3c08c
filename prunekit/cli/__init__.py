"""The ``prunekit`` command.

Each subcommand is a module of this package exposing ``register(subparsers)``, which adds its parser
and sets ``func`` (``func(args) -> int``) with ``set_defaults``. Modules not written yet are skipped.

Answering at once: these modules import nothing heavy at module level (torch, pandas: inside ``func``), so
``prunekit --help``, every ``prunekit CMD --help`` and argument errors print before torch is imported. A
command whose parser needs torch-importing modules (``train``, ``sweep``: defaults from ``TrainConfig``, one flag
per method option) also exposes ``complete(parser)``, which adds those, and ``check(args)``; ``main`` calls
``complete`` only for the command being run, after a first parse of the light parser (``check`` answers a
misspelled model, dataset or method name from the light registry of names, ``prunekit.cli._names``).

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
from types import ModuleType

from prunekit import __version__
from prunekit.cli._common import HelpFormatter, Parser, fail
from prunekit.errors import CheckpointError, ConfigError, PrunekitError

logger = logging.getLogger(__name__)

COMMANDS = ["train", "eval", "list", "collapse", "compare", "bench", "runs", "sweep", "app"]


def _build() -> tuple[argparse.ArgumentParser, dict[str, tuple[argparse.ArgumentParser, ModuleType]]]:
    """The top-level parser with every available subcommand registered (nothing heavy imported), and each
    subcommand's parser and module."""
    parser = Parser(
        prog="prunekit",
        description="Structured pruning for PyTorch CNNs: train, prune, collapse and compare models.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"prunekit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="show info logs (epoch summaries)")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", dest="command")
    modules: dict[str, ModuleType] = {}
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"prunekit.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"prunekit.cli.{name}":
                raise
            logger.debug("prunekit %s: command module not available, skipped", name)
            continue
        module.register(sub)
        modules[name] = module
    # `prunekit train ... --debug` works too: the subcommand flag defaults to SUPPRESS so it never
    # overwrites the top-level value.
    for sp in sub.choices.values():
        for flag, text in (("--debug", "show tracebacks and debug logs"), ("--verbose", "show info logs")):
            if flag not in sp._option_string_actions:
                sp.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=text)
    return parser, {name: (sub.choices[name], module) for name, module in modules.items()}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand registered and completed (this imports torch)."""
    parser, commands = _build()
    for sp, module in commands.values():
        if hasattr(module, "complete"):
            module.complete(sp)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line: the first word that is not an option (the top-level options
    take no value)."""
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return arg
    return None


def _asks_help(argv: Sequence[str]) -> bool:
    words = argv[: argv.index("--")] if "--" in argv else argv
    return "-h" in words or "--help" in words


def _parse(argv: list[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Parse ``argv``, importing torch only once the command line is known to be worth it (SystemExit as argparse)."""
    parser, commands = _build()
    command = _command(argv)
    if command in commands and hasattr(commands[command][1], "complete"):
        sp, module = commands[command]
        if not _asks_help(argv):
            # a first pass on the light parser: argparse's own errors and the module's checks, before torch. An
            # abbreviation may be one of a flag complete() adds, which this pass does not know: no abbreviations.
            sp.allow_abbrev = False
            args, _ = parser.parse_known_args(argv)
            sp.allow_abbrev = True
            if hasattr(module, "check"):
                module.check(args)
        module.complete(sp)
    return parser, parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    # (no list()/eval() calls here: importing the subcommand modules binds `list` and `eval` in this namespace)
    argv = [*(sys.argv[1:] if argv is None else argv)]
    debug = "--debug" in argv
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        parser, args = _parse(argv)
    except SystemExit as e:  # argparse: --help, --version, bad arguments (exit 2)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    except (ConfigError, CheckpointError) as e:  # a check before the full parse
        if debug:
            traceback.print_exc()
        fail(str(e))
        return 2
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
