"""Whole-batch augmentation and the BatchLoader: the per-image semantics, planted crops and flips, seeding, epochs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler

from prunekit.data import BatchLoader, make_loaders
from prunekit.data._base import ArrayDataset, DataInfo, _random_crop
from prunekit.data.batches import augment_batch, crop_flip_batch, crop_flip_params, flip_batch, normalize_batch
from prunekit.errors import ConfigError

PAD = 4


pytestmark = pytest.mark.usefixtures("one_thread")  # the RNGs: conftest restores them


def _info(channels: int = 3, size: int = 8, task: str = "classification") -> DataInfo:
    return DataInfo("planted", task, 10, channels, (size, size), (0.4,) * channels, (0.25,) * channels,
                    tuple(str(i) for i in range(10)))


def _planted(n: int = 64, channels: int = 3, size: int = 8) -> torch.Tensor:
    """uint8 images whose every pixel value is distinct within an image and never 0 (0 is the crop's fill)."""
    base = torch.arange(1, channels * size * size + 1, dtype=torch.uint8).view(channels, size, size)
    return base.expand(n, -1, -1, -1).clone()


def _window(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """The legal crop of ``img`` at offset (dy, dx): out[y, x] = img[y + dy, x + dx], 0 outside."""
    _, h, w = img.shape
    out = torch.zeros_like(img)
    out[:, max(0, -dy):min(h, h - dy), max(0, -dx):min(w, w - dx)] = \
        img[:, max(0, dy):min(h, h + dy), max(0, dx):min(w, w + dx)]
    return out


def _dataset(n: int = 50, augment: str = "crop_flip", **kw) -> ArrayDataset:
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return ArrayDataset(images, torch.arange(n) % 10, _info(), augment=augment, **kw)


def test_crop_flip_matches_the_per_image_crop_for_the_same_draw():
    """For the offsets ArrayDataset's _random_crop draws from a seed, the batch crop gives the same pixels."""
    images = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    offsets, expected = [], []
    for i in range(len(images)):
        torch.manual_seed(100 + i)
        offsets.append(torch.randint(-PAD, PAD + 1, (2,)))  # what _random_crop draws first
        torch.manual_seed(100 + i)
        expected.append(_random_crop(images[i].float(), pad=PAD))
    flips = torch.tensor([i % 3 == 0 for i in range(len(images))])
    out = crop_flip_batch(images, torch.stack(offsets), flips, PAD)
    assert out.dtype == torch.uint8 and out.shape == images.shape and out.is_contiguous()
    for i in range(len(images)):
        want = expected[i].flip(-1) if flips[i] else expected[i]
        assert torch.equal(out[i].float(), want), i


def test_planted_crops_land_at_legal_offsets_and_flip_half_the_time():
    n = 4000
    images = _planted(n)
    offsets, flips = crop_flip_params(n, PAD, torch.Generator().manual_seed(0))
    out = crop_flip_batch(images, offsets, flips, PAD)
    legal = {(dy, dx): _window(images[0], dy, dx) for dy in range(-PAD, PAD + 1) for dx in range(-PAD, PAD + 1)}
    for i in range(0, n, 40):  # the crop is exactly one of the 2 x 81 legal windows, the one drawn
        hits = [(k, f) for k, w in legal.items() for f in (False, True) if torch.equal(out[i], w.flip(-1) if f else w)]
        assert hits == [(tuple(offsets[i].tolist()), bool(flips[i]))], f"crop {i}"
    for i in range(n):
        w = legal[tuple(offsets[i].tolist())]
        assert torch.equal(out[i], w.flip(-1) if flips[i] else w), f"crop {i}"
    assert len({tuple(o) for o in offsets.tolist()}) == (2 * PAD + 1) ** 2  # every offset reached
    flipped = flips.float().mean().item()
    assert 0.45 < flipped < 0.55  # 4000 draws: 6 standard deviations
    # offsets uniform: each of the 81 about 4000/81 ≈ 49 times
    counts = torch.bincount((offsets[:, 0] + PAD) * 9 + offsets[:, 1] + PAD, minlength=81)
    assert counts.min() > 15 and counts.max() < 95


def test_zero_pad_without_flip_is_the_identity_and_flip_batch_flips_only_the_chosen():
    images = _planted(4)
    same = crop_flip_batch(images, torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, dtype=torch.bool), 0)
    assert torch.equal(same, images)
    flips = torch.tensor([True, False, True, False])
    out = flip_batch(images, flips)
    assert torch.equal(out[0], images[0].flip(-1)) and torch.equal(out[1], images[1])
    assert torch.equal(images, _planted(4))  # the input is untouched


def test_seg_flip_flips_image_and_mask_together():
    images = _planted(200, channels=1)
    masks = torch.arange(64).view(8, 8).expand(200, -1, -1).clone()
    out, out_masks = augment_batch(images, masks, "seg_flip", torch.Generator().manual_seed(3))
    flipped = torch.tensor([not torch.equal(o, i) for o, i in zip(out, images)])
    assert 60 < flipped.sum() < 140
    for o, m, f in zip(out, out_masks, flipped):
        assert torch.equal(m, masks[0].flip(-1) if f else masks[0])
        assert torch.equal(o, images[0].flip(-1) if f else images[0])


def test_normalisation_is_bit_identical_to_the_per_image_items():
    ds = _dataset(20, augment="none")
    (x, y), = list(BatchLoader(ds, 20))
    ref = torch.stack([ds[i][0] for i in range(20)])
    assert x.dtype == torch.float32 and torch.equal(x, ref)
    assert y.dtype == torch.long and y.tolist() == [ds[i][1] for i in range(20)]
    mean, inv_std = torch.tensor([0.4] * 3).view(3, 1, 1), 1 / torch.tensor([0.25] * 3).view(3, 1, 1)
    assert torch.equal(normalize_batch(ds.images[:3], mean, inv_std), ref[:3])


def test_unknown_augment_is_refused():
    with pytest.raises(ConfigError, match="augment must be one of .*got 'rotate'"):
        augment_batch(_planted(2), torch.zeros(2), "rotate")


def test_every_sample_once_per_epoch_and_drop_last():
    ds = _dataset(50)
    ds.indices = torch.arange(3, 50, 2)  # a view (as val/limit make): 24 rows
    loader = BatchLoader(ds, 7, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert len(loader) == 4
    for _ in range(2):
        batches = list(loader)
        assert [len(y) for _, y in batches] == [7, 7, 7, 3]
        labels = torch.cat([y for _, y in batches])
        assert sorted(labels.tolist()) == sorted((ds.indices % 10).tolist())
        assert all(x.shape[1:] == (3, 8, 8) and x.dtype == torch.float32 for x, _ in batches)
    dropped = BatchLoader(ds, 7, shuffle=True, drop_last=True)
    assert len(dropped) == 3 and [len(y) for _, y in dropped] == [7, 7, 7]


def test_order_is_the_random_samplers_for_the_same_generator():
    ds = _dataset(40, augment="none")
    ours = torch.cat([y for _, y in BatchLoader(ds, 8, shuffle=True, generator=torch.Generator().manual_seed(5))])
    # the loop seeds a DataLoader's sampler (RandomSampler) and the BatchLoader with the same epoch seed
    sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(5))
    ref = torch.cat([y for _, y in DataLoader(ds, 8, sampler=sampler)])
    assert torch.equal(ours, ref)


def test_seeded_loader_is_deterministic_and_leaves_the_global_rng_alone():
    ds = _dataset(40)
    a, b = BatchLoader(ds, 16, shuffle=True), BatchLoader(ds, 16, shuffle=True)
    a.reseed(7)
    b.reseed(7)
    state = torch.get_rng_state()
    first = list(a)
    assert torch.equal(torch.get_rng_state(), state)  # dropout/noise draws do not depend on the data
    second = list(b)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(first, second))
    b.reseed(8)
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(first, list(b)))


def test_shards_are_slices_of_the_global_batch():
    ds = _dataset(50)
    full = BatchLoader(ds, 8, shuffle=True, drop_last=True)
    full.reseed(3)
    shards = [full.shard(r, 2) for r in range(2)]
    for s in shards:
        s.reseed(3)
    ref = list(full)
    parts = [list(s) for s in shards]
    assert len(parts[0]) == len(parts[1]) == len(ref) == 6
    for k, (x, y) in enumerate(ref):
        assert torch.equal(torch.cat([parts[0][k][0], parts[1][k][0]]), x)
        assert torch.equal(torch.cat([parts[0][k][1], parts[1][k][1]]), y)
    with pytest.raises(ConfigError, match="batch_size must be divisible by the world size 3, got 8"):
        full.shard(0, 3)
    with pytest.raises(ConfigError, match=r"rank must be in \[0, world_size=2\), got 2"):
        full.shard(2, 2)


def test_make_loaders_picks_the_loader_and_refuses_bad_values():
    loaders = make_loaders("shapes", 16, num_samples=64, num_test=16, image_size=16)
    assert all(isinstance(ld, BatchLoader) for ld in loaders[:3])
    assert loaders.train.shuffle and loaders.train.dataset.augment == "crop_flip"
    assert not loaders.val.shuffle and loaders.val.dataset.augment == "none"
    torch_loaders = make_loaders("shapes", 16, loader="torch", num_samples=64, num_test=16, image_size=16)
    assert isinstance(torch_loaders.train, DataLoader)
    x, y = next(iter(loaders.train))
    xt, yt = next(iter(torch_loaders.train))
    assert x.shape == xt.shape and x.dtype == xt.dtype and y.dtype == yt.dtype
    with pytest.raises(ConfigError, match="loader must be one of auto, batch, torch, got 'fast'"):
        make_loaders("shapes", 16, loader="fast", num_samples=64)
    with pytest.raises(ConfigError, match="num_workers must be 0 with it, got 2"):
        make_loaders("shapes", 16, loader="batch", num_workers=2, num_samples=64)


def test_the_per_image_loader_still_resumes_bit_exact(tmp_path: Path):
    """loader='torch' (the old path, kept for worker processes): a mid-epoch stop and resume ends with the
    uninterrupted run's weights (the batch loader's case: test_train.py's every-method resume test)."""
    from prunekit.train import Callback, TrainConfig
    from prunekit.train.config import RunConfig
    from prunekit.train.experiment import run_experiment

    class Stop(Callback):
        def should_stop(self, trainer) -> bool:
            return trainer.step == 4  # mid-epoch 2 of 3 steps each

    def run(out: Path | None = None, stop: bool = False, resume: Path | None = None):
        cfg = RunConfig(model="resnet20", dataset="shapes", data_options={"num_samples": 40, "num_test": 8,
                                                                          "image_size": 8},
                        train=TrainConfig(epochs=2, batch_size=16, lr=0.05, device="cpu", num_threads=1,
                                          loader="torch", log_every=2))
        return run_experiment(cfg, callbacks=[Stop()] if stop else [], checkpoint_dir=out, resume_from=resume)

    full = run()
    assert run(tmp_path, stop=True)["status"] == "stopped"
    resumed = run(tmp_path, resume=tmp_path / "last.pt")
    a, b = full["model"].state_dict(), resumed["model"].state_dict()
    assert resumed["steps"] == full["steps"] == 6
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_bench_data_writes_both_loaders_and_layouts(tmp_path: Path, shared_data):
    import json

    from prunekit.bench.data import bench_data

    r = bench_data(tmp_path, datasets=("mnist", "nosuch"), batch_size=8, repeats=1, steps=1, limit=64)
    saved = json.loads((tmp_path / "data.json").read_text())
    mnist = saved["data"]["mnist"]
    assert mnist["train_images"] == 64 and mnist["torch"]["train"] > 0 and mnist["batch"]["train"] > 0
    assert "unknown dataset 'nosuch'" in saved["data"]["nosuch"]["error"]  # a row, not a crash
    assert saved["step"]["nchw_ms"] > 0 and saved["step"]["channels_last_ms"] > 0
    assert "| mnist | 64 |" in r["markdown"] and "channels_last speed-up" in r["markdown"]
    with pytest.raises(ConfigError, match="bench data has no preset field epochs"):
        bench_data(tmp_path, epochs=3)
    with pytest.raises(ConfigError, match="repeats must be an integer >= 1, got 0"):
        bench_data(tmp_path, repeats=0)
