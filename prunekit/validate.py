"""Checks of user-given values, one place for every config: each error names the argument and the value.

Used by the run config (``prunekit.train.config``), the method options (``prunekit.methods.base``: ranges declared
with ``option(..., low=, high=)`` are checked here) and the CLI/app forms, so a range is written once. Below
everything else in the package: it imports only ``prunekit.errors``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prunekit.errors import ConfigError


def interval_text(low: float | None, high: float | None, low_open: bool = False, high_open: bool = False) -> str:
    """``(0, 1]``, ``>= 0``, ``> 0``, ``<= 16`` ...: how a range reads in an error or a help text."""
    if low is not None and high is not None:
        return f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high:g}"
    return "any value"


def check_range(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False, allow_none: bool = False) -> None:
    """ConfigError unless ``value`` is a number within the interval (``None`` passes when ``allow_none``)."""
    if value is None and allow_none:
        return
    where = interval_text(low, high, low_open, high_open)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number {'in ' if low is not None and high is not None else ''}"
                          f"{where}, got {value!r}")
    v = float(value)
    bad = v != v  # NaN
    if low is not None:
        bad |= v <= low if low_open else v < low
    if high is not None:
        bad |= v >= high if high_open else v > high
    if bad:
        joiner = "in " if low is not None and high is not None else ""
        raise ConfigError(f"{name} must be {joiner}{where}{' or None' if allow_none else ''}, got {value!r}")


def check_positive(name: str, value: Any, *, strict: bool = False, allow_none: bool = True) -> None:
    """ConfigError unless ``value`` ≥ 0 (> 0 with ``strict``); None passes unless ``allow_none`` is False."""
    check_range(name, value, 0.0, low_open=strict, allow_none=allow_none)


def check_choice(name: str, value: Any, choices: Iterable[Any], *, allow_none: bool = False) -> None:
    """ConfigError unless ``value`` is one of ``choices``."""
    if value is None and allow_none:
        return
    options = tuple(choices)
    if value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, options))}, got {value!r}")
