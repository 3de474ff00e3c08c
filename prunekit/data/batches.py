"""Whole-batch augmentation on ``uint8`` tensors and the loader that uses it.

:class:`ArrayDataset` augments one image per ``__getitem__`` (a crop, a flip, a normalisation, each a handful of
small tensor ops) and a ``DataLoader`` collates them: at CIFAR size that is ~30 µs of Python per image, about as
long as the forward pass of a small network on one CPU thread. :class:`BatchLoader` does the same on a whole
batch at once: the crop offsets and flips are drawn for the batch, one gather copies every crop (flipped where
drawn) out of the zero-padded batch, and the normalisation is three ops on the batch.

Semantics are the per-image ones (``ArrayDataset``'s ``augment`` kinds): ``crop_flip`` = a random ``H×W`` window
of the image zero-padded by 4 on each side (offsets uniform in ``[-4, 4]``², torchvision's
``RandomCrop(padding=4)``), then a horizontal flip with probability 1/2; ``flip``; ``seg_flip`` (image and mask
together); ``none``. The normalisation is the same arithmetic in the same order, so an unaugmented batch is
bit-identical to the stacked per-image items.

Randomness comes from the loader's own ``torch.Generator`` (the shuffle, then each batch's crops and flips, in
that order), which the training loop reseeds from ``(seed, epoch)`` at every epoch: an epoch's data does not
depend on the model's use of the global RNG (dropout, noisy gates), and replaying an epoch's first batches on
resume draws exactly the same numbers again.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch

from prunekit.data._base import ArrayDataset
from prunekit.errors import ConfigError

CROP_PAD = 4  # ArrayDataset's crop_flip pads by 4, as the CIFAR ResNet papers do


def crop_flip_params(n: int, pad: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw a batch's crop offsets and flips.

    Returns:
        ``offsets`` long ``[n, 2]`` (``dy, dx`` uniform in ``[-pad, pad]``) and ``flips`` bool ``[n]`` (p = 1/2).
    """
    offsets = torch.randint(-pad, pad + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return offsets, flips


def crop_flip_batch(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int) -> torch.Tensor:
    """Shifted, zero-filled windows of a batch, mirrored where ``flips``: one gather for the whole batch.

    ``out[b, :, y, x] = images[b, :, y + dy, x + dx]`` (0 outside the image), then ``out[b]`` flipped along
    ``W`` where ``flips[b]``; the same as ``ArrayDataset``'s per-image ``_random_crop`` followed by ``flip(-1)``.

    Args:
        images: ``[B, C, H, W]`` any dtype (``uint8`` here: a quarter of the bytes of float).
        offsets: long ``[B, 2]`` in ``[-pad, pad]`` (from :func:`crop_flip_params`).
        flips: bool ``[B]``.
        pad: the zero padding on each side.

    Returns:
        ``[B, C, H, W]`` contiguous, same dtype.
    """
    b, c, h, w = images.shape
    if pad == 0 and not bool(flips.any()):
        return images.contiguous()
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    hp, wp = h + 2 * pad, w + 2 * pad
    rows = offsets[:, :1] + pad + torch.arange(h)  # [B, H]: padded row of output row y
    cols = offsets[:, 1:] + pad + torch.arange(w)  # [B, W]
    # the flip is a reversed column index: out[y, x] = crop[y, W-1-x]
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    # one flat gather per image plane: 5x faster than advanced indexing on [B, C, H, W] (1.3 vs 7 ms for 128
    # CIFAR images on one thread), bit-identical
    idx = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return torch.gather(padded.view(b, c, hp * wp), 2, idx).view(b, c, h, w)


def flip_batch(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """``x[b]`` mirrored along its last dimension where ``flips[b]``; ``x`` is ``[B, ...]``."""
    if not bool(flips.any()):
        return x
    x = x.clone()
    x[flips] = x[flips].flip(-1)
    return x


def normalize_batch(images: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor) -> torch.Tensor:
    """``uint8 [B, C, H, W]`` → float ``(x / 255 - mean) * inv_std``: ``ArrayDataset``'s arithmetic, op for op.

    Args:
        mean, inv_std: ``[C, 1, 1]`` float.
    """
    return (images.float().div_(255.0) - mean) * inv_std


def augment_batch(
    images: torch.Tensor,
    targets: torch.Tensor,
    augment: str,
    generator: torch.Generator | None = None,
    pad: int = CROP_PAD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one of ``ArrayDataset``'s augment kinds to a whole batch (before normalisation).

    Args:
        images: ``uint8 [B, C, H, W]``.
        targets: ``[B]`` labels or ``[B, H, W]`` masks (flipped with the image for ``seg_flip``).
        augment: ``crop_flip``, ``flip``, ``seg_flip`` or ``none``.
        generator: where the crops and flips are drawn from.

    Returns:
        ``(images, targets)``, the images new tensors (the dataset's stay untouched).
    """
    n = len(images)
    if augment == "crop_flip":
        offsets, flips = crop_flip_params(n, pad, generator)
        return crop_flip_batch(images, offsets, flips, pad), targets
    if augment == "flip":
        return flip_batch(images, torch.rand(n, generator=generator) < 0.5), targets
    if augment == "seg_flip":
        flips = torch.rand(n, generator=generator) < 0.5
        return flip_batch(images, flips), flip_batch(targets, flips)
    if augment == "none":
        return images, targets
    raise ConfigError(f"augment must be one of crop_flip, flip, seg_flip, none, got {augment!r}")


class BatchLoader:
    """Batches of an :class:`ArrayDataset`, indexed, augmented and normalised as whole tensors.

    A drop-in for the ``DataLoader`` of the same dataset (``num_workers=0``): iterating yields
    ``(float [B, C, H, W], long [B] or [B, H, W])``, ``len()`` is the number of batches, ``.dataset`` and
    ``.batch_size`` are there for code that builds other loaders from it.

    Args:
        dataset: the view to read (its ``indices`` are read at every ``iter``, so a later subset applies).
        batch_size: samples per batch.
        shuffle: a new permutation of the samples at every ``iter`` (``torch.randperm`` on ``generator``, the
            order ``RandomSampler`` gives with that generator).
        drop_last: drop a last incomplete batch.
        generator: the source of the order and of every crop and flip; None: a fresh one seeded from torch's
            global RNG at each ``iter`` (as ``RandomSampler`` does). See :meth:`reseed`.
    """

    def __init__(
        self,
        dataset: ArrayDataset,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = generator
        self.rank, self.world_size = 0, 1

    def reseed(self, seed: int) -> None:
        """Make the next ``iter`` draw its order and augmentation from a generator seeded with ``seed``."""
        self.generator = torch.Generator().manual_seed(int(seed))

    def shard(self, rank: int, world_size: int) -> BatchLoader:
        """This loader for one of ``world_size`` data-parallel ranks: every global batch of ``batch_size`` is drawn
        and augmented the same on every rank (same generator seed) and rank ``r`` yields its ``r``-th equal slice;
        incomplete global batches are dropped so the ranks step together.

        Raises:
            ConfigError: ``batch_size`` not divisible by ``world_size``, or ``rank`` outside ``[0, world_size)``.
        """
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if self.batch_size % world_size:
            raise ConfigError(f"batch_size must be divisible by the world size {world_size}, got {self.batch_size}")
        out = copy.copy(self)
        out.rank, out.world_size, out.drop_last = rank, world_size, world_size > 1 or self.drop_last
        return out

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ds, bs = self.dataset, self.batch_size
        g = self.generator
        if g is None and (self.shuffle or ds.augment != "none"):
            g = torch.Generator().manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        order = ds.indices
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=g)]
        mean, inv_std = ds._mean, ds._inv_std
        part = bs // self.world_size
        for k in range(len(self)):
            rows = order[k * bs : (k + 1) * bs]
            # index_select, not images[rows]: 20x faster for a uint8 batch
            images = ds.images.index_select(0, rows)
            images, targets = augment_batch(images, ds.all_targets.index_select(0, rows), ds.augment, g)
            if self.world_size > 1:
                # every rank drew this global batch's crops and flips: the generators stay in step
                images = images[self.rank * part : (self.rank + 1) * part]
                targets = targets[self.rank * part : (self.rank + 1) * part]
            yield normalize_batch(images, mean, inv_std), targets

    def __repr__(self) -> str:
        shard = f", rank={self.rank}/{self.world_size}" if self.world_size > 1 else ""
        return (f"BatchLoader({self.dataset!r}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}{shard})")
