"""tresnet.data.digits_mosaic: the multi-label digit mosaics (determinism, disjoint sources, labels)."""

from __future__ import annotations

import pytest
import torch

from tresnet.data.digits import load_digits_images
from tresnet.data.digits_mosaic import DIGITS_MULTILABEL, DigitsMosaicDataset, build_digits_mosaics
from tresnet.data.splits import stratified_split
from tresnet.errors import ConfigError

pytest.importorskip("sklearn")


def test_same_arguments_give_the_same_mosaics():
    first = DigitsMosaicDataset("train", img_size=32, num_images=200)
    build_digits_mosaics.cache_clear()
    second = DigitsMosaicDataset("train", img_size=32, num_images=200)
    assert first.images is not second.images
    assert torch.equal(first.images, second.images) and torch.equal(first.targets, second.targets)
    other_seed = DigitsMosaicDataset("train", img_size=32, num_images=200, split_seed=1)
    assert not torch.equal(first.images, other_seed.images)


def test_train_and_val_use_disjoint_source_digits_of_the_stratified_split():
    train = DigitsMosaicDataset("train", img_size=32, num_images=500)
    val = DigitsMosaicDataset("val", img_size=32, num_images=500)
    train_sources = set(train.sources[train.sources >= 0].tolist())
    val_sources = set(val.sources[val.sources >= 0].tolist())
    assert not train_sources & val_sources
    _, labels = load_digits_images(16)
    train_split, val_split = stratified_split(labels, 0.2, 0)
    assert train_sources <= set(train_split) and val_sources <= set(val_split)


def test_one_to_four_digits_and_the_label_is_the_set_present():
    dataset = DigitsMosaicDataset("train", img_size=32, num_images=400)
    _, labels = load_digits_images(16)
    counts = (dataset.sources >= 0).sum(dim=1)
    assert set(counts.tolist()) == {1, 2, 3, 4}
    for sources, target in zip(dataset.sources, dataset.targets, strict=True):
        present = {int(labels[s]) for s in sources.tolist() if s >= 0}
        assert set(torch.nonzero(target).flatten().tolist()) == present
    assert dataset.targets.dtype == torch.float32 and dataset.targets.shape == (400, 10)
    assert (dataset.targets.sum(dim=0) > 0).all()  # every digit occurs


def test_cells_show_their_digit_filling_the_cell():
    dataset = DigitsMosaicDataset("val", img_size=35, num_images=20)  # 17px cells, a black 1px border
    digits, _ = load_digits_images(17)
    image = dataset.images[3]
    assert image.shape == (3, 35, 35) and image.dtype == torch.uint8
    assert torch.equal(image[0], image[2])
    for cell, source in enumerate(dataset.sources[3].tolist()):
        row, col = divmod(cell, 2)
        tile = image[0, row * 17:(row + 1) * 17, col * 17:(col + 1) * 17]
        expected = digits[source, 0] if source >= 0 else torch.zeros(17, 17, dtype=torch.uint8)
        assert torch.equal(tile, expected)
    assert not image[:, 34].any() and not image[:, :, 34].any()


def test_items_without_and_with_transform():
    dataset = DigitsMosaicDataset("val", img_size=48, num_images=10, grid=3)
    image, target = dataset[0]
    assert image.dtype == torch.float32 and image.shape == (3, 48, 48) and 0 <= image.min() <= image.max() <= 1
    assert target.shape == (10,) and len(dataset) == 10 and dataset.num_classes == 10
    assert dataset.classes == [str(d) for d in range(10)] and DIGITS_MULTILABEL == "digits-multilabel"
    raw, _ = DigitsMosaicDataset("val", img_size=48, num_images=10, grid=3, transform=lambda x: x)[0]
    assert raw.dtype == torch.uint8
    assert set((DigitsMosaicDataset("val", img_size=48, num_images=200, grid=3).sources >= 0).sum(1).tolist()) \
        <= set(range(1, 10))


def test_default_sizes():
    assert len(DigitsMosaicDataset("train")) == 3000 and len(DigitsMosaicDataset("val")) == 1000


@pytest.mark.parametrize("kwargs, message", [
    ({"split": "test"}, "split must be 'train' or 'val'"),
    ({"img_size": 15}, "cells of 15px / 2 = 7px are too small"),
    ({"grid": 0}, "grid must be 1 or more"),
    ({"num_images": 0}, "num_images must be 1 or more"),
    ({"val_fraction": 1.0}, "val_fraction must lie in (0, 1)"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ConfigError) as info:
        DigitsMosaicDataset(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)
