"""Save and load slim (collapsed) models safely.

A slim model file holds an architecture spec (JSON: the registry name and arguments of the base model,
and per-layer widths or replacements) and a state dict. It is read with
``torch.load(weights_only=True)`` (``.pt``) or safetensors (``.safetensors``): no pickled modules, no code
executed. ``load_slim`` rebuilds the base model from the registry, resizes the recorded layers with the
same rule collapse used, and loads the weights strictly, so every shape is verified.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit._slim_modules import build_slim_module, resize_module_, set_submodule_, slice_parameter_
from prunekit.errors import CheckpointError, ConfigError
from prunekit.graph import BN_TYPES, is_depthwise
from prunekit.heads import apply_head_spec_
from prunekit.models import create_model

log = logging.getLogger(__name__)

FORMAT = "prunekit-slim"
VERSION = 1


def slim_spec(model: nn.Module) -> dict[str, Any]:
    """The architecture spec of a model from ``create_model`` (optionally collapsed)."""
    base = getattr(model, "pk_spec", None)
    if base is None:
        raise ConfigError(
            "model has no pk_spec: save_slim needs a model built by prunekit.create_model (or set "
            "model.pk_spec = {'name': ..., 'num_classes': ..., 'in_channels': ..., 'kwargs': {...}})"
        )
    layers = getattr(model, "pk_collapse", {}).get("layers", {})
    return {"format": FORMAT, "version": VERSION, "base": base, "layers": layers, "task": getattr(model, "pk_task", None)}


def save_slim(model: nn.Module, path: str | Path) -> Path:
    """Write spec + weights to ``path`` (``.safetensors`` or anything else → torch.save of tensors and strings)."""
    path = Path(path)
    spec = slim_spec(model)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(tmp), metadata={"prunekit_spec": json.dumps(spec)})
    else:
        torch.save({"format": FORMAT, "version": VERSION, "spec": json.dumps(spec), "state_dict": state}, tmp)
    tmp.replace(path)
    return path


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if not path.exists():
        raise CheckpointError(f"slim model file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
            if "prunekit_spec" not in meta:
                raise CheckpointError(f"{str(path)!r} is a safetensors file without a prunekit spec")
            spec = json.loads(meta["prunekit_spec"])
        else:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(blob, dict) or blob.get("format") != FORMAT:
                raise CheckpointError(f"{str(path)!r} is not a prunekit slim model file")
            spec, state = json.loads(blob["spec"]), blob["state_dict"]
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file is refused with its reason
        raise CheckpointError(f"cannot read slim model {str(path)!r}: {e}") from e
    if spec.get("version") != VERSION:
        raise CheckpointError(f"{str(path)!r} has spec version {spec.get('version')!r}; this prunekit reads {VERSION}")
    return spec, state


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild the (uninitialised) slim architecture described by ``spec``."""
    base = dict(spec["base"])
    kwargs = dict(base.pop("kwargs", {}) or {})
    model = create_model(**base, **kwargs)
    for name, layer in spec.get("layers", {}).items():
        try:
            mod = model.get_parameter(name) if layer["type"] == "param" else model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"spec names layer {name!r}, which the base model does not have") from None
        if layer["type"] == "param":
            slice_parameter_(model, name, layer["axis"], torch.arange(int(layer["size"])))
        elif layer["type"] == "heads":
            # converts the attention module if needed (nn.MultiheadAttention → MultiheadSelfAttention)
            apply_head_spec_(model, name, layer)
        elif layer["type"] == "resize":
            out = layer.get("out")
            inn = layer.get("in")
            resize_module_(
                mod,
                torch.arange(out) if out is not None else None,
                torch.arange(inn) if inn is not None and not _single_dim(mod) else None,
            )
        else:
            set_submodule_(model, name, build_slim_module(layer))
    model.pk_spec = spec["base"]
    model.pk_collapse = {"layers": spec.get("layers", {})}
    if spec.get("task"):
        model.pk_task = spec["task"]
    return model


def _single_dim(mod: nn.Module) -> bool:
    return isinstance(mod, BN_TYPES) or isinstance(mod, nn.PReLU) or is_depthwise(mod)


def load_slim(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a slim model saved by :func:`save_slim`, verifying every tensor's name and shape.

    Raises:
        CheckpointError: the file is missing, corrupt, foreign, or does not match its spec.
    """
    spec, state = _read(Path(path))
    model = build_from_spec(spec)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or bad:
        detail = "; ".join(
            s
            for s in (
                f"missing {missing[:3]}" if missing else "",
                f"unexpected {unexpected[:3]}" if unexpected else "",
                f"shape mismatch {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in bad[:3]]}" if bad else "",
            )
            if s
        )
        raise CheckpointError(f"slim model {str(path)!r} does not match its spec: {detail}")
    # per-module format versions (e.g. torchvision's MNASNet checks them) come from the rebuilt model
    state = dict(state)
    metadata = getattr(own, "_metadata", None)
    if metadata is not None:
        from collections import OrderedDict

        state = OrderedDict(state)
        state._metadata = metadata  # type: ignore[attr-defined]
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path, opset: int = 17) -> Path:
    """Export a (slim) model to ONNX with a dynamic batch dimension. Needs the ``onnx`` package."""
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise ConfigError("ONNX export needs the onnx package: pip install 'prunekit[onnx]'") from e
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    torch.onnx.export(
        model,
        (example_input,),
        str(path),
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )
    return path
