"""Model registry: in-house CIFAR-sized networks, every torchvision classification model as ``tv:<name>`` and
every timm model as ``timm:<name>`` (with the optional extra ``prunekit[timm]``).

Every model returned by :func:`create_model` carries two plain attributes:

* ``model.pk_spec``: a JSON-serialisable dict ``{"name", "num_classes", "in_channels", "kwargs"}`` such
  that ``create_model(**model.pk_spec)`` rebuilds the same architecture (``prunekit.io`` relies on it);
* ``model.pk_task``: ``"classification"`` or ``"segmentation"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from prunekit.errors import ConfigError
from prunekit.models import cifar_resnet, mobilenetv2, unet, vgg, vit  # noqa: F401  (importing them registers their models)
from prunekit.models._weights import load_weights_
from prunekit.models.registry import _MODELS, TIMM_PREFIX, TV_PREFIX, register_model


def list_models(include_torchvision: bool = True, include_timm: bool = False) -> list[str]:
    """In-house model names (sorted), then ``tv:<name>`` for every torchvision classification model, then
    (``include_timm``, when timm is installed) ``timm:<name>`` for every timm architecture."""
    names = _MODELS.names()
    if include_torchvision:
        from prunekit.models._torchvision import torchvision_names

        names += [TV_PREFIX + n for n in torchvision_names()]
    if include_timm:
        from prunekit.models._timm import timm_names

        names += [TIMM_PREFIX + n for n in timm_names()]
    return names


def model_task(name: str) -> str:
    """``"classification"`` or ``"segmentation"`` for a registered name (``tv:`` and ``timm:`` models classify)."""
    if name.startswith(TV_PREFIX):
        _check_tv_name(name)
        return "classification"
    if name.startswith(TIMM_PREFIX):
        _check_timm_name(name)
        return "classification"
    return _MODELS.get(name).task if name in _MODELS else _raise_unknown(name)


def create_model(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    weights: str | Path | None = None,
    kwargs: dict[str, Any] | None = None,
    **options: Any,
) -> nn.Module:
    """Build a model by registry name.

    Args:
        name: an in-house name (``resnet20``, ``vgg16``, ``unet``, ``vit_tiny32``, ...), ``tv:<torchvision name>``
            or ``timm:<timm name>`` (never with pretrained weights).
        num_classes: output classes (segmentation: including background).
        in_channels: input image channels.
        weights: optional local state-dict file (``torch.save`` or ``.safetensors``); never downloaded.
        kwargs: builder options as a dict (the form stored in ``pk_spec``); merged with ``**options``.
        **options: builder options, e.g. ``width_mult=0.5`` for ``mobilenetv2``, ``width``/``depth`` for ``unet``.

    Returns:
        The model, in train mode, with ``pk_spec`` and ``pk_task`` set.

    Raises:
        ConfigError: unknown name (with close matches) or bad option values.
        CheckpointError: ``weights`` does not match the architecture.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError(f"in_channels must be an integer >= 1, got {in_channels!r}")
    opts = {**(kwargs or {}), **options}
    try:
        json.dumps(opts)
    except TypeError:
        raise ConfigError(f"model options must be JSON-serialisable, got {opts!r}") from None

    if name.startswith(TV_PREFIX):
        from prunekit.models._torchvision import build_torchvision

        _check_tv_name(name)
        model = build_torchvision(name[len(TV_PREFIX) :], num_classes, in_channels, **opts)
        task = "classification"
    elif name.startswith(TIMM_PREFIX):
        from prunekit.models._timm import build_timm

        _check_timm_name(name)
        model = build_timm(name[len(TIMM_PREFIX) :], num_classes, in_channels, **opts)
        task = "classification"
    else:
        if name not in _MODELS:
            _raise_unknown(name)
        entry = _MODELS.get(name)
        try:
            model = entry.builder(num_classes=num_classes, in_channels=in_channels, **opts)
        except TypeError as e:
            raise ConfigError(f"bad options for model {name!r}: {opts!r} ({e})") from None
        task = entry.task

    if weights is not None:
        load_weights_(model, weights, num_classes=num_classes)

    model.pk_spec = {"name": name, "num_classes": num_classes, "in_channels": in_channels, "kwargs": opts}
    model.pk_task = task
    return model


def _check_tv_name(name: str) -> None:
    from prunekit.models._torchvision import torchvision_names

    if name[len(TV_PREFIX) :] not in torchvision_names():
        _raise_unknown(name)


def _check_timm_name(name: str) -> None:
    from prunekit.models._timm import _timm, timm_names

    _timm()  # a clear "pip install 'prunekit[timm]'" when timm is missing
    if name[len(TIMM_PREFIX) :] not in timm_names():
        raise ConfigError(_MODELS.unknown_message(name, list_models(include_torchvision=False, include_timm=True)))


def _raise_unknown(name: str) -> Any:
    raise ConfigError(_MODELS.unknown_message(name, list_models(include_torchvision=True)))


__all__ = ["TIMM_PREFIX", "TV_PREFIX", "create_model", "list_models", "model_task", "register_model"]
