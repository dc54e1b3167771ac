"""tresnet.data.digits_detection: the digit canvases for detection (determinism, disjoint sources, tight boxes,
overlap, items, transforms, COCO ground truth, argument errors)."""

from __future__ import annotations

import contextlib
import io
import re

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.ops import box_iou
from torchvision.transforms import v2

from tresnet.data.digits import load_digits_images
from tresnet.data.digits_detection import (
    DEFAULT_NUM_IMAGES,
    DIGITS_CATEGORY_IDS,
    DIGITS_DETECTION,
    MAX_OVERLAP_IOU,
    DigitsDetectionDataset,
    _draw_layout,
    build_digits_canvases,
    default_digit_sizes,
)
from tresnet.data.splits import stratified_split
from tresnet.errors import ConfigError

pytest.importorskip("sklearn")


def _same(first, second) -> bool:
    images, boxes, labels = first
    return (torch.equal(images, second[0]) and all(map(torch.equal, boxes, second[1]))
            and all(map(torch.equal, labels, second[2])))


def test_same_arguments_give_the_same_canvases():
    first = build_digits_canvases("train", 64, 50, 0.2, 0)
    build_digits_canvases.cache_clear()
    second = build_digits_canvases("train", 64, 50, 0.2, 0)
    assert first[0] is not second[0] and _same(first, second)
    other_seed = build_digits_canvases("train", 64, 50, 0.2, 1)
    assert not torch.equal(first[0], other_seed[0])
    assert not torch.equal(first[0], build_digits_canvases("val", 64, 50, 0.2, 0)[0])


def test_train_and_val_use_disjoint_source_digits_of_the_stratified_split():
    layouts = {split: _draw_layout(split, 64, 300, 0.2, 0, (8, 24), 4, 0.05) for split in ("train", "val")}
    sources = {split: set(layout.sources.tolist()) for split, layout in layouts.items()}
    assert not sources["train"] & sources["val"]
    _, labels = load_digits_images(8)
    train, val = stratified_split(labels, 0.2, 0)
    assert sources["train"] <= set(train) and sources["val"] <= set(val)
    drawn = build_digits_canvases("val", 64, 300, 0.2, 0)[2]
    assert torch.equal(torch.cat(drawn), layouts["val"].labels)  # the layout is what gets drawn
    assert torch.equal(layouts["val"].labels, labels[layouts["val"].sources])


def test_boxes_are_the_tight_box_of_the_ink():
    images, boxes, labels = build_digits_canvases("val", 64, 50, 0.2, 0, max_digits=1, empty_fraction=0.0)
    # The texture draws from its own random stream: the same canvases without digits are the backgrounds.
    backgrounds, no_boxes, _ = build_digits_canvases("val", 64, 50, 0.2, 0, max_digits=1, empty_fraction=1.0)
    assert all(len(b) == 0 for b in no_boxes)
    for image, background, box, label in zip(images, backgrounds, boxes, labels, strict=True):
        assert box.shape == (1, 4) and box.dtype == torch.float32 and label.dtype == torch.int64
        ink = (image != background).any(0)
        rows, cols = torch.nonzero(ink.any(1)).flatten(), torch.nonzero(ink.any(0)).flatten()
        expected = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]  # x2, y2: exclusive edges
        assert box[0].tolist() == [float(v) for v in expected]
        x1, y1, x2, y2 = box[0].tolist()
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64 and x2 - x1 <= 24 and y2 - y1 <= 24


def test_some_canvases_are_empty_and_digits_overlap_little():
    images, boxes, labels = build_digits_canvases("train", 64, 100, 0.2, 0, empty_fraction=0.3)
    counts = [len(b) for b in boxes]
    assert 0 in counts and max(counts) <= 4 and len(set(counts)) >= 4
    assert images.shape == (100, 3, 64, 64) and images.dtype == torch.uint8
    assert images[[i for i, n in enumerate(counts) if n == 0]].float().std() > 0  # a texture, not black
    for image_boxes, image_labels in zip(boxes, labels, strict=True):
        assert len(image_boxes) == len(image_labels) and ((0 <= image_labels) & (image_labels <= 9)).all()
        assert (image_boxes >= 0).all() and (image_boxes <= 64).all()
        assert (image_boxes[:, 2:] > image_boxes[:, :2]).all()
        iou = box_iou(image_boxes, image_boxes).fill_diagonal_(0)
        assert (iou <= MAX_OVERLAP_IOU + 1e-6).all()
    assert set(torch.cat(labels).tolist()) == set(range(10))


def test_item_without_transform():
    dataset = DigitsDetectionDataset("val", img_size=64, num_images=20)
    image, target = dataset[3]
    assert image.dtype == torch.float32 and image.shape == (3, 64, 64) and 0 <= image.min() <= image.max() <= 1
    assert set(target) == {"boxes", "labels", "image_id", "area", "iscrowd"} and target["image_id"] == 3
    boxes = target["boxes"]
    assert boxes.dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert torch.equal(boxes, dataset.boxes[3]) and torch.equal(target["labels"], dataset.labels[3])
    assert torch.allclose(target["area"], (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    assert target["iscrowd"].dtype == torch.int64 and not target["iscrowd"].any()
    boxes += 1  # the target's tensors are the caller's own
    assert not torch.equal(dataset[3][1]["boxes"], boxes)
    assert dataset[-1][1]["image_id"] == 19 and len(dataset) == 20
    assert dataset.classes == [str(d) for d in range(10)] and dataset.category_ids == list(range(1, 11))
    assert DIGITS_DETECTION == "digits-detection" and DIGITS_CATEGORY_IDS == tuple(range(1, 11))
    with pytest.raises(IndexError):
        dataset[20]


def test_item_with_a_v2_transform_flips_the_boxes():
    plain = DigitsDetectionDataset("val", img_size=64, num_images=20)
    flipped = DigitsDetectionDataset("val", img_size=64, num_images=20, transform=v2.RandomHorizontalFlip(p=1))
    index = next(i for i, b in enumerate(plain.boxes) if len(b))
    image, target = flipped[index]
    assert isinstance(image, tv_tensors.Image) and isinstance(target["boxes"], tv_tensors.BoundingBoxes)
    assert torch.equal(image.as_subclass(torch.Tensor), plain.images[index].flip(-1))
    x1, y1, x2, y2 = plain.boxes[index].unbind(1)
    expected = torch.stack([64 - x2, y1, 64 - x1, y2], dim=1)
    assert torch.equal(target["boxes"].as_subclass(torch.Tensor), expected)
    assert torch.equal(target["labels"], plain.labels[index]) and target["image_id"] == index


def test_collate_makes_a_detection_batch():
    dataset = DigitsDetectionDataset("val", img_size=64, num_images=10)
    images, targets = next(iter(DataLoader(dataset, batch_size=4, collate_fn=DigitsDetectionDataset.collate)))
    assert isinstance(images, list) and len(images) == 4 and images[0].shape == (3, 64, 64)
    assert [t["image_id"] for t in targets] == [0, 1, 2, 3]
    assert DigitsDetectionDataset.collate([]) == ([], [])


def test_coco_ground_truth_matches_the_boxes():
    dataset = DigitsDetectionDataset("val", img_size=64, num_images=30)
    coco = dataset.coco_ground_truth()
    assert [image["id"] for image in coco["images"]] == list(range(30))
    assert coco["images"][7] == {"id": 7, "file_name": "000007.png", "width": 64, "height": 64}
    assert [c["id"] for c in coco["categories"]] == list(range(1, 11))
    assert [c["name"] for c in coco["categories"]] == dataset.classes
    annotations = coco["annotations"]
    assert [a["id"] for a in annotations] == list(range(1, len(annotations) + 1))
    assert len(annotations) == sum(len(b) for b in dataset.boxes)
    for index in range(len(dataset)):
        mine = [a for a in annotations if a["image_id"] == index]
        for annotation, box, label in zip(mine, dataset.boxes[index], dataset.labels[index], strict=True):
            x, y, w, h = annotation["bbox"]
            assert [x, y, x + w, y + h] == box.tolist() and annotation["area"] == w * h
            assert annotation["category_id"] == int(label) + 1 and annotation["iscrowd"] == 0


def test_pycocotools_scores_the_ground_truth_as_perfect_detections():
    coco_api = pytest.importorskip("pycocotools.coco")
    coco_eval = pytest.importorskip("pycocotools.cocoeval")
    ground_truth = coco_api.COCO()
    ground_truth.dataset = DigitsDetectionDataset("val", img_size=64, num_images=30).coco_ground_truth()
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        ground_truth.createIndex()
        detections = ground_truth.loadRes([{"image_id": a["image_id"], "category_id": a["category_id"],
                                            "bbox": a["bbox"], "score": 1.0}
                                           for a in ground_truth.dataset["annotations"]])
        evaluation = coco_eval.COCOeval(ground_truth, detections, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)


def test_default_sizes():
    assert DEFAULT_NUM_IMAGES == {"train": 3000, "val": 500} and default_digit_sizes(128) == (16, 48)
    dataset = DigitsDetectionDataset("val")
    assert len(dataset) == 500 and dataset.images.shape[1:] == (3, 128, 128)
    sides = torch.cat(dataset.boxes)
    sides = torch.cat([sides[:, 2] - sides[:, 0], sides[:, 3] - sides[:, 1]])
    assert sides.max() <= 48 and sides.max() > 32 and sides.min() < 16


@pytest.mark.parametrize("kwargs, message", [
    ({"split": "test"}, "split must be 'train' or 'val'"),
    ({"val_fraction": 1.0}, "val_fraction must lie in (0, 1)"),
    ({"num_images": 0}, "num_images must be 1 or more"),
    ({"max_digits": 0}, "max_digits must be 1 or more"),
    ({"empty_fraction": 1.5}, "empty_fraction must lie in [0, 1]"),
    ({"img_size": 16}, "use an img_size of at least 22"),
    ({"digit_sizes": (4, 12)}, "digit_sizes must be (smallest, largest)"),
    ({"digit_sizes": (20, 12)}, "digit_sizes must be (smallest, largest)"),
    ({"img_size": 32, "digit_sizes": (8, 40)}, "use an img_size of at least 40 or smaller digit_sizes"),
])
def test_bad_arguments_raise_config_errors(kwargs, message):
    kwargs = {"split": "val", "img_size": 64, "num_images": 5} | kwargs
    with pytest.raises(ConfigError, match=re.escape(message)):
        DigitsDetectionDataset(**kwargs)
    if kwargs["split"] != "test":
        with pytest.raises(ConfigError):
            build_digits_canvases(kwargs.pop("split"), kwargs.pop("img_size"), kwargs.pop("num_images"),
                                  kwargs.pop("val_fraction", 0.2), 0, **kwargs)
