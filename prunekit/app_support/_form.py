"""The run form: each method's options (``Method.options()``: defaults, help, unit, range) as form fields and
back to a RunConfig. Everything the form knows about a method comes from the method's own file.
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Any

from prunekit.errors import ConfigError, DataNotFoundError
from prunekit.methods import OptionSpec, create_method, list_methods, method_class
from prunekit.train.config import RunConfig, TrainConfig

# The experiment `make run` opens on: small, offline, and it shows every view of the app.
DEFAULT_MODEL, DEFAULT_DATASET, DEFAULT_METHOD, DEFAULT_TARGET = "resnet20", "shapes", "crisp", 0.5

FieldSpec = OptionSpec  # the form's name for one option (kept for the app pages and notebooks)

# The dataset choice for the user's own images; the form asks for the folder beside it.
IMAGEFOLDER = "imagefolder:PATH"


def form_datasets() -> list[str]:
    """The datasets the form offers: every registered one, ``imagefolder:PATH`` last (its folder is a field)."""
    from prunekit.data import list_datasets

    names = list_datasets()
    return [n for n in names if n != IMAGEFOLDER] + [IMAGEFOLDER]


def default_data_root() -> str:
    """What the Data root field starts with: the first folder of ``$PRUNEKIT_DATA`` (empty if unset)."""
    return next((p for p in os.environ.get("PRUNEKIT_DATA", "").split(os.pathsep) if p), "")


def dataset_name(choice: str, folder: str | None) -> str:
    """The dataset name a run gets: ``imagefolder:<folder>`` for :data:`IMAGEFOLDER`, else ``choice``."""
    if choice != IMAGEFOLDER:
        return choice
    folder = (folder or "").strip()
    if not folder:
        raise ConfigError("imagefolder needs a folder: enter the folder that holds one sub-folder of images per class")
    return "imagefolder:" + folder


def check_dataset(name: str, root: str | None = None, options: dict[str, Any] | None = None) -> Any:
    """Check that a run could read ``name`` on this machine before starting it; returns its ``DataInfo``.

    Reads the test split without downloading (cached in-process by ``prunekit.data``), so a dataset whose files
    are missing is refused in the form instead of failing in the background with an error that names CLI flags.

    Raises:
        ConfigError: unknown dataset or option, a bad imagefolder (in words a user of the form understands).
    """
    from prunekit.data import create_dataset, dataset_info

    options = dict(options or {})
    try:
        info = dataset_info(name, root, **options)
        create_dataset(name, "test", root, download=False, **options)
    except DataNotFoundError as e:
        raise ConfigError(_for_the_form(name, str(e))) from e
    return info


def _for_the_form(name: str, message: str) -> str:
    """prunekit.data's not-found message (written for the CLI) in the form's words."""
    looked = re.search(r"Looked in: (.*?)\. ", message)
    how = re.search(r"To get it: (.*?); or point", message)
    if not (looked and how):  # an imagefolder problem or a message we do not know: keep it, name the field
        return message.replace("--data-root", "the Data root field")
    return (f"dataset {name!r} is not on this machine (looked in {looked.group(1)}). Enter the folder that holds its "
            f"files as Data root (or set $PRUNEKIT_DATA before starting the app); the app does not download "
            f"datasets. To get it: {how.group(1)}.")


def method_fields(method: str) -> list[OptionSpec]:
    """The options of ``method`` with their defaults, help, unit and range (``Method.options()``)."""
    return method_class(method).options()


def target_field(method: str) -> str | None:
    """The name of the method's size-target option (``Method.target_option``), if it has one."""
    return method_class(method).target_option


def latency_field(method: str) -> str | None:
    """``"target_latency"`` when the method takes a latency target (``_gated.LatencyConfig``), else None."""
    return "target_latency" if any(s.name == "target_latency" for s in method_fields(method)) else None


def dense_latency(model: str, dataset: str, batch: int = 1, threads: int | None = None,
                  data_root: str | None = None) -> dict[str, Any]:
    """The dense ``model``'s latency on ``dataset``'s input size at ``batch``, on this CPU with the threads a run
    of the app gets (``prunekit._device.run_threads``): what a ``target_latency`` is measured against.

    Returns:
        ``{"ms", "batch", "threads", "input"}`` (median of 20 runs after 3 warm-ups; cached per process).
    """
    from prunekit._device import run_threads

    return dict(_dense_latency(model, dataset, int(batch), run_threads(threads), (data_root or "").strip() or None))


@functools.lru_cache(maxsize=32)
def _dense_latency(model: str, dataset: str, batch: int, threads: int, data_root: str | None) -> dict[str, Any]:
    import torch

    from prunekit.data import dataset_info
    from prunekit.latency import measure_latency
    from prunekit.models import create_model

    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    info = dataset_info(dataset, data_root)
    net = create_model(model, num_classes=info.num_classes, in_channels=info.in_channels)
    x = torch.zeros(1, info.in_channels, *info.image_size)
    ms = measure_latency(net, x, (batch,), device="cpu", threads=threads, repeats=20)[batch]
    return {"ms": ms, "batch": batch, "threads": threads, "input": [info.in_channels, *info.image_size]}


def own_threshold(config: dict[str, Any]) -> float | None:
    """The gate threshold a stored run's method keeps above by its own rule (``Method.decision_threshold``:
    CRISP's ``threshold``, 0 for L0/growing's "eval gate not exactly 0"); None for methods without one."""
    method = config.get("method")
    if method not in list_methods():
        return None
    try:
        return create_method(method, **(config.get("method_options") or {})).decision_threshold()
    except ConfigError:
        return None


def method_help(method: str) -> str:
    """One paragraph for the form: the method's summary, its paper, its own decision rule and its optimizer."""
    cls = method_class(method)
    parts = [cls.summary + "."]
    if cls.paper:
        parts.append(f"Paper: {cls.paper}.")
    parts.append(f"Its own rule: {cls.decision_rule}.")
    parts.append(f"Trained by {cls.optimizer_help}.")
    return " ".join(parts)


def parse_option(spec: FieldSpec, value: Any) -> Any:
    """Turn a form value back into the option's type; text fields accept JSON (lists, null) or plain strings."""
    if spec.kind != "text" or not isinstance(value, str):
        return value
    return spec.parse_text(value)


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
    data_root: str | None = None,
    name: str | None = None,
    **train: Any,
) -> RunConfig:
    """A validated RunConfig from the form; ``target`` goes to the method's target option when it has one.

    Options equal to the method's defaults are dropped so the stored config shows only what the user changed.
    A ``data_root`` equal to :func:`default_data_root` is dropped too (the run searches ``$PRUNEKIT_DATA`` anyway).

    Raises:
        ConfigError: an option out of range, or zero epochs (the run would end at once having trained nothing).
    """
    if train.get("epochs") == 0:
        raise ConfigError("epochs is 0: the run would end at once without training anything; set 1 or more")
    specs = {s.name: s for s in method_fields(method)}
    opts = {k: v for k, v in (method_options or {}).items() if k in specs and v != specs[k].default}
    if target is not None:
        opts.update(method_class(method).target_options(float(target)))
    create_method(method, **opts)  # validates option values now rather than in the background process
    root = (data_root or "").strip() or None
    return RunConfig(model=model, dataset=dataset, method=method, method_options=opts, train=TrainConfig(**train),
                     data_options=dict(data_options or {}), name=name or None,
                     data_root=None if root == (default_data_root() or None) else root)


def default_config(**train: Any) -> RunConfig:
    """ResNet-20 on ``shapes`` with CRISP at 50% MACs (falls back to the dense baseline if CRISP is absent)."""
    method = DEFAULT_METHOD if DEFAULT_METHOD in list_methods() else "dense"
    train.setdefault("epochs", 3)
    return build_run_config(method=method, name="default: resnet20 / shapes / crisp 50%", **train)
