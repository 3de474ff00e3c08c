"""The dataset registry: one :class:`~prunekit.data._base.DataSource` instance per name."""

from __future__ import annotations

from collections.abc import Callable

from prunekit._registry import Registry
from prunekit.data._base import DataSource

_DATASETS: Registry[DataSource] = Registry("dataset")


def register_dataset(name: str) -> Callable[[type[DataSource]], type[DataSource]]:
    """Class decorator registering a :class:`DataSource` subclass (an instance of it) under ``name``."""

    def deco(cls: type[DataSource]) -> type[DataSource]:
        _DATASETS.add(name, cls())
        return cls

    return deco
