"""Data order and augmentation derive from (seed, epoch, sample) only, whatever the process layout."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from tresnet.data.digits import DigitsDataset, digits_split, load_digits_images
from tresnet.data.train_transforms import create_batch_mix, create_train_transform
from tresnet.engine.data import carve_split
from tresnet.engine.distributed import SeededSamples, ShardedEpochSampler


def test_two_shards_make_the_one_process_batches():
    one = list(ShardedEpochSampler(22, seed=3))
    shards = [list(ShardedEpochSampler(22, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 11
    for k in range(2):  # batch k of 4 per process == batch k of 8 in one process
        merged = sorted(shards[0][4 * k:4 * k + 4] + shards[1][4 * k:4 * k + 4])
        assert merged == sorted(one[8 * k:8 * k + 8])


def test_order_depends_on_seed_and_epoch_only():
    sampler = ShardedEpochSampler(50, seed=1)
    sampler.set_epoch(4)
    again = ShardedEpochSampler(50, seed=1)
    again.set_epoch(4)
    torch.manual_seed(123)  # the global RNG plays no part
    assert list(sampler) == list(again)
    again.set_epoch(5)
    assert list(sampler) != list(again)
    assert [i for i, _ in ShardedEpochSampler(50, seed=2)] != [i for i, _ in ShardedEpochSampler(50, seed=1)]
    val = ShardedEpochSampler(5, shuffle=False, rank=1, world_size=2)
    assert list(val) == [1, 3] and len(val) == 2


def test_augmentation_is_tied_to_the_sample_not_the_global_rng():
    transform = create_train_transform(24, scale=(0.3, 1.0), random_erase=0.5)
    data = SeededSamples(DigitsDataset("train", 24, transform, val_fraction=0.2))
    torch.manual_seed(0)
    a = data[(5, 42)][0]
    torch.manual_seed(99)
    b = data[(5, 42)][0]
    c = data[(5, 43)][0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (3, 24, 24) and a.dtype == torch.float32


def test_digits_split_is_fixed_and_stratified():
    images, labels = load_digits_images(32)
    assert images.shape == (1797, 3, 32, 32) and images.dtype == torch.uint8
    train, val = digits_split(labels, 0.2, seed=0)
    assert sorted(train + val) == list(range(1797)) and not set(train) & set(val)
    assert (train, val) == digits_split(labels, 0.2, seed=0)
    counts = torch.bincount(labels[val], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    ds = DigitsDataset("val", 32, None, 0.2)
    image, label = ds[0]
    assert image.shape == (3, 32, 32) and 0 <= label < 10 and float(image.max()) <= 1.0
    assert len(DataLoader(ds, batch_size=64)) == 6


def test_carved_split_is_stratified_and_keeps_a_train_image_per_class():
    targets = [0] * 10 + [1] * 2 + [2] * 1
    train, val = carve_split(targets, 0.2, seed=0)
    assert sorted(train + val) == list(range(13))
    assert sum(targets[i] == 0 for i in val) == 2 and sum(targets[i] == 1 for i in val) == 1
    assert 12 in train  # a class of one image stays in train


def test_batch_mix_gives_soft_targets():
    mix = create_batch_mix(10, mixup_alpha=0.2, cutmix_alpha=1.0)
    images, labels = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    mixed, targets = mix(images, labels)
    assert mixed.shape == images.shape and targets.shape == (4, 10)
    torch.testing.assert_close(targets.sum(1), torch.ones(4))
    assert create_batch_mix(10) is None
