"""The run form: each method's frozen Config as form fields (paper defaults, help text) and back to a RunConfig.

Help text comes from, in order, a field's ``metadata["help"]``, its trailing ``# comment`` in the source and
its entry in the class docstring's ``Args:``/``Attributes:`` section.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from dataclasses import dataclass
from typing import Any

from prunekit.errors import ConfigError
from prunekit.train.config import RunConfig, TrainConfig

# The experiment `make run` opens on: small, offline, and it shows every view of the app.
DEFAULT_MODEL, DEFAULT_DATASET, DEFAULT_METHOD, DEFAULT_TARGET = "resnet20", "shapes", "crisp", 0.5
_TARGET_NAMES = ("target_macs", "target", "target_ratio", "target_flops", "macs_target")


@dataclass(frozen=True)
class FieldSpec:
    """One method option for the form: name, the paper's default, a kind for the widget and help text."""

    name: str
    default: Any
    kind: str  # "bool" | "int" | "float" | "text" (JSON or plain string)
    help: str


def _field_comments(cls: type) -> dict[str, str]:
    """Trailing ``# comments`` of a dataclass's field lines, read from its source (empty if unavailable)."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out = {}
    for line in src.splitlines():
        m = re.match(r"\s+(\w+)\s*:[^#=]*(?:=[^#]*)?#\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _docstring_args(cls: type) -> dict[str, str]:
    """``name: text`` entries of a Google-style ``Args:``/``Attributes:`` section."""
    doc = inspect.getdoc(cls) or ""
    out, current = {}, None
    for line in doc.splitlines():
        m = re.match(r"\s{0,8}(\w+)(?: \(.*?\))?:\s+(.+)$", line)
        if m and m.group(1) not in ("Args", "Attributes", "Returns", "Raises"):
            current = m.group(1)
            out[current] = m.group(2).strip()
        elif current and line.startswith("        ") and line.strip():
            out[current] += " " + line.strip()
    return out


def _kind(value: Any, annotation: Any) -> str:
    ann = str(annotation)
    if isinstance(value, bool) or ann == "bool":
        return "bool"
    if isinstance(value, int) and ann in ("int", "<class 'int'>"):
        return "int"
    if isinstance(value, float) and "None" not in ann:
        return "float"
    return "text"


def method_fields(method: str) -> list[FieldSpec]:
    """The options of ``method``'s frozen Config with their defaults and help (field comments, docstring)."""
    from prunekit.methods import create_method

    cfg_cls = type(create_method(method).config)
    comments, doc = _field_comments(cfg_cls), _docstring_args(cfg_cls)
    specs = []
    for f in dataclasses.fields(cfg_cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        help_ = f.metadata.get("help") or comments.get(f.name) or doc.get(f.name) or ""
        specs.append(FieldSpec(f.name, default, _kind(default, f.type), help_))
    return specs


def target_field(method: str) -> str | None:
    """The name of the method's size-target option (``target_macs``, ...), if it has one."""
    names = [s.name for s in method_fields(method)]
    return next((n for n in _TARGET_NAMES if n in names), None)


def parse_option(spec: FieldSpec, value: Any) -> Any:
    """Turn a form value back into the option's type; text fields accept JSON (lists, null) or plain strings."""
    if spec.kind != "text":
        return value
    if not isinstance(value, str):
        return value
    text = value.strip()
    if isinstance(spec.default, str):
        return text
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        raise ConfigError(f"{spec.name} must be JSON like {json.dumps(spec.default)}, got {value!r}") from None
    return tuple(parsed) if isinstance(spec.default, tuple) and isinstance(parsed, list) else parsed


def option_text(value: Any) -> str:
    """How a text-kind default is shown in the form (JSON, strings bare)."""
    if isinstance(value, str):
        return value
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def build_run_config(
    *,
    model: str = DEFAULT_MODEL,
    dataset: str = DEFAULT_DATASET,
    method: str = DEFAULT_METHOD,
    target: float | None = DEFAULT_TARGET,
    method_options: dict[str, Any] | None = None,
    data_options: dict[str, Any] | None = None,
    name: str | None = None,
    **train: Any,
) -> RunConfig:
    """A validated RunConfig from the form; ``target`` goes to the method's target option when it has one.

    Options equal to the method's defaults are dropped so the stored config shows only what the user changed.
    """
    specs = {s.name: s for s in method_fields(method)}
    opts = {k: v for k, v in (method_options or {}).items() if k in specs and v != specs[k].default}
    tf = target_field(method)
    if target is not None and tf is not None:
        if not 0 < float(target) <= 1:
            raise ConfigError(f"target must be in (0, 1], got {target}")
        opts[tf] = float(target)
    from prunekit.methods import create_method

    create_method(method, **opts)  # validates option values now rather than in the background process
    return RunConfig(model=model, dataset=dataset, method=method, method_options=opts, train=TrainConfig(**train),
                     data_options=dict(data_options or {}), name=name or None)


def default_config(**train: Any) -> RunConfig:
    """ResNet-20 on ``shapes`` with CRISP at 50% MACs (falls back to the dense baseline if CRISP is absent)."""
    from prunekit.methods import list_methods

    method = DEFAULT_METHOD if DEFAULT_METHOD in list_methods() else "dense"
    train.setdefault("epochs", 3)
    return build_run_config(method=method, name="default: resnet20 / shapes / crisp 50%", **train)
