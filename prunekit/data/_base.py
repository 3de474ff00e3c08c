"""What every dataset shares: the :class:`DataInfo` record, the source interface and the in-memory dataset.

All datasets here keep their images as one ``uint8`` tensor ``[N, C, H, W]`` in memory. :class:`ArrayDataset`
augments on tensors per sample (no PIL): ~10 s of data handling per CIFAR-10 epoch on one CPU thread through a
``DataLoader``. Training uses :class:`~prunekit.data.batches.BatchLoader` instead, which applies the same
augmentation to whole batches (~1 s per epoch); the per-item path serves ``DataLoader`` workers and single items.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

AUGMENTS = ("crop_flip", "flip", "none", "seg_flip")


@dataclass(frozen=True)
class DataInfo:
    """Static description of a dataset.

    Attributes:
        name: registry name (``imagefolder:/path`` keeps its path).
        task: ``"classification"`` or ``"segmentation"``.
        num_classes: classifier outputs (segmentation: including background class 0).
        in_channels: image channels.
        image_size: ``(H, W)``.
        mean, std: per-channel normalisation of images scaled to [0, 1].
        class_names: one name per class index.
    """

    name: str
    task: str
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class DataSource:
    """A registered dataset: how to describe it and how to load a base split into memory.

    Subclasses set ``augment`` (the standard training augmentation, one of ``AUGMENTS``) and implement
    :meth:`info` and :meth:`load`. ``options`` are the dataset's own keyword options.
    """

    augment: str = "none"

    def info(self, root: str | None, **options: Any) -> DataInfo:
        raise NotImplementedError

    def load(self, split: str, root: str | None, download: bool, **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(images uint8 [N, C, H, W], targets)`` for ``split`` in ``("train", "test")``.

        ``targets`` is a LongTensor ``[N]`` (classification) or ``[N, H, W]`` (segmentation).
        """
        raise NotImplementedError


class ArrayDataset(Dataset):
    """A view of in-memory images with normalisation and optional tensor augmentation.

    Items are ``(image float [C, H, W], label int)`` for classification and
    ``(image float [C, H, W], mask long [H, W])`` for segmentation.

    Args:
        images: ``uint8 [N, C, H, W]`` (shared, not copied).
        targets: ``long [N]`` or ``long [N, H, W]``.
        info: the dataset description (mean/std used for normalisation).
        indices: which rows of ``images`` this view exposes (default: all).
        augment: one of ``AUGMENTS``; random crop (pad 4, zero fill) + horizontal flip, flip only, nothing,
            or a flip applied to image and mask together.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        info: DataInfo,
        indices: torch.Tensor | None = None,
        augment: str = "none",
    ) -> None:
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
        self.images = images
        self.all_targets = targets
        self.info = info
        self.indices = torch.arange(len(images)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
        self.augment = augment
        self._mean = torch.tensor(info.mean, dtype=torch.float32).view(-1, 1, 1)
        self._inv_std = 1.0 / torch.tensor(info.std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def targets(self) -> torch.Tensor:
        """Targets of this view: ``[len]`` labels or ``[len, H, W]`` masks."""
        return self.all_targets[self.indices]

    def raw(self, i: int) -> tuple[torch.Tensor, Any]:
        """Item ``i`` without augmentation or normalisation: ``(uint8 [C, H, W], label or mask)``."""
        j = int(self.indices[i])
        t = self.all_targets[j]
        return self.images[j], (int(t) if t.ndim == 0 else t)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        j = int(self.indices[i])
        x = self.images[j].float().div_(255.0)
        t = self.all_targets[j]
        if self.augment == "crop_flip":
            x = _random_crop(x, pad=4)
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        elif self.augment == "flip":
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        elif self.augment == "seg_flip":
            if torch.rand(()) < 0.5:
                x, t = x.flip(-1), t.flip(-1)
        x = (x - self._mean) * self._inv_std
        return x, (int(t) if t.ndim == 0 else t)

    def __repr__(self) -> str:
        return f"ArrayDataset({self.info.name!r}, n={len(self)}, augment={self.augment!r})"


def _random_crop(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Random ``H×W`` crop of ``x`` zero-padded by ``pad`` on each side (torchvision RandomCrop(padding=pad)).

    Args:
        x: ``[C, H, W]`` float image.
    """
    _, h, w = x.shape
    dy, dx = (int(v) for v in torch.randint(-pad, pad + 1, (2,)))
    out = torch.zeros_like(x)
    # out[y, x] = in[y + dy, x + dx] where that is inside the image.
    ys, ye = max(0, -dy), min(h, h - dy)
    xs, xe = max(0, -dx), min(w, w - dx)
    out[:, ys:ye, xs:xe] = x[:, ys + dy : ye + dy, xs + dx : xe + dx]
    return out
