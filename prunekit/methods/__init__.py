"""Pruning methods, one file each; ``create(name, **options)`` builds one by name."""

from prunekit.methods import baselines, bridgeout, crisp, dpp, growing, l0, sdprun  # noqa: F401  (registers)
from prunekit.methods._gated import latency_reference, round_count, round_masks
from prunekit.methods.base import (
    Method,
    OptionSpec,
    create_method,
    list_methods,
    loss_help,
    method_class,
    metric_help,
    option,
    register_method,
    run_target,
)

create = create_method

__all__ = ["Method", "OptionSpec", "create", "create_method", "list_methods", "loss_help", "method_class", "metric_help",
           "latency_reference", "option", "register_method", "round_count", "round_masks", "run_target"]
