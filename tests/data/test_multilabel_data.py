"""tresnet.data.multilabel and class_names: COCO instances files, labels CSVs, unreadable files, COCO names."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from tresnet.data import (
    MultiLabelDataset,
    UnreadableImageWarning,
    class_labels,
    coco_class_names,
    create_loader,
    open_multilabel,
    read_coco,
    read_csv,
)
from tresnet.errors import ConfigError, DataError
from tresnet.tasks import get_task

RNG = np.random.default_rng(0)

# Category ids out of order in the file: the FILE's order gives the class index (dog 0, cat 1, emu 2).
CATEGORIES = [{"id": 18, "name": "dog"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "emu"}]
IMAGES = [{"id": 10, "file_name": "a.png"}, {"id": 11, "file_name": "b.png"},
          {"id": 12, "file_name": "c.png"}, {"id": 13, "file_name": "sub/d.png"}]
ANNOTATIONS = [{"image_id": 10, "category_id": 3}, {"image_id": 10, "category_id": 3},
               {"image_id": 10, "category_id": 7}, {"image_id": 11, "category_id": 18},
               {"image_id": 13, "category_id": 18}, {"image_id": 13, "category_id": 7}]  # 12: no annotation


def _write_image(path, size=(20, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, "PNG")


def _to_tensor(img):
    return torch.from_numpy(np.array(img.resize((8, 8)))).permute(2, 0, 1).float() / 255


def _coco(tmp_path, **changes):
    images = tmp_path / "val2014"
    for image in IMAGES:
        _write_image(images / image["file_name"])
    content = {"images": IMAGES, "annotations": ANNOTATIONS, "categories": CATEGORIES} | changes
    annotations = tmp_path / "instances_val.json"
    annotations.write_text(json.dumps(content))
    return images, annotations


def test_coco_classes_in_file_order_and_multi_hot_targets(tmp_path):
    images, annotations = _coco(tmp_path)
    dataset = read_coco(images, annotations, transform=_to_tensor)
    assert dataset.classes == ["dog", "cat", "emu"] and dataset.class_to_idx == {"dog": 0, "cat": 1, "emu": 2}
    assert dataset.samples == [(str(images / "a.png"), (1, 2)), (str(images / "b.png"), (0,)),
                               (str(images / "sub" / "d.png"), (0, 2))]  # c.png (no annotation) skipped
    assert torch.equal(dataset.targets, torch.tensor([[0, 1, 1], [1, 0, 0], [1, 0, 1]], dtype=torch.float32))
    assert dataset.num_classes == 3 and len(dataset) == 3
    assert dataset.root == images.absolute() and dataset.source == annotations.absolute()
    image, target = dataset[0]
    assert image.shape == (3, 8, 8) and target.dtype == torch.float32 and target.tolist() == [0, 1, 1]


def test_coco_images_without_labels_as_negatives(tmp_path):
    dataset = read_coco(*_coco(tmp_path), without_labels="negative")
    assert [path.rsplit("/", 1)[-1] for path, _ in dataset.samples] == ["a.png", "b.png", "c.png", "d.png"]
    assert dataset.targets[2].tolist() == [0, 0, 0]
    with pytest.raises(ConfigError, match="unknown without_labels 'drop'"):
        read_coco(*_coco(tmp_path), without_labels="drop")


def _bad_json(tmp_path, images, annotations):
    annotations.write_text("{not json")


@pytest.mark.parametrize("changes, message", [
    ({"annotations": ANNOTATIONS + [{"image_id": 99, "category_id": 3}] * 2},
     "2 annotation(s) in {json} name an unknown image_id (first: 99)"),
    ({"annotations": ANNOTATIONS + [{"image_id": 10, "category_id": 5}]},
     "1 annotation(s) in {json} name an unknown category_id (first: 5)"),
    ({"categories": CATEGORIES + [{"id": 3, "name": "cow"}]}, "duplicate category ids in {json}: 3"),
    ({"categories": CATEGORIES + [{"id": 4, "name": "cat"}]}, "duplicate class names in {json}: cat"),
    ({"categories": [{"name": "dog"}]}, "without the COCO key 'id'"),
    ({"images": [{"id": 10, "file_name": "x.png"}, {"id": 11, "file_name": "y.png"}],
      "annotations": ANNOTATIONS[:4]}, "none of the 2 images listed in {json} is under {images} (first: "),
])
def test_bad_coco_files(tmp_path, changes, message):
    images, annotations = _coco(tmp_path, **changes)
    with pytest.raises(DataError) as info:
        read_coco(images, annotations)
    text = str(info.value)
    assert message.format(json=annotations, images=images) in text and "\n" not in text


def test_bad_coco_paths(tmp_path):
    images, annotations = _coco(tmp_path)
    with pytest.raises(DataError, match="images folder .* does not exist"):
        read_coco(tmp_path / "missing", annotations)
    with pytest.raises(DataError, match="annotation file .* does not exist"):
        read_coco(images, tmp_path / "missing.json")
    annotations.write_text("{not json")
    with pytest.raises(DataError, match="is not JSON"):
        read_coco(images, annotations)
    annotations.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DataError, match="lacks the COCO list.s. categories"):
        read_coco(images, annotations)
    annotations.write_text("[1, 2]")
    with pytest.raises(DataError, match="lacks the COCO list.s. images, annotations, categories"):
        read_coco(images, annotations)


def _csv(tmp_path, text):
    for name in ("a.png", "b.png", "sub/c d.png"):
        _write_image(tmp_path / "data" / name)
    path = tmp_path / "data" / "labels.csv"
    path.write_text(text)
    return path


CSV_TEXT = 'file,labels\na.png,cat dog\nb.png,\n"sub/c d.png","emu  cat"\n'


def test_csv_relative_paths_sorted_classes_and_empty_labels(tmp_path):
    path = _csv(tmp_path, CSV_TEXT)
    dataset = read_csv(path)
    folder = path.parent.absolute()
    assert dataset.classes == ["cat", "dog", "emu"] and dataset.root == folder and dataset.source == path
    assert dataset.samples == [(str(folder / "a.png"), (0, 1)), (str(folder / "b.png"), ()),
                               (str(folder / "sub" / "c d.png"), (0, 2))]
    absolute = _csv(tmp_path, f"file,labels\n{folder / 'a.png'},dog\n")
    assert read_csv(absolute).samples == [(str(folder / "a.png"), (0,))]


def test_csv_class_list_as_sequence_or_file(tmp_path):
    path = _csv(tmp_path, CSV_TEXT)
    given = read_csv(path, classes=["emu", "dog", "cat", "yak"])
    assert given.classes == ["emu", "dog", "cat", "yak"] and given.samples[0][1] == (1, 2)
    assert given.targets.shape == (3, 4)
    class_file = tmp_path / "classes.txt"
    class_file.write_text("emu\ndog\n\ncat\n")
    assert read_csv(path, classes=class_file).classes == ["emu", "dog", "cat"]
    assert read_csv(path, classes=str(class_file)).classes == ["emu", "dog", "cat"]


@pytest.mark.parametrize("text, kwargs, message", [
    (CSV_TEXT, {"classes": ["cat", "dog"]}, "line 4: label 'emu' is not one of the 2 classes"),
    (CSV_TEXT, {"classes": ["cat", "dog", "emu", "dog"]}, "duplicate class names in {csv}: dog"),
    ("path,labels\na.png,cat\n", {}, "has the header 'path,labels': the first line must be 'file,labels'"),
    ("", {}, "CSV {csv} is empty"),
    ("file,labels\n", {}, "CSV {csv} has no rows"),
    ("file,labels\na.png,cat,dog\n", {}, "line 2: expected 2 fields"),
    ("file,labels\na.png,\n", {}, "names no class"),
    ("file,labels\nx.png,cat\n", {}, "none of the 1 images listed in {csv}"),
])
def test_bad_csv(tmp_path, text, kwargs, message):
    path = _csv(tmp_path, text)
    with pytest.raises(DataError) as info:
        read_csv(path, **kwargs)
    assert message.format(csv=path.absolute()) in str(info.value) and "\n" not in str(info.value)


def test_bad_csv_paths(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_csv(tmp_path / "missing.csv")
    path = _csv(tmp_path, CSV_TEXT)
    with pytest.raises(DataError, match="class list .* does not exist"):
        read_csv(path, classes=tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(DataError, match="class list .* is empty"):
        read_csv(path, classes=tmp_path / "empty.txt")


def test_open_multilabel_dispatch(tmp_path):
    images, annotations = _coco(tmp_path)
    assert open_multilabel(images, annotations=annotations).classes == ["dog", "cat", "emu"]
    assert len(open_multilabel(images, annotations=annotations, without_labels="negative")) == 4
    path = _csv(tmp_path, CSV_TEXT)
    assert open_multilabel(path, classes=["cat", "dog", "emu"]).classes == ["cat", "dog", "emu"]
    with pytest.raises(DataError, match="pass --annotations FILE .* or a labels.csv"):
        open_multilabel(images)
    with pytest.raises(DataError, match=r"is an annotation file: pass the images folder as the data and --annot"):
        open_multilabel(annotations)
    checked = open_multilabel(images, annotations=annotations, classes=["dog", "cat", "emu"])
    assert checked.classes == ["dog", "cat", "emu"]
    with pytest.raises(DataError, match=r"the 3 categories of .* differ from the 3 expected classes \(first: "):
        open_multilabel(images, annotations=annotations, classes=["cat", "dog", "emu"])


def _with_broken_files(tmp_path):
    path = _csv(tmp_path, CSV_TEXT + "missing.png,dog\nbroken.png,emu\n")
    (path.parent / "broken.png").write_text("not an image")
    return path, {str(path.parent.absolute() / name) for name in ("missing.png", "broken.png")}


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_and_missing_files_are_skipped_warned_once_and_counted(tmp_path, workers):
    path, broken = _with_broken_files(tmp_path)
    dataset = read_csv(path, transform=_to_tensor)
    loader = create_loader(dataset, batch_size=2, workers=workers, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(loader)
        again = sum(len(targets) for _, targets in loader)
    images = torch.cat([batch[0] for batch in batches if len(batch[0])])
    targets = torch.cat([batch[1] for batch in batches if len(batch[1])])
    assert images.shape == (3, 3, 8, 8) and again == 3
    assert torch.equal(targets, dataset.targets[:3]) and targets.dtype == torch.float32
    assert dataset.skipped == 2 and dataset.skipped_files == broken
    messages = [str(w.message) for w in caught if issubclass(w.category, UnreadableImageWarning)]
    assert len(messages) == 2 and all(m.endswith("; skipped") for m in messages)


def test_batch_of_only_unreadable_files_is_empty_and_strict_is_an_error(tmp_path):
    path, _ = _with_broken_files(tmp_path)
    with pytest.warns(UnreadableImageWarning):
        batches = list(create_loader(read_csv(path, transform=_to_tensor), batch_size=3, workers=0, device="cpu"))
    assert batches[-1][0].shape == (0,) and batches[-1][1].shape == (0, 0) and len(batches[-1].skipped) == 2
    strict = read_csv(path, transform=_to_tensor, strict=True)
    with pytest.raises(DataError) as info:
        list(create_loader(strict, batch_size=2, workers=0, device="cpu"))
    assert "missing.png" in str(info.value) and "strict" in str(info.value) and "\n" not in str(info.value)


def test_dataset_checks_its_class_indices(tmp_path):
    with pytest.raises(DataError, match="class index 3 outside the 2 classes"):
        MultiLabelDataset([("x.png", (3,))], ["a", "b"], root=tmp_path, source=tmp_path / "x.csv")


def test_coco_class_names_and_labels():
    names = coco_class_names()
    assert len(names) == 80 and names[:3] == ("person", "bicycle", "car") and names[-1] == "toothbrush"
    assert "N/A" not in names and "__background__" not in names
    multilabel, multiclass = get_task("multilabel"), get_task("multiclass")
    assert multilabel.default_labels(80) == (list(names), None)
    assert class_labels(80, defaults=multilabel.default_labels(80)[0]) == list(names)
    assert multiclass.default_labels(80) == (None, None)  # single-label: no guess
    assert class_labels(80, defaults=multiclass.default_labels(80)[0]) == [str(i) for i in range(80)]
    assert class_labels(3, ["a", "b", "c"], defaults=multilabel.default_labels(3)[0]) == ["a", "b", "c"]
    ml_names, ml_synsets = multilabel.default_labels(1000)
    assert ml_names == multiclass.default_labels(1000)[0] and ml_names[0] == "tench" and ml_synsets is None
    with pytest.raises(ConfigError, match="unknown task"):
        get_task("segmentation")
