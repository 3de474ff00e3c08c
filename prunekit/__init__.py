"""prunekit: structured pruning for PyTorch CNNs.

model → augment (gates on coupled-channel groups) → train (method's relaxation) → metrics → collapse
(slim dense network with identical outputs) → compare → save/load::

    import prunekit as pk
    model = pk.create_model("resnet56", num_classes=10)
    gated = pk.augment(model, torch.randn(2, 3, 32, 32))
    slim = pk.collapse(gated)
"""

from prunekit import methods
from prunekit.augment import GatedModel, GroupHandle, augment
from prunekit.bn import recalibrate_bn_
from prunekit.collapse import collapse
from prunekit.compare import compare, layer_widths
from prunekit.cost import count_macs, count_params, macs_ratio, params_ratio, relaxed_macs, relaxed_params
from prunekit.curve import prune_curve
from prunekit.data import DataInfo, Loaders, create_dataset, dataset_info, list_datasets, make_loaders, register_dataset
from prunekit.errors import (
    CheckpointError,
    CollapseError,
    ConfigError,
    DataNotFoundError,
    PrunekitError,
    UnsupportedModelError,
)
from prunekit.gates import create_gate, list_gates, register_gate
from prunekit.io import export_onnx, load_slim, save_slim
from prunekit.latency import measure_latency, measure_latency_interleaved
from prunekit.methods import create_method, list_methods, register_method
from prunekit.metrics import confidence, diversity, gate_layer_rows
from prunekit.models import create_model, list_models, model_task, register_model
from prunekit.quant import bake_, model_size_bits, quantize_
from prunekit.train.config import RunConfig, TrainConfig
from prunekit.train.experiment import build_experiment, run_experiment
from prunekit.train.runner import RunHandle, get_handle, resume_run, start_run, stop_run
from prunekit.train.store import RunStore
from prunekit.train.sweep import create_sweep, run_sweep

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "widgets":  # ipywidgets is an optional extra: import it only when asked for
        import importlib

        return importlib.import_module("prunekit.widgets")
    raise AttributeError(f"module 'prunekit' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "CollapseError",
    "ConfigError",
    "DataInfo",
    "DataNotFoundError",
    "GatedModel",
    "GroupHandle",
    "Loaders",
    "PrunekitError",
    "RunConfig",
    "RunHandle",
    "RunStore",
    "TrainConfig",
    "UnsupportedModelError",
    "augment",
    "bake_",
    "confidence",
    "create_sweep",
    "diversity",
    "gate_layer_rows",
    "get_handle",
    "model_size_bits",
    "model_task",
    "quantize_",
    "register_dataset",
    "register_gate",
    "register_method",
    "register_model",
    "run_sweep",
    "build_experiment",
    "collapse",
    "compare",
    "count_macs",
    "count_params",
    "create_dataset",
    "create_gate",
    "create_method",
    "create_model",
    "dataset_info",
    "export_onnx",
    "layer_widths",
    "list_datasets",
    "list_gates",
    "list_methods",
    "list_models",
    "load_slim",
    "macs_ratio",
    "make_loaders",
    "measure_latency",
    "measure_latency_interleaved",
    "methods",
    "params_ratio",
    "prune_curve",
    "recalibrate_bn_",
    "relaxed_macs",
    "relaxed_params",
    "resume_run",
    "run_experiment",
    "save_slim",
    "start_run",
    "stop_run",
]
