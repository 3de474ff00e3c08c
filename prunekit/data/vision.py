"""The real datasets: ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``, read from local files first.

Accepted layouts (in each searched folder, see :mod:`prunekit.data._locate`):

* MNIST / Fashion-MNIST: the four idx files (``.gz`` or uncompressed) in ``<dir>/mnist`` /
  ``<dir>/fashion-mnist``, torchvision's ``<dir>/MNIST/raw`` / ``<dir>/FashionMNIST/raw``, or directly in
  ``root``; parsed with NumPy (no torchvision needed).
* CIFAR-10/100: torchvision's pickled batches ``<dir>/cifar-10-batches-py`` / ``<dir>/cifar-100-python``
  (unpickled with a loader that only admits the NumPy array types, so the file cannot run code), or for
  CIFAR-10 an image-folder copy ``train/<class>/*.jpg`` + ``test/<class>/*.jpg`` as ``<dir>/cifar10-jpg``,
  ``<dir>/cifar10`` or the tar file ``<dir>/cifar10-jpg.tar``. JPEGs are decoded once and kept as a
  ``.npz`` beside the source (or in the cache folder) for the next time, keyed by the source's path, size and
  mtime and (a tar) its SHA-256, so a copy of the same tar reuses them.

Only when nothing is found and ``download=True`` is torchvision's download tried, into the cache folder.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunekit.data import _locate
from prunekit.data._base import DataInfo, DataSource
from prunekit.data._locate import not_found, search_roots, try_download, writable_cache_for
from prunekit.data.registry import register_dataset
from prunekit.errors import ConfigError

log = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can
    castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
    elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster
    man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck
    pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk
    skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger
    tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split()
)


def _no_options(name: str, options: dict[str, Any]) -> None:
    if options:
        raise ConfigError(f"dataset {name!r} takes no options, got {', '.join(sorted(options))}")


# --------------------------------------------------------------------------------------------- idx (MNIST)
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (``.gz`` or raw): big-endian magic ``0x0000 08 <ndim>``, dims, then uint8 data."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ConfigError(f"{path} is not an idx file of unsigned bytes")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ConfigError(f"{path} is truncated: header says {tuple(dims)}, holds {arr.size} bytes")
    return arr.reshape(tuple(dims))


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):  # the last: some mirrors' spelling
        if (folder / name).is_file():
            return folder / name
    return None



def _find_or_download(source: Any, split: str, root: str | None, download: bool) -> tuple[Any, str]:
    """Local files first; only if none and ``download``: torchvision's download, then look again.

    Returns ``(found, note)``: ``found`` is the source's hit or the list of places looked, ``note`` what
    the download attempt said (for the not-found message).
    """
    found = source._find(split, root)
    note = "download disabled (download=False)"
    if isinstance(found, list) and download:
        import torchvision.datasets as tvd

        cls = getattr(tvd, source.torchvision_class)
        note = try_download(source.name, lambda d: cls(str(d), train=split == "train", download=True)) or note
        found = source._find(split, root)
    return found, note

class _IdxSource(DataSource):
    """MNIST-like: 28×28 grey, 10 classes, train 60,000 / test 10,000; no augmentation."""

    name = ""
    subdirs: tuple[str, ...] = ()
    mean = (0.0,)
    std = (1.0,)
    classes: tuple[str, ...] = ()
    torchvision_class = ""
    how = ""

    def info(self, root: str | None, **options: Any) -> DataInfo:
        _no_options(self.name, options)
        return DataInfo(self.name, "classification", 10, 1, (28, 28), self.mean, self.std, self.classes)

    def _candidates(self, root: str | None) -> list[Path]:
        dirs = [Path(root).expanduser()] if root is not None else []  # idx files directly in --data-root
        for r in search_roots(root):
            dirs += [r / s for s in self.subdirs]
        return dirs + _locate.SYSTEM_DIRS.get(self.name, [])

    def _find(self, split: str, root: str | None) -> tuple[Path, Path] | list[str]:
        looked = []
        for d in self._candidates(root):
            img, lab = (_idx_file(d, s) for s in _IDX_FILES[split])
            if img and lab:
                return img, lab
            looked.append(str(d))
        return looked

    def load(self, split: str, root: str | None, download: bool, **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
        _no_options(self.name, options)
        found, note = _find_or_download(self, split, root, download)
        if isinstance(found, list):
            raise not_found(self.name, found, note, self.how)
        img_path, lab_path = found
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ConfigError(f"{img_path} / {lab_path}: unexpected shapes {images.shape}, {labels.shape}")
        log.info("%s %s: %d images from %s", self.name, split, len(images), img_path.parent)
        return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


@register_dataset("mnist")
class MNIST(_IdxSource):
    name = "mnist"
    subdirs = ("mnist", "MNIST/raw", "mnist/MNIST/raw")
    mean, std = (0.1307,), (0.3081,)
    classes = tuple(str(i) for i in range(10))
    torchvision_class = "MNIST"
    how = "run once with network access (torchvision downloads it), or copy the four idx .gz files into <dir>/mnist"


@register_dataset("fashion-mnist")
class FashionMNIST(_IdxSource):
    name = "fashion-mnist"
    subdirs = ("fashion-mnist", "FashionMNIST/raw", "fashion-mnist/FashionMNIST/raw")
    mean, std = (0.2860,), (0.3530,)
    classes = FASHION_CLASSES
    torchvision_class = "FashionMNIST"
    how = "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu, offline), or run once with network access"


# --------------------------------------------------------------------------------------------- CIFAR
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits exactly the globals a pickled NumPy array needs; anything else (code) is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")


def _read_cifar_batch(path: Path) -> dict[bytes, Any]:
    with path.open("rb") as f:
        return _NumpyOnlyUnpickler(f, encoding="bytes").load()


def _decode_jpegs(blobs: list[bytes]) -> np.ndarray:
    """Decode images to ``uint8 [N, H, W, 3]`` (all must share one size)."""
    from PIL import Image

    out = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs]
    return np.stack(out)


def _folder_split(root: Path, split: str, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    files, labels = [], []
    for k, c in enumerate(classes):
        for p in sorted((root / split / c).iterdir()):
            files.append(p.read_bytes())
            labels.append(k)
    return _decode_jpegs(files), np.asarray(labels, dtype=np.int64)


def _tar_splits(tar_path: Path, classes: tuple[str, ...]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read both splits of a ``train/<class>/x.jpg`` tar in one sequential pass (no extraction)."""
    index = {c: k for k, c in enumerate(classes)}
    found: dict[str, list[tuple[str, int, bytes]]] = {"train": [], "test": []}
    with tarfile.open(tar_path, "r:*") as tar:
        for m in tar:
            parts = Path(m.name).parts
            if not m.isfile() or len(parts) < 3 or parts[-3] not in found or parts[-2] not in index:
                continue
            f = tar.extractfile(m)
            if f is not None:
                found[parts[-3]].append((m.name, index[parts[-2]], f.read()))
    out = {}
    for split, items in found.items():
        items.sort(key=lambda t: (t[1], t[0]))
        out[split] = (_decode_jpegs([b for _, _, b in items]), np.asarray([k for _, k, _ in items], dtype=np.int64))
    return out


def _sha256(path: Path) -> str:
    """Hex SHA-256 of a file (~0.3 s for the 93 MB CIFAR-10 tar); ``""`` for a folder."""
    if not path.is_file():
        return ""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cached_decode(source: Path, split: str, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images of an image-folder copy or its tar, cached as ``.npz``.

    The cache is keyed by the source's path, size and mtime (no read of the source when they match) and, for a tar,
    by its SHA-256: a copy of the tar (new path or mtime, same bytes) reuses the decoded arrays instead of spending
    ~40 s decoding 60,000 JPEGs again.
    """
    st = source.stat()
    stamp = f"{source.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    cache = writable_cache_for(source) / f"{source.name.split('.')[0]}.{split}.npz"
    digest = None
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["source"]) == stamp:
                return z["images"], z["labels"]
            if "sha256" in z.files and str(z["sha256"]):
                digest = _sha256(source)
                if str(z["sha256"]) == digest:
                    return z["images"], z["labels"]
    log.info("decoding %s (%s), once; cached at %s", source, split, cache)
    if source.is_file():
        splits = _tar_splits(source, classes)
    else:
        splits = {s: _folder_split(source, s, classes) for s in ("train", "test")}
    digest = _sha256(source) if digest is None else digest
    for s, (images, labels) in splits.items():
        target = cache.with_name(f"{source.name.split('.')[0]}.{s}.npz")
        tmp = target.with_suffix(".tmp.npz")
        np.savez(tmp, images=images, labels=labels, source=np.asarray(stamp), sha256=np.asarray(digest))
        tmp.replace(target)
    return splits[split]


class _CifarSource(DataSource):
    name = ""
    augment = "crop_flip"
    classes: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    pickled_dir = ""
    torchvision_class = ""
    jpg_names: tuple[str, ...] = ()

    def info(self, root: str | None, **options: Any) -> DataInfo:
        _no_options(self.name, options)
        return DataInfo(self.name, "classification", len(self.classes), 3, (32, 32), self.mean, self.std, self.classes)

    def _pickled(self, d: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _find(self, split: str, root: str | None) -> tuple[np.ndarray, np.ndarray] | list[str]:
        looked = []
        for r in search_roots(root):
            d = r / self.pickled_dir
            if d.is_dir():
                return self._pickled(d, split)
            looked.append(str(d))
            for name in self.jpg_names:
                p = r / name
                if p.is_file() or (p.is_dir() and (p / "train").is_dir() and (p / "test").is_dir()):
                    return _cached_decode(p, split, self.classes)
                looked.append(str(p))
        return looked

    def load(self, split: str, root: str | None, download: bool, **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
        _no_options(self.name, options)
        found, note = _find_or_download(self, split, root, download)
        if isinstance(found, list):
            how = "run once with network access (torchvision downloads it)"
            if self.jpg_names:
                how += f", or put an image-folder copy ({' or '.join(self.jpg_names)}: train/<class>/*.jpg, test/<class>/*.jpg) in a data folder"
            raise not_found(self.name, found, note, how)
        images, labels = found
        return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))), torch.from_numpy(labels)


@register_dataset("cifar10")
class CIFAR10(_CifarSource):
    name = "cifar10"
    classes = CIFAR10_CLASSES
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    pickled_dir = "cifar-10-batches-py"
    torchvision_class = "CIFAR10"
    jpg_names = ("cifar10-jpg.tar", "cifar10-jpg", "cifar10")

    def _pickled(self, d: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        batches = [_read_cifar_batch(d / n) for n in names]
        images = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return images, np.concatenate([np.asarray(b[b"labels"], dtype=np.int64) for b in batches])


@register_dataset("cifar100")
class CIFAR100(_CifarSource):
    name = "cifar100"
    classes = CIFAR100_CLASSES
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    pickled_dir = "cifar-100-python"
    torchvision_class = "CIFAR100"

    def _pickled(self, d: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
        b = _read_cifar_batch(d / split)
        images = np.asarray(b[b"data"]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return images, np.asarray(b[b"fine_labels"], dtype=np.int64)
