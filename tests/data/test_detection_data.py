"""tresnet.data.detection: COCO instances files as detection samples, training targets, bad files, transforms."""

from __future__ import annotations

import json
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from tresnet.data import UnreadableImageWarning, create_loader
from tresnet.data.datasets import UnreadableImage
from tresnet.data.detection import (
    OUTSIDE,
    ZERO_SIZE,
    CocoDetection,
    DetectionBatch,
    DroppedBoxesWarning,
    create_detection_eval_transform,
    create_detection_train_transform,
)
from tresnet.errors import ConfigError, DataError

RNG = np.random.default_rng(0)

# Gapped ids, out of order in the file: sorted ids give the classes (cat 1 -> 0, dog 3 -> 1, emu 7 -> 2).
CATEGORIES = [{"id": 7, "name": "emu"}, {"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}]
IMAGES = [{"id": 10, "file_name": "a.png", "width": 40, "height": 30},
          {"id": 11, "file_name": "sub/b.png", "width": 20, "height": 16},
          {"id": 12, "file_name": "c.png", "width": 24, "height": 24}]  # c: no annotation, a negative
ANNOTATIONS = [
    {"id": 101, "image_id": 10, "category_id": 3, "bbox": [2, 3, 10, 5], "area": 40.5, "iscrowd": 0},
    {"id": 102, "image_id": 10, "category_id": 1, "bbox": [30, 20, 20, 20], "area": 300.0, "iscrowd": 0},  # past the edge
    {"id": 103, "image_id": 10, "category_id": 7, "bbox": [0, 0, 40, 30], "area": 900.0, "iscrowd": 1},  # crowd
    {"id": 104, "image_id": 11, "category_id": 7, "bbox": [25, 2, 5, 5], "area": 25.0, "iscrowd": 0},  # outside
    {"id": 105, "image_id": 11, "category_id": 1, "bbox": [4, 4, 0, 6], "area": 1.0, "iscrowd": 0},  # zero width
    {"id": 106, "image_id": 11, "category_id": 3, "bbox": [1.5, 1, 4, 4]},  # no area, no iscrowd
]


def _write_image(path, width, height):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, "PNG")


def _coco(tmp_path, **changes):
    images = tmp_path / "val2017"
    for image in IMAGES:
        _write_image(images / image["file_name"], image["width"], image["height"])
    annotations = tmp_path / "instances_val2017.json"
    annotations.write_text(json.dumps({"images": IMAGES, "annotations": ANNOTATIONS, "categories": CATEGORIES}
                                      | changes))
    return images, annotations


def _training(images, annotations, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DroppedBoxesWarning)
        return CocoDetection(images, annotations, for_training=True, **kwargs)


def test_classes_sorted_by_id_and_every_image_kept(tmp_path):
    images, annotations = _coco(tmp_path)
    dataset = CocoDetection(images, annotations)
    assert dataset.classes == ["cat", "dog", "emu"] and dataset.category_ids == [1, 3, 7]
    assert dataset.num_classes == 3 and len(dataset) == 3 and dataset.image_ids == [10, 11, 12]
    assert dataset.samples == [(str(images / "a.png"), 10), (str(images / "sub" / "b.png"), 11),
                               (str(images / "c.png"), 12)]
    assert dataset.root == images.absolute() and dataset.source == annotations.absolute()
    assert dataset.tasks == ("detection",) and not dataset.for_training and dataset.dropped_boxes == 0


def test_evaluation_target_holds_the_files_boxes(tmp_path):
    dataset = CocoDetection(*_coco(tmp_path))
    image, target = dataset[0]
    assert image.dtype == torch.float32 and image.shape == (3, 30, 40) and 0 <= image.min() <= image.max() <= 1
    assert set(target) == {"boxes", "labels", "image_id", "area", "iscrowd"} and target["image_id"] == 10
    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.dtype == torch.float64  # the file's numbers exactly
    assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY and tuple(boxes.canvas_size) == (30, 40)
    # xywh -> xyxy, the box past the edge kept as it is, the crowd box kept
    assert boxes.tolist() == [[2, 3, 12, 8], [30, 20, 50, 40], [0, 0, 40, 30]]
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [1, 0, 2]
    assert target["area"].dtype == torch.float64 and target["area"].tolist() == [40.5, 300.0, 900.0]
    assert target["iscrowd"].dtype == torch.int64 and target["iscrowd"].tolist() == [0, 0, 1]
    _, second = dataset[1]  # zero-size and outside boxes kept too; no area: w * h
    assert second["boxes"].tolist() == [[25, 2, 30, 7], [4, 4, 4, 10], [1.5, 1, 5.5, 5]]
    assert second["area"].tolist() == [25.0, 1.0, 16.0] and second["iscrowd"].tolist() == [0, 0, 0]


def test_image_without_annotations_is_a_negative(tmp_path):
    dataset = CocoDetection(*_coco(tmp_path))
    image, target = dataset[2]
    assert image.shape == (3, 24, 24) and target["image_id"] == 12
    assert target["boxes"].shape == (0, 4) and tuple(target["boxes"].canvas_size) == (24, 24)
    assert target["labels"].shape == (0,) and target["area"].shape == (0,) and target["iscrowd"].shape == (0,)
    assert target["labels"].dtype == torch.int64 and target["boxes"].dtype == torch.float64


def test_training_targets_drop_crowd_clip_and_count(tmp_path):
    images, annotations = _coco(tmp_path)
    with pytest.warns(DroppedBoxesWarning, match=r"2 boxes of .* \(1 zero or negative size in the file, 1 outside "
                                                 r"the image\) .* 1 others were clipped"):
        dataset = CocoDetection(images, annotations, for_training=True)
    assert dataset.dropped_boxes == 2 and dataset.dropped_box_reasons == {ZERO_SIZE: 1, OUTSIDE: 1}
    assert dataset.crowd_boxes == 1 and dataset.clipped_boxes == 1
    first, second, third = (dataset.target(i) for i in range(3))
    assert first["boxes"].tolist() == [[2, 3, 12, 8], [30, 20, 40, 30]] and first["labels"].tolist() == [1, 0]
    assert first["iscrowd"].tolist() == [0, 0] and first["area"].tolist() == [40.5, 300.0]
    assert second["boxes"].tolist() == [[1.5, 1, 5.5, 5]] and second["labels"].tolist() == [1]
    assert third["boxes"].shape == (0, 4)
    assert CocoDetection(images, annotations).target(0)["boxes"].shape == (3, 4)  # evaluation: the file's boxes


def test_training_without_bad_boxes_does_not_warn(tmp_path):
    images, annotations = _coco(tmp_path, annotations=ANNOTATIONS[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert CocoDetection(images, annotations, for_training=True).dropped_boxes == 0


def _bad_annotation(**changes):
    return {"annotations": ANNOTATIONS + [{"id": 999, "image_id": 10, "category_id": 1, "bbox": [0, 0, 2, 2]}
                                          | changes]}


@pytest.mark.parametrize("changes, message", [
    (_bad_annotation(category_id=2), "annotation 999 of {json} has the category_id 2, which is not one of its 3 "
                                     "categories"),
    (_bad_annotation(image_id=77), "annotation 999 of {json} has the image_id 77, which is not an image of the file"),
    (_bad_annotation(bbox=[1, 2, 3]), "annotation 999 of {json} has the bbox [1, 2, 3]: a COCO box is 4 numbers"),
    (_bad_annotation(bbox=[1, 2, "3", 4]), "a COCO box is 4 numbers"),
    (_bad_annotation(iscrowd=2), "annotation 999 of {json} has iscrowd 2: COCO's iscrowd is 0 or 1"),
    (_bad_annotation(area="big"), "annotation 999 of {json} has the area 'big': COCO's area is a number"),
    (_bad_annotation(bbox=[0, 0, float("nan"), 2]), "has the bbox [0, 0, nan, 2]"),
    ({"annotations": ANNOTATIONS + [[1, 2]]}, "annotation #6 of {json} lacks one of the COCO keys"),
    ({"annotations": ANNOTATIONS + [{"id": 5, "image_id": [10], "category_id": 1, "bbox": [0, 0, 1, 1]}]},
     "annotation 5 of {json} has the image_id [10], which is not an image"),
    ({"annotations": [{"image_id": 10, "category_id": 1}]}, "annotation #0 of {json} lacks one of the COCO keys"),
    ({"images": IMAGES + [{"id": 10, "file_name": "d.png", "width": 5, "height": 5}]}, "duplicate image ids in"),
    ({"images": [{"id": 10, "file_name": "a.png"}]}, "image #0 of {json} lacks one of the COCO keys"),
    ({"images": [{"id": 10, "file_name": "a.png", "width": 0, "height": 3}]}, "has the size 0x3"),
    ({"categories": CATEGORIES + [{"id": 3, "name": "cow"}]}, "duplicate category ids in {json}: 3"),
    ({"categories": []}, "has no categories"),
    ({"images": [{"id": 1, "file_name": "x.png", "width": 4, "height": 4}], "annotations": []},
     "none of the 1 images listed in {json} is under {images} (first: "),
])
def test_bad_annotation_files(tmp_path, changes, message):
    images, annotations = _coco(tmp_path, **changes)
    with pytest.raises(DataError) as info:
        CocoDetection(images, annotations)
    text = str(info.value)
    assert message.format(json=annotations, images=images) in text and "\n" not in text


def test_bad_paths_and_non_coco_files(tmp_path):
    images, annotations = _coco(tmp_path)
    with pytest.raises(DataError, match="images folder .* does not exist"):
        CocoDetection(tmp_path / "missing", annotations)
    with pytest.raises(DataError, match="annotation file .* does not exist"):
        CocoDetection(images, tmp_path / "missing.json")
    annotations.write_text("{not json")
    with pytest.raises(DataError, match="is not JSON"):
        CocoDetection(images, annotations)
    annotations.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DataError, match="lacks the COCO list.s. categories"):
        CocoDetection(images, annotations)


def test_missing_and_mismatched_images_are_skipped(tmp_path):
    images, annotations = _coco(tmp_path)
    (images / "c.png").unlink()
    _write_image(images / "a.png", 10, 10)  # not the size the file gives: its boxes are for another image
    dataset = CocoDetection(images, annotations)
    samples = [dataset[i] for i in range(3)]
    assert isinstance(samples[0], UnreadableImage) and "is 10x10 pixels but" in samples[0].reason
    assert isinstance(samples[2], UnreadableImage) and "no such file" in samples[2].reason
    batch = CocoDetection.collate(samples)
    assert isinstance(batch, DetectionBatch) and [s.path for s in batch.skipped] == [dataset.samples[0][0],
                                                                                     dataset.samples[2][0]]
    images_out, targets = batch
    assert len(images_out) == len(targets) == 1 and targets[0]["image_id"] == 11
    assert CocoDetection.collate(samples[:1]) == ([], []) and len(CocoDetection.collate(samples[:1]).skipped) == 1
    with pytest.raises(DataError, match="no such file"):
        CocoDetection(images, annotations, strict=True)[2]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_reports_skipped_files(tmp_path, workers):
    images, annotations = _coco(tmp_path)
    (images / "c.png").unlink()
    dataset = CocoDetection(images, annotations, transform=create_detection_eval_transform())
    with pytest.warns(UnreadableImageWarning, match="c.png: no such file"):
        batches = list(create_loader(dataset, batch_size=2, workers=workers, device="cpu"))
    assert [len(batch[0]) for batch in batches] == [2, 0] and dataset.skipped == 1
    assert [target["image_id"] for target in batches[0][1]] == [10, 11]
    assert [image.shape for image in batches[0][0]] == [(3, 30, 40), (3, 16, 20)]  # different sizes, not stacked


def test_batch_survives_pickling(tmp_path):
    dataset = CocoDetection(*_coco(tmp_path))
    batch = CocoDetection.collate([dataset[0], UnreadableImage("x.png", "gone")])
    again = pickle.loads(pickle.dumps(batch))
    assert isinstance(again, DetectionBatch) and again.skipped == batch.skipped
    assert isinstance(again[1][0]["boxes"], tv_tensors.BoundingBoxes) and torch.equal(again[1][0]["boxes"],
                                                                                       batch[1][0]["boxes"])


def test_eval_transform_keeps_the_files_boxes(tmp_path):
    dataset = CocoDetection(*_coco(tmp_path), transform=create_detection_eval_transform())
    image, target = dataset[0]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.float32 and image.shape == (3, 30, 40)
    assert torch.equal(target["boxes"], dataset.target(0)["boxes"])  # the box past the edge not clipped
    assert target["labels"].tolist() == [1, 0, 2] and target["iscrowd"].tolist() == [0, 0, 1]


def test_train_transform_flips_boxes(tmp_path):
    dataset = _training(*_coco(tmp_path), transform=create_detection_train_transform(32, hflip=1.0))
    plain, _ = CocoDetection(*_coco(tmp_path))[0]
    image, target = dataset[0]
    assert image.dtype == torch.float32 and image.shape == (3, 30, 40) and torch.allclose(image, plain.flip(-1))
    assert target["boxes"].tolist() == [[40 - 12, 3, 40 - 2, 8], [0, 20, 10, 30]]  # x -> width - x
    assert target["labels"].tolist() == [1, 0] and target["image_id"] == 10


def test_large_scale_jitter_keeps_boxes_inside_the_square(tmp_path):
    dataset = _training(*_coco(tmp_path), transform=create_detection_train_transform(32, scale_jitter=(0.3, 2.0)))
    for _ in range(20):
        for index in range(3):
            image, target = dataset[index]
            boxes = target["boxes"]
            assert image.shape == (3, 32, 32) and tuple(boxes.canvas_size) == (32, 32)
            assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= 32).all()
            assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= 32).all()
            assert ((boxes[:, 2] - boxes[:, 0]) >= 1).all() and ((boxes[:, 3] - boxes[:, 1]) >= 1).all()
            assert len(target["labels"]) == len(target["area"]) == len(target["iscrowd"]) == len(boxes)


def test_sanitize_keeps_labels_area_and_iscrowd_aligned(tmp_path):
    # The evaluation target of b.png: a box outside the image, one of zero width, one good (dog, area 16).
    target = CocoDetection(*_coco(tmp_path)).target(1)
    image = tv_tensors.Image(torch.zeros(3, 16, 20, dtype=torch.uint8))
    _, out = create_detection_train_transform(16, hflip=0.0)(image, target)
    assert out["boxes"].tolist() == [[1.5, 1, 5.5, 5]] and out["labels"].tolist() == [1]
    assert out["area"].tolist() == [16.0] and out["iscrowd"].tolist() == [0] and out["image_id"] == 11


def test_train_transform_draws_from_torchs_generator(tmp_path):
    dataset = _training(*_coco(tmp_path), transform=create_detection_train_transform(32, scale_jitter=(0.1, 2.0)))
    torch.manual_seed(5)
    first = dataset[0]
    torch.manual_seed(5)
    again = dataset[0]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1]["boxes"], again[1]["boxes"])


@pytest.mark.parametrize("kwargs, message", [
    ({"hflip": 1.5}, "hflip is a probability in"),
    ({"hflip": -0.1}, "hflip is a probability in"),
    ({"scale_jitter": (0.0, 1.0)}, "0 < low <= high"),
    ({"scale_jitter": (2.0, 1.0)}, "0 < low <= high"),
    ({"scale_jitter": (1.0,)}, "0 < low <= high"),
])
def test_train_transform_checks_its_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        create_detection_train_transform(32, **kwargs)
    with pytest.raises(ConfigError, match="img_size must be a positive"):
        create_detection_train_transform(0)


def test_coco_ground_truth(tmp_path):
    dataset = _training(*_coco(tmp_path))
    truth = dataset.coco_ground_truth()
    assert [image["id"] for image in truth["images"]] == [10, 11, 12]
    assert [category["id"] for category in truth["categories"]] == [1, 3, 7]
    assert truth["annotations"][:5] == ANNOTATIONS[:5]  # the file's boxes, crowd included, whatever for_training
    assert truth["annotations"][5] == ANNOTATIONS[5] | {"id": 106, "area": 16.0, "iscrowd": 0}
    only = dataset.coco_ground_truth([11])
    assert [image["id"] for image in only["images"]] == [11]
    assert [annotation["id"] for annotation in only["annotations"]] == [104, 105, 106]
    with pytest.raises(DataError, match="image id 99 is not an image of"):
        dataset.coco_ground_truth([99])


def test_coco_ground_truth_builds_a_coco_object(tmp_path):
    coco = pytest.importorskip("pycocotools.coco")
    no_ids = [{key: value for key, value in annotation.items() if key != "id"} for annotation in ANNOTATIONS]
    dataset = CocoDetection(*_coco(tmp_path, annotations=no_ids))
    ground_truth = coco.COCO()
    ground_truth.dataset = dataset.coco_ground_truth()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ground_truth.createIndex()
    assert sorted(ground_truth.anns) == [1, 2, 3, 4, 5, 6] and ground_truth.getImgIds() == [10, 11, 12]


def test_pinned_batch_keeps_its_type_and_boxes(tmp_path, monkeypatch):
    # Pinning needs an accelerator: a stand-in that returns a plain tensor, as pinning a tv_tensor does.
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *args: self.as_subclass(torch.Tensor).clone())
    dataset = CocoDetection(*_coco(tmp_path))
    batch = CocoDetection.collate([dataset[0], UnreadableImage("x.png", "gone")])
    pinned = torch.utils.data._utils.pin_memory.pin_memory(batch)
    assert isinstance(pinned, DetectionBatch) and pinned.skipped == batch.skipped
    boxes = pinned[1][0]["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes) and tuple(boxes.canvas_size) == (30, 40)
    assert torch.equal(boxes, batch[1][0]["boxes"]) and pinned[1][0]["image_id"] == 10
