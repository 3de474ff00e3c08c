"""Pruning methods, one file each; ``create(name, **options)`` builds one by name."""

from prunekit.methods import baselines, bridgeout, crisp, dpp, growing, l0, sdprun  # noqa: F401  (registers)
from prunekit.methods.base import Method, create_method, list_methods, register_method

create = create_method

__all__ = ["Method", "create", "create_method", "list_methods", "register_method"]
