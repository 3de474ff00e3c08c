"""Dataset registry: ``shapes`` (procedural default), ``shapes-seg``, ``mnist``, ``fashion-mnist``,
``cifar10``, ``cifar100`` and ``imagefolder:PATH``.

Each dataset has a train and a test split on disk (or generated); the validation split is carved from
train deterministically by ``seed`` and removed from it, so one selects on val and reports on test.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from prunekit.data import imagefolder, shapes, vision  # noqa: F401  (importing them registers their datasets)
from prunekit.data._base import ArrayDataset, DataInfo, DataSource
from prunekit.data._locate import search_roots
from prunekit.data.batches import BatchLoader
from prunekit.data.registry import _DATASETS, register_dataset
from prunekit.errors import ConfigError

IMAGEFOLDER_PREFIX = "imagefolder:"
SPLITS = ("train", "val", "test")
# "batch": BatchLoader (whole-batch tensor augmentation, in this process); "torch": DataLoader over the per-image
# ArrayDataset (worker processes); "auto": batch unless workers are asked for
LOADERS = ("auto", "batch", "torch")

def list_datasets() -> list[str]:
    """Registered dataset names, plus the ``imagefolder:PATH`` form."""
    return [n for n in _DATASETS.names() if n != "imagefolder"] + [IMAGEFOLDER_PREFIX + "PATH"]


def _resolve(name: str, options: dict[str, Any]) -> tuple[DataSource, dict[str, Any]]:
    if name.startswith(IMAGEFOLDER_PREFIX):
        path = name[len(IMAGEFOLDER_PREFIX) :]
        if not path:
            raise ConfigError(f"dataset {name!r} needs a folder: imagefolder:/path/to/images")
        return _DATASETS.get("imagefolder"), {**options, "path": path}
    if name not in _DATASETS:
        raise ConfigError(_DATASETS.unknown_message(name, list_datasets()))
    return _DATASETS.get(name), options


def dataset_info(name: str, root: str | None = None, **options: Any) -> DataInfo:
    """Describe a dataset (classes, channels, size, normalisation) without loading its images."""
    source, options = _resolve(name, options)
    return source.info(root, **options)


# A few loaded base splits stay in memory: make_loaders and repeated create_dataset calls reuse them.
_CACHE: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
_CACHE_SIZE = 4


def _load(source: DataSource, name: str, split: str, root: str | None, download: bool, options: dict[str, Any]):
    # The search folders are part of the key: a changed $PRUNEKIT_DATA or cache folder is looked at afresh.
    key = json.dumps([name, split, [str(r) for r in search_roots(root)], options], sort_keys=True, default=str)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    images, targets = source.load(split, root, download, **options)
    _CACHE[key] = (images, targets)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return images, targets


def _split_indices(n: int, seed: int, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)`` index tensors: a seeded permutation of ``range(n)``, val first."""
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    n_val = int(round(n * val_fraction))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def create_dataset(
    name: str,
    split: str = "train",
    root: str | None = None,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    augment: bool | None = None,
    download: bool = True,
    **options: Any,
) -> ArrayDataset:
    """Build one split of a dataset.

    Args:
        name: registry name or ``imagefolder:PATH``.
        split: ``train``, ``val`` (carved from the train files by ``seed``) or ``test``.
        root: a folder to look in first for the files (see ``prunekit.data._locate``).
        seed: selects the validation subset (train excludes it).
        val_fraction: share of the train files held out for validation.
        augment: ``None``: the dataset's standard augmentation on ``train`` only; ``True``/``False``: force.
        download: if nothing is found locally, try torchvision's download into the cache folder.
        **options: the dataset's own options (``shapes``: ``num_samples``, ``num_test``, ``data_seed``, ...).

    Returns:
        An :class:`ArrayDataset` with ``.info``; items ``(float image [C, H, W], int label)`` or
        ``(image, long mask [H, W])``.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    source, options = _resolve(name, options)
    info = source.info(root, **options)
    base = "test" if split == "test" else "train"
    images, targets = _load(source, name, base, root, download, options)
    indices = None
    if split != "test":
        train_idx, val_idx = _split_indices(len(images), seed, val_fraction)
        indices = train_idx if split == "train" else val_idx
    if augment is None:
        augment = split == "train"
    return ArrayDataset(images, targets, info, indices, augment=source.augment if augment else "none")


class Loaders(NamedTuple):
    """The three loaders of an experiment and the dataset description."""

    train: BatchLoader | DataLoader
    val: BatchLoader | DataLoader
    test: BatchLoader | DataLoader
    info: DataInfo


def make_loaders(
    name: str,
    batch_size: int = 128,
    root: str | None = None,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    num_workers: int = 0,
    limit: int | None = None,
    download: bool = True,
    loader: str = "auto",
    **options: Any,
) -> Loaders:
    """Train (shuffled by a generator seeded with ``seed``, augmented), val and test loaders.

    Args:
        limit: at most this many samples per split (a seeded random subset), for quick runs.
        loader: ``batch``: :class:`~prunekit.data.batches.BatchLoader`, whole-batch tensor augmentation (several
            times less data time per epoch, see ``prunekit bench data``); ``torch``: a ``DataLoader`` over the
            per-image :class:`ArrayDataset` (needed for ``num_workers > 0``); ``auto``: ``batch`` unless
            ``num_workers > 0``. Both give the same kinds of batches; the random crops and flips differ.

    The train loader drops its last batch only when that batch would hold a single sample, which
    BatchNorm cannot normalise in training mode.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
    if loader not in LOADERS:
        raise ConfigError(f"loader must be one of {', '.join(LOADERS)}, got {loader!r}")
    if loader == "batch" and num_workers > 0:
        raise ConfigError(f"loader 'batch' runs in the training process: num_workers must be 0 with it, got "
                          f"{num_workers} (use loader 'torch' or 'auto' for worker processes)")
    common = dict(root=root, seed=seed, val_fraction=val_fraction, download=download, **options)
    splits = {s: create_dataset(name, s, **common) for s in SPLITS}
    if limit is not None:
        rng = np.random.default_rng(seed)
        for ds in splits.values():
            if len(ds) > limit:
                keep = np.sort(rng.permutation(len(ds))[:limit])
                ds.indices = ds.indices[torch.from_numpy(keep)]
    n_train = len(splits["train"])
    drop_last = n_train % batch_size == 1 and n_train > 1
    if loader == "batch" or (loader == "auto" and num_workers == 0):
        gen = torch.Generator().manual_seed(seed)
        return Loaders(BatchLoader(splits["train"], batch_size, shuffle=True, drop_last=drop_last, generator=gen),
                       BatchLoader(splits["val"], batch_size), BatchLoader(splits["test"], batch_size),
                       splits["train"].info)
    pin = torch.cuda.is_available()
    extra: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin, "persistent_workers": num_workers > 0}
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(splits["train"], batch_size=batch_size, shuffle=True, generator=gen, drop_last=drop_last, **extra)
    val = DataLoader(splits["val"], batch_size=batch_size, shuffle=False, **extra)
    test = DataLoader(splits["test"], batch_size=batch_size, shuffle=False, **extra)
    return Loaders(train, val, test, splits["train"].info)


__all__ = [
    "LOADERS",
    "ArrayDataset",
    "BatchLoader",
    "DataInfo",
    "DataSource",
    "Loaders",
    "create_dataset",
    "dataset_info",
    "list_datasets",
    "make_loaders",
    "register_dataset",
]
