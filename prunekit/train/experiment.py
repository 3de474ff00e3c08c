"""From a :class:`RunConfig` to a trained model: the one function the CLI, the runner, the app and the notebooks call.

``build_experiment`` assembles data → model → method (``prepare`` with an example batch) and checks
that they fit together; ``run_experiment`` trains, evaluates on the test split and returns the result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit._device import resolve_device
from prunekit.cost import count_params
from prunekit.data import dataset_info, make_loaders
from prunekit.errors import ConfigError
from prunekit.methods import create_method
from prunekit.methods.base import Method
from prunekit.models import create_model, model_task
from prunekit.train.callbacks import Callback
from prunekit.train.config import RunConfig
from prunekit.train.diagnose import run_warnings
from prunekit.train.evaluate import evaluate
from prunekit.train.loop import Trainer
from prunekit.train.seed import seed_everything

logger = logging.getLogger(__name__)

# make_loaders keywords that are not options of the dataset itself
_LOADER_OPTIONS = ("limit", "download")


@dataclass
class Experiment:
    """Everything a run needs, built and checked.

    Attributes:
        config: the run description.
        model: the prepared model (after ``method.prepare``), on CPU.
        method: the pruning method.
        loaders: ``prunekit.data.Loaders`` (``train``, ``val``, ``test``, ``info``).
        task: ``"classification"`` or ``"segmentation"``.
        example_input: one small input batch ``[2, C, H, W]`` (what ``prepare`` traced with).
    """

    config: RunConfig
    model: nn.Module
    method: Method
    loaders: Any
    task: str
    example_input: torch.Tensor

    @property
    def info(self) -> Any:
        return self.loaders.info


def _check_forward(model: nn.Module, x: torch.Tensor, cfg: RunConfig, task: str, num_classes: int) -> None:
    """Run ``x`` through ``model`` in eval mode; turn shape errors into a ConfigError."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:300]
        raise ConfigError(
            f"model {cfg.model!r} cannot run on dataset {cfg.dataset!r} inputs of shape {tuple(x.shape[1:])}: {first}"
        ) from None
    finally:
        model.train(was_training)
    expected = (x.shape[0], num_classes) if task == "classification" else (x.shape[0], num_classes, *x.shape[2:])
    if tuple(out.shape) != expected:
        raise ConfigError(
            f"model {cfg.model!r} outputs shape {tuple(out.shape)} on dataset {cfg.dataset!r}, expected {expected}"
        )


def build_experiment(cfg: RunConfig) -> Experiment:
    """Build data, model and method for ``cfg`` and check that they fit together.

    The model takes its input channels and classes from the dataset unless ``cfg`` sets them.

    Raises:
        ConfigError: unknown names, ``cfg.in_channels`` contradicting the data (e.g. 1-channel
            Fashion-MNIST into ``in_channels=3``), fewer classes than the data has, a segmentation model on
            classification data (or the reverse), or a model that cannot run on the data's image size.
    """
    seed_everything(cfg.train.seed)
    # Cheap checks first: device, names, options and shapes, before any image is generated or read.
    resolve_device(cfg.train.device)
    task = model_task(cfg.model)
    method = create_method(cfg.method, **cfg.method_options)
    info_options = {k: v for k, v in cfg.data_options.items() if k not in _LOADER_OPTIONS}
    info = dataset_info(cfg.dataset, cfg.data_root, **info_options)
    if info.task != task:
        raise ConfigError(f"model {cfg.model!r} is a {task} model but dataset {cfg.dataset!r} is {info.task} data")
    if cfg.in_channels is not None and cfg.in_channels != info.in_channels:
        raise ConfigError(
            f"in_channels={cfg.in_channels} but dataset {cfg.dataset!r} has {info.in_channels}-channel images"
        )
    if cfg.num_classes is not None and cfg.num_classes < info.num_classes:
        raise ConfigError(f"num_classes={cfg.num_classes} but dataset {cfg.dataset!r} has {info.num_classes} classes")
    num_classes = cfg.num_classes or info.num_classes
    model = create_model(cfg.model, num_classes=num_classes, in_channels=info.in_channels)
    _check_forward(model, torch.zeros(2, info.in_channels, *info.image_size), cfg, task, num_classes)
    t = cfg.train
    loaders = make_loaders(cfg.dataset, t.batch_size, cfg.data_root, seed=t.seed, val_fraction=cfg.val_fraction,
                           num_workers=t.num_workers, loader=t.loader, **cfg.data_options)
    ds = loaders.train.dataset
    if len(ds) == 0:
        raise ConfigError(f"dataset {cfg.dataset!r} has an empty training split")
    example = torch.stack([ds[i][0] for i in range(min(2, len(ds)))])
    pk_spec, pk_task = getattr(model, "pk_spec", None), getattr(model, "pk_task", task)
    model = method.prepare(model, example)
    if pk_spec is not None and not hasattr(model, "pk_spec"):
        model.pk_spec, model.pk_task = pk_spec, pk_task
    return Experiment(config=cfg, model=model, method=method, loaders=loaders, task=task, example_input=example)


def run_experiment(
    cfg: RunConfig,
    callbacks: tuple[Callback, ...] | list[Callback] = (),
    checkpoint_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
) -> dict[str, Any]:
    """Build, train and test one experiment.

    Returns:
        ``Trainer.fit``'s result with test metrics added to ``result["metrics"]`` (``acc/test``,
        ``loss/test``; segmentation: ``miou/test``, ``pixel_acc/test``), plus ``config`` (dict), ``params``,
        ``task``, ``dataset`` (``DataInfo`` as a dict) and ``model`` (the trained, finalised model object;
        drop it before JSON-encoding the result).
    """
    exp = build_experiment(cfg)
    trainer = Trainer(exp.model, exp.loaders, cfg.train, exp.method, callbacks, exp.task,
                      checkpoint_dir=checkpoint_dir, resume_from=resume_from, run_config=cfg.to_dict())
    result = trainer.fit()
    model = trainer.model
    test = evaluate(model, exp.loaders.test, exp.task, trainer.device, channels_last=cfg.train.channels_last)
    result["metrics"].update({f"{k}/test": v for k, v in test.items() if k != "samples"})
    result.update(config=cfg.to_dict(), params=count_params(model), task=exp.task,
                  dataset=exp.info.to_dict(), model=model,
                  method_report=dict(getattr(exp.method, "report", None) or {}))
    result["warnings"] = run_warnings(result)
    for w in result["warnings"]:
        logger.warning("%s: %s", cfg.name or cfg.method, w)
    logger.info("finished %s on %s: %s", cfg.model, cfg.dataset,
                ", ".join(f"{k}={v:.4g}" for k, v in result["metrics"].items()))
    return result
