"""Dataset registry: the procedural shapes data, splits, loaders and the real datasets' loading paths."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from prunekit.data import _CACHE, _locate, create_dataset, dataset_info, list_datasets, make_loaders
from prunekit.data.shapes import CLASS_NAMES, generate_shapes
from prunekit.errors import ConfigError, DataNotFoundError

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
    expected = (raw.float() / 255 - 0.5) / 0.3
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
    norm = (raw.float() / 255 - 0.5) / 0.3
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


# --------------------------------------------------------------------------------------------- real datasets
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def isolated_places(tmp_path, monkeypatch):
    """No $PRUNEKIT_DATA, an empty cache folder and no system folders: only what a test passes is found."""
    monkeypatch.delenv("PRUNEKIT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(_locate, "SYSTEM_DIRS", {})
    _CACHE.clear()
    yield tmp_path
    _CACHE.clear()


def test_mnist_from_shared_gz(shared_data):
    mnist = shared_data / "mnist"
    if not (mnist / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST idx files not in {mnist}")
    test = create_dataset("mnist", "test", root=str(mnist), download=False)
    assert len(test) == 10_000 and test.info.in_channels == 1 and test.info.image_size == (28, 28)
    assert test.images.dtype == torch.uint8 and test.images.shape == (10_000, 1, 28, 28)
    # The first test digits of the official file: 7, 2, 1, 0, 4.
    assert test.targets[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(test.targets.numpy()).tolist()[:2] == [980, 1135]
    x, y = test[0]
    assert x.shape == (1, 28, 28) and abs(float(x.mean())) < 1.0
    assert (
        test.augment == "none" and create_dataset("mnist", "train", root=str(mnist), download=False).augment == "none"
    )


def test_mnist_in_torchvision_layout_uncompressed(shared_data, isolated_places):
    src = shared_data / "mnist"
    if not (src / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST idx files not in {src}")
    raw = isolated_places / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / stem).write_bytes(gzip.decompress((src / f"{stem}.gz").read_bytes()))
    ds = create_dataset("mnist", "test", root=str(isolated_places / "data"), download=False)
    assert len(ds) == 10_000 and ds.targets[:3].tolist() == [7, 2, 1]


def test_fashion_mnist_from_debian_package():
    if not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{FASHION_DIR} absent (apt-get install dataset-fashion-mnist)")
    ds = create_dataset("fashion-mnist", "test", download=False)
    assert len(ds) == 10_000 and ds.info.class_names[9] == "Ankle boot"
    assert ds.targets[:3].tolist() == [9, 2, 1]  # official t10k order: ankle boot, pullover, trouser
    assert np.bincount(ds.targets.numpy()).tolist() == [1000] * 10


def test_idx_parser_rejects_garbage(tmp_path):
    from prunekit.data.vision import read_idx

    p = tmp_path / "x-idx1-ubyte"
    p.write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + bytes([1, 2, 3, 4, 5]))
    assert read_idx(p).tolist() == [1, 2, 3, 4, 5]
    p.write_bytes(b"\x00\x00\x08\x01" + (9).to_bytes(4, "big") + bytes([1, 2]))
    with pytest.raises(ConfigError, match="truncated"):
        read_idx(p)
    p.write_bytes(b"PK\x03\x04junk")
    with pytest.raises(ConfigError, match="not an idx"):
        read_idx(p)


def test_cifar_pickled_layout_and_safe_unpickling(isolated_places):
    d = isolated_places / "data" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [*((f"data_batch_{i}", 4) for i in range(1, 6)), ("test_batch", 3)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(n))}
        (d / name).write_bytes(pickle.dumps(batch))
    tr = create_dataset("cifar10", "train", root=str(isolated_places / "data"), val_fraction=0.0, download=False)
    te = create_dataset("cifar10", "test", root=str(isolated_places / "data"), download=False)
    assert len(tr) == 20 and len(te) == 3 and tr.images.shape == (20, 3, 32, 32)
    first = pickle.loads((d / "data_batch_1").read_bytes())[b"data"][0].reshape(3, 32, 32)
    assert np.array_equal(tr.images[0].numpy(), first)
    assert tr.augment == "crop_flip"
    # A batch file that would run code on load is refused.
    (d / "test_batch").write_bytes(pickle.dumps(_Evil()))
    from prunekit.data.vision import _read_cifar_batch

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        _read_cifar_batch(d / "test_batch")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _write_jpeg_folder(root: Path, classes: list[str], n: int, size: int = 32) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                arr = np.full((size, size, 3), 25 * k, dtype=np.uint8) + rng.integers(
                    0, 20, (size, size, 3), dtype=np.uint8
                )
                Image.fromarray(arr).save(root / split / c / f"{i:04d}.jpg", quality=95)


def test_cifar10_from_jpg_folder_and_tar(isolated_places):
    from prunekit.data.vision import CIFAR10_CLASSES

    data = isolated_places / "data"
    _write_jpeg_folder(data / "build", list(CIFAR10_CLASSES), n=2)
    with tarfile.open(data / "cifar10-jpg.tar", "w") as tar:
        for split in ("train", "test"):
            tar.add(data / "build" / split, arcname=split)
    shutil.rmtree(data / "build")
    tr = create_dataset("cifar10", "train", root=str(data), val_fraction=0.0, download=False)
    assert len(tr) == 20 and tr.targets.tolist() == [k for k in range(10) for _ in range(2)]
    assert abs(int(tr.images[-1].float().mean()) - (25 * 9 + 10)) < 6  # JPEG keeps the flat colour
    assert sorted(p.name for p in data.glob("*.npz")) == ["cifar10-jpg.test.npz", "cifar10-jpg.train.npz"]
    # The second read comes from the decoded cache.
    _CACHE.clear()
    te = create_dataset("cifar10", "test", root=str(data), download=False)
    assert len(te) == 20


def test_decoded_cache_is_keyed_by_the_tar_checksum(isolated_places, monkeypatch):
    """A copy of the tar (new mtime, same bytes) reuses the decoded arrays; changed bytes decode again."""
    import prunekit.data.vision as vision

    data = isolated_places / "data"
    _write_jpeg_folder(data / "build", list(vision.CIFAR10_CLASSES), n=1)
    with tarfile.open(data / "cifar10-jpg.tar", "w") as tar:
        tar.add(data / "build" / "train", arcname="train")
        tar.add(data / "build" / "test", arcname="test")
    shutil.rmtree(data / "build")
    first = vision._cached_decode(data / "cifar10-jpg.tar", "test", vision.CIFAR10_CLASSES)
    os.utime(data / "cifar10-jpg.tar", (time.time() + 100, time.time() + 100))  # as a fresh copy has
    decoded = []
    real = vision._tar_splits
    monkeypatch.setattr(vision, "_tar_splits", lambda *a: decoded.append(a) or real(*a))
    again = vision._cached_decode(data / "cifar10-jpg.tar", "test", vision.CIFAR10_CLASSES)
    assert decoded == [] and np.array_equal(first[0], again[0])
    with (data / "cifar10-jpg.tar").open("ab") as f:  # other bytes: decoded again
        f.write(b"\0" * 1024)
    vision._cached_decode(data / "cifar10-jpg.tar", "test", vision.CIFAR10_CLASSES)
    assert len(decoded) == 1


@pytest.mark.slow
def test_cifar10_from_shared_tar(shared_data, tmp_path, isolated_places):
    tar = shared_data / "cifar10-jpg.tar"
    if not tar.is_file():
        pytest.skip(f"{tar} absent")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cifar10-jpg.tar").symlink_to(tar)  # decode cache goes beside the link, in tmp
    te = create_dataset("cifar10", "test", root=str(tmp_path / "data"), download=False)
    assert len(te) == 10_000 and np.bincount(te.targets.numpy()).tolist() == [1000] * 10
    tr = create_dataset("cifar10", "train", root=str(tmp_path / "data"), val_fraction=0.1, download=False)
    assert len(tr) == 45_000
    mean = te.images.float().mean(dim=(0, 2, 3)) / 255
    torch.testing.assert_close(mean, torch.tensor(te.info.mean), atol=0.02, rtol=0)


def test_imagefolder_with_and_without_splits(tmp_path):
    _write_jpeg_folder(tmp_path / "split", ["cat", "dog", "eel"], n=3, size=40)
    ds = create_dataset(f"imagefolder:{tmp_path / 'split'}", "test")
    assert ds.info.class_names == ("cat", "dog", "eel") and ds.info.num_classes == 3
    assert len(ds) == 9 and ds.images.shape == (9, 3, 32, 32)  # 40 px resized to the default 32
    assert ds.targets.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    pool = tmp_path / "pool"
    shutil.copytree(tmp_path / "split" / "train", pool)
    tr = create_dataset(f"imagefolder:{pool}", "train", val_fraction=0.0, image_size=16, channels=1)
    te = create_dataset(f"imagefolder:{pool}", "test", image_size=16, channels=1)
    assert len(tr) + len(te) == 9 and len(te) == 2 and tr.images.shape[1:] == (1, 16, 16)
    x, y = tr[0]
    assert x.shape == (1, 16, 16) and 0 <= y < 3
    with pytest.raises(DataNotFoundError, match="not a folder"):
        create_dataset(f"imagefolder:{tmp_path / 'nope'}")


def test_missing_data_names_every_place(isolated_places, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_DATA", str(isolated_places / "envdata"))
    with pytest.raises(DataNotFoundError) as e:
        create_dataset("mnist", root=str(isolated_places / "mine"), download=False)
    msg = str(e.value)
    for place in ("mine", "envdata", str(isolated_places / "cache")):
        assert place in msg
    assert "--data-root" in msg and "download disabled" in msg
    monkeypatch.setattr(_locate, "SYSTEM_DIRS", {"fashion-mnist": [isolated_places / "usr-share"]})
    with pytest.raises(DataNotFoundError, match=r"usr-share.*apt-get install dataset-fashion-mnist"):
        create_dataset("fashion-mnist", download=False)
    with pytest.raises(DataNotFoundError, match="cifar-100-python"):
        create_dataset("cifar100", "test", root=str(isolated_places / "mine"), download=False)
