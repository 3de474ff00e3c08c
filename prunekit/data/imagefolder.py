"""``imagefolder:PATH``: the user's own images, one sub-folder per class (torchvision ``ImageFolder`` layout).

``PATH/train/<class>/*`` and ``PATH/test/<class>/*`` (or ``PATH/val/<class>/*``) are used as the two
splits when present; otherwise ``PATH/<class>/*`` is one pool from which a fixed 20% (seeded by 0, so it
never changes between runs) becomes the test split. Every image is decoded once with PIL, resized (shorter
side to ``image_size``, centre crop) and kept in memory as ``uint8``; the normalisation is the per-channel
mean/std of the train split.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunekit.data._base import DataInfo, DataSource
from prunekit.data.registry import register_dataset
from prunekit.errors import ConfigError, DataNotFoundError

log = logging.getLogger(__name__)

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
TEST_FRACTION = 0.2


def _classes(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(folder: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    files, labels = [], []
    for k, c in enumerate(classes):
        d = folder / c
        if not d.is_dir():
            continue
        for p in sorted(d.rglob("*")):
            if p.suffix.lower() in EXTENSIONS and p.is_file():
                files.append(p)
                labels.append(k)
    return files, labels


def _decode(files: list[Path], size: int, channels: int) -> np.ndarray:
    """``uint8 [N, size, size, channels]``: shorter side resized to ``size``, centre crop."""
    from PIL import Image

    out = np.empty((len(files), size, size, channels), dtype=np.uint8)
    for i, p in enumerate(files):
        with Image.open(p) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            w, h = im.size
            s = size / min(w, h)
            nw, nh = max(size, round(w * s)), max(size, round(h * s))
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            arr = np.asarray(im.crop((left, top, left + size, top + size)))
        out[i] = arr.reshape(size, size, channels)
    return out


@functools.lru_cache(maxsize=2)
def _load_folder(path: str, size: int, channels: int) -> dict[str, Any]:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"imagefolder path {path!r} is not a folder")
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        classes = _classes(root / "train")
        tr_files, tr_labels = _files(root / "train", classes)
        te_files, te_labels = _files(test_dir, classes)
    else:
        classes = _classes(root)
        files, labels = _files(root, classes)
        perm = np.random.default_rng(0).permutation(len(files))
        n_test = int(round(len(files) * TEST_FRACTION))
        te, tr = np.sort(perm[:n_test]), np.sort(perm[n_test:])
        tr_files, tr_labels = [files[i] for i in tr], [labels[i] for i in tr]
        te_files, te_labels = [files[i] for i in te], [labels[i] for i in te]
    if len(classes) < 2 or not tr_files:
        raise DataNotFoundError(
            f"imagefolder {path!r} needs at least two class sub-folders with images ({', '.join(EXTENSIONS)}); "
            f"found classes {classes}"
        )
    log.info("imagefolder %s: %d train, %d test images, %d classes", path, len(tr_files), len(te_files), len(classes))
    train = _decode(tr_files, size, channels)
    test = _decode(te_files, size, channels)
    scaled = train.reshape(-1, channels).astype(np.float64) / 255.0
    return {
        "classes": tuple(classes),
        "train": (train, np.asarray(tr_labels, dtype=np.int64)),
        "test": (test, np.asarray(te_labels, dtype=np.int64)),
        "mean": tuple(float(v) for v in scaled.mean(0)),
        "std": tuple(float(max(v, 1e-3)) for v in scaled.std(0)),
    }


@register_dataset("imagefolder")
class ImageFolder(DataSource):
    """Options: ``path`` (set from the ``imagefolder:PATH`` name), ``image_size`` (32), ``channels`` (3 or 1)."""

    augment = "crop_flip"

    def _opts(self, options: dict[str, Any]) -> tuple[str, int, int]:
        extra = set(options) - {"path", "image_size", "channels"}
        if extra:
            raise ConfigError(f"unknown option(s) for imagefolder: {', '.join(sorted(extra))}")
        if "path" not in options:
            raise ConfigError("dataset 'imagefolder' needs a folder: use the name imagefolder:/path/to/images")
        size, channels = int(options.get("image_size", 32)), int(options.get("channels", 3))
        if size < 8:
            raise ConfigError(f"image_size must be >= 8, got {size}")
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {channels}")
        return str(options["path"]), size, channels

    def info(self, root: str | None, **options: Any) -> DataInfo:
        path, size, channels = self._opts(options)
        d = _load_folder(path, size, channels)
        return DataInfo(
            f"imagefolder:{path}",
            "classification",
            len(d["classes"]),
            channels,
            (size, size),
            d["mean"],
            d["std"],
            d["classes"],
        )

    def load(self, split: str, root: str | None, download: bool, **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
        path, size, channels = self._opts(options)
        images, labels = _load_folder(path, size, channels)[split]
        return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))), torch.from_numpy(labels)
