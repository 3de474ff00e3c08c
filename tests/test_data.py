"""Dataset registry: the procedural shapes data, splits, loaders and the real datasets' loading paths."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from prunekit.data import create_dataset, dataset_info, list_datasets, make_loaders
from prunekit.data.shapes import CLASS_NAMES, generate_shapes
from prunekit.errors import ConfigError

SMALL = {"num_samples": 400, "num_test": 100}


def test_registry_lists_datasets():
    names = list_datasets()
    assert {"shapes", "shapes-seg"} <= set(names)
    with pytest.raises(ConfigError, match=r"unknown dataset 'shape'.*shapes"):
        create_dataset("shape")


def test_shapes_determinism():
    a, la = generate_shapes(200, 7)
    b, lb = generate_shapes(200, 7)
    c, _ = generate_shapes(200, 8)
    assert a.dtype == np.uint8 and a.shape == (200, 3, 32, 32)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)
    d1 = create_dataset("shapes", "test", **SMALL)
    d2 = create_dataset("shapes", "test", **SMALL, data_seed=1)
    assert not torch.equal(d1.images, d2.images)


def test_shapes_generation_is_fast():
    t = time.process_time()  # CPU time: robust to other processes sharing the cores
    generate_shapes(10_000, 0)
    assert time.process_time() - t < 3.0


def test_shapes_labels_balanced_and_colour_uninformative():
    images, labels = generate_shapes(3000, 3)
    assert np.bincount(labels, minlength=10).tolist() == [300] * 10
    # A nearest-class-mean classifier on the mean colour of each image stays at chance (0.1).
    feats = images.reshape(3000, 3, -1).mean(axis=2)
    fit, held = slice(0, 2000), slice(2000, 3000)
    centres = np.stack([feats[fit][labels[fit] == k].mean(0) for k in range(10)])
    pred = np.argmin(((feats[held, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    assert (pred == labels[held]).mean() < 0.15


def test_shapes_dataset_items_and_info():
    ds = create_dataset("shapes", "train", **SMALL)
    info = ds.info
    assert (info.task, info.num_classes, info.in_channels, info.image_size) == ("classification", 10, 3, (32, 32))
    assert info.class_names == CLASS_NAMES
    x, y = ds[0]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and isinstance(y, int)
    assert dataset_info("shapes") == create_dataset("shapes", "test", **SMALL).info


def test_val_split_disjoint_and_deterministic():
    tr = create_dataset("shapes", "train", **SMALL, seed=0, val_fraction=0.25)
    va = create_dataset("shapes", "val", **SMALL, seed=0, val_fraction=0.25)
    va2 = create_dataset("shapes", "val", **SMALL, seed=1, val_fraction=0.25)
    assert len(tr) == 300 and len(va) == 100
    assert set(tr.indices.tolist()).isdisjoint(va.indices.tolist())
    assert set(tr.indices.tolist()) | set(va.indices.tolist()) == set(range(400))
    assert torch.equal(va.indices, create_dataset("shapes", "val", **SMALL, seed=0, val_fraction=0.25).indices)
    assert not torch.equal(va.indices, va2.indices)


def test_augmentation_only_on_train_by_default():
    tr = create_dataset("shapes", "train", **SMALL)
    te = create_dataset("shapes", "test", **SMALL)
    assert tr.augment == "crop_flip" and te.augment == "none"
    torch.manual_seed(0)
    views = torch.stack([tr[0][0] for _ in range(8)])
    assert (views - views[0]).abs().amax() > 0  # random crops/flips differ
    assert torch.equal(te[0][0], te[0][0])
    # Normalisation: un-augmented items are (x/255 - mean) / std.
    raw, _ = te.raw(0)
    expected = (raw.float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(te[0][0], expected)
    assert create_dataset("shapes", "train", **SMALL, augment=False).augment == "none"


def test_random_crop_is_a_shifted_window():
    from prunekit.data._base import _random_crop

    x = torch.arange(2 * 6 * 6, dtype=torch.float32).view(2, 6, 6) + 1
    torch.manual_seed(1)
    for _ in range(20):
        y = _random_crop(x, pad=2)
        nz = y != 0
        # The non-zero region is a contiguous window of x, shifted by at most 2 pixels.
        assert nz.sum() >= 2 * 4 * 4
        vals = y[nz]
        assert torch.isin(vals, x).all()


def test_shapes_segmentation_masks_match_images():
    images, masks = generate_shapes(64, 5, segmentation=True, noise=0.0, clutter=0)
    assert masks.shape == (64, 32, 32) and masks.dtype == np.int64
    assert masks.min() == 0 and masks.max() <= 10
    for img, m in zip(images, masks):
        assert (m > 0).any()
        # Without noise and clutter the background is a smooth gradient and each visible shape a flat colour:
        # every labelled region takes at most max_shapes distinct colours.
        for k in np.unique(m[m > 0]):
            colours = np.unique(img[:, m == k].T, axis=0)
            assert len(colours) <= 3
        # A shape's colour never equals the background's next to it (contrast is enforced).
        fg = img[:, m > 0].reshape(3, -1).T.astype(int)
        bg = img[:, m == 0].reshape(3, -1).T.astype(int)
        if len(bg):
            assert np.abs(fg.mean(0) - bg.mean(0)).sum() > 0


def test_shapes_seg_dataset_flips_image_and_mask_together():
    ds = create_dataset("shapes-seg", "train", num_samples=50, num_test=10)
    assert ds.info.task == "segmentation" and ds.info.num_classes == 11
    raw, mask = ds.raw(0)
    norm = (raw.float() / 255 - 0.5) / 0.25
    torch.manual_seed(0)
    seen = set()
    for _ in range(12):
        x, m = ds[0]
        assert m.dtype == torch.long and m.shape == (32, 32)
        if torch.equal(m, mask):
            torch.testing.assert_close(x, norm)
            seen.add("same")
        else:
            assert torch.equal(m, mask.flip(-1))
            torch.testing.assert_close(x, norm.flip(-1))
            seen.add("flipped")
    assert seen == {"same", "flipped"}


def test_make_loaders_limit_and_seeded_shuffle():
    a = make_loaders("shapes", batch_size=32, limit=64, **SMALL)
    b = make_loaders("shapes", batch_size=32, limit=64, **SMALL)
    assert len(a.train.dataset) == 64 and len(a.val.dataset) == 40 and len(a.test.dataset) == 64
    assert a.info.num_classes == 10
    torch.manual_seed(0)
    ya = torch.cat([y for _, y in a.train])
    torch.manual_seed(0)
    yb = torch.cat([y for _, y in b.train])
    assert torch.equal(ya, yb)
    xt, yt = next(iter(a.test))
    assert xt.shape == (32, 3, 32, 32) and yt.dtype == torch.long


def test_make_loaders_avoids_single_sample_batches():
    lo = make_loaders("shapes", batch_size=16, limit=33, **SMALL)
    assert all(len(y) > 1 for _, y in lo.train)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="split"):
        create_dataset("shapes", "validation")
    with pytest.raises(ConfigError, match="val_fraction"):
        create_dataset("shapes", "val", val_fraction=1.5)
    with pytest.raises(ConfigError, match="num_samples"):
        create_dataset("shapes", num_samples=0)
    with pytest.raises(ConfigError, match="bogus"):
        create_dataset("shapes", bogus=3)
