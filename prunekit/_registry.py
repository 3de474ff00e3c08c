"""A tiny registry: a private dict, a decorator that refuses duplicates, and look-up with close matches.

Used for models, datasets, gate relaxations and methods (torchvision ``models/_api.py`` style).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from prunekit.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to builders.

    Args:
        kind: what is registered ("model", "dataset", ...); used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (default: its ``__name__``)."""

        def deco(obj: T) -> T:
            key = name or obj.__name__
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._items[key] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name`` (non-decorator form)."""
        self.register(name)(obj)

    def get(self, name: str) -> T:
        """Return the entry for ``name`` or raise :class:`ConfigError` listing close matches."""
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(self.unknown_message(name, self.names())) from None

    def unknown_message(self, name: str, candidates: list[str]) -> str:
        close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(candidates)[:20])}"
        return f"unknown {self.kind} {name!r}{hint}"

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
