"""prunekit: structured pruning for PyTorch CNNs.

model → augment (gates on coupled-channel groups) → train (method's relaxation) → metrics → collapse
(slim dense network with identical outputs) → compare → save/load::

    import prunekit as pk
    model = pk.create_model("resnet56", num_classes=10)
    gated = pk.augment(model, torch.randn(2, 3, 32, 32))
    slim = pk.collapse(gated)

``import prunekit`` itself imports no library: the first use of a name below imports the whole API at once
(torch among it), so every registry is complete by then (models, datasets, methods, and the gates and
optimizers that method files register). The ``prunekit`` command relies on this to answer ``--help`` and
argument errors without importing torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_API: dict[str, str] = {
    "GatedModel": "prunekit.augment",
    "GroupHandle": "prunekit.augment",
    "augment": "prunekit.augment",
    "recalibrate_bn_": "prunekit.bn",
    "collapse": "prunekit.collapse",
    "compare": "prunekit.compare",
    "layer_widths": "prunekit.compare",
    "count_macs": "prunekit.cost",
    "count_params": "prunekit.cost",
    "macs_ratio": "prunekit.cost",
    "params_ratio": "prunekit.cost",
    "relaxed_macs": "prunekit.cost",
    "relaxed_params": "prunekit.cost",
    "prune_curve": "prunekit.curve",
    "DataInfo": "prunekit.data",
    "Loaders": "prunekit.data",
    "create_dataset": "prunekit.data",
    "dataset_info": "prunekit.data",
    "list_datasets": "prunekit.data",
    "make_loaders": "prunekit.data",
    "register_dataset": "prunekit.data",
    "CheckpointError": "prunekit.errors",
    "CollapseError": "prunekit.errors",
    "ConfigError": "prunekit.errors",
    "DataNotFoundError": "prunekit.errors",
    "PrunekitError": "prunekit.errors",
    "UnsupportedModelError": "prunekit.errors",
    "create_gate": "prunekit.gates",
    "list_gates": "prunekit.gates",
    "register_gate": "prunekit.gates",
    "export_onnx": "prunekit.io",
    "load_slim": "prunekit.io",
    "save_slim": "prunekit.io",
    "measure_latency": "prunekit.latency",
    "measure_latency_interleaved": "prunekit.latency",
    "measure_latency_onnx": "prunekit.latency",
    "optimize_for_inference": "prunekit.inference",
    "latency_forms": "prunekit.compare",
    "create_method": "prunekit.methods",
    "list_methods": "prunekit.methods",
    "register_method": "prunekit.methods",
    "confidence": "prunekit.metrics",
    "diversity": "prunekit.metrics",
    "gate_layer_rows": "prunekit.metrics",
    "create_model": "prunekit.models",
    "list_models": "prunekit.models",
    "model_task": "prunekit.models",
    "register_model": "prunekit.models",
    "bake_": "prunekit.quant",
    "layer_sensitivity": "prunekit.sensitivity",
    "model_size_bits": "prunekit.quant",
    "quantize_": "prunekit.quant",
    "RunConfig": "prunekit.train.config",
    "TrainConfig": "prunekit.train.config",
    "build_experiment": "prunekit.train.experiment",
    "run_experiment": "prunekit.train.experiment",
    "LoadedRun": "prunekit.train.load",
    "load_run": "prunekit.train.load",
    "RunHandle": "prunekit.train.runner",
    "get_handle": "prunekit.train.runner",
    "resume_run": "prunekit.train.runner",
    "start_run": "prunekit.train.runner",
    "stop_run": "prunekit.train.runner",
    "RunStore": "prunekit.train.store",
    "create_sweep": "prunekit.train.sweep",
    "run_sweep": "prunekit.train.sweep",
}
# submodules that are part of the API as modules (``pk.methods.method_class``; ``pk.widgets`` needs the
# notebooks extra and is imported only when asked for, not with the rest)
_MODULES = {"methods": "prunekit.methods"}


def _import_api() -> None:
    g = globals()
    for name, module in _MODULES.items():
        g[name] = importlib.import_module(module)
    for name, module in _API.items():
        g[name] = getattr(importlib.import_module(module), name)


def __getattr__(name: str) -> Any:
    if name == "widgets":
        return importlib.import_module("prunekit.widgets")
    if name in _API or name in _MODULES:
        _import_api()
        return globals()[name]
    raise AttributeError(f"module 'prunekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API, *_MODULES})


class _Package(types.ModuleType):
    """Keeps ``pk.augment``, ``pk.collapse`` and ``pk.compare`` the functions: importing the submodule of the
    same name (``from prunekit.augment import GatedModel``) would otherwise bind the module in their place."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return  # the module stays importable as prunekit.<name> (sys.modules)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = sorted([*_API, *_MODULES])
