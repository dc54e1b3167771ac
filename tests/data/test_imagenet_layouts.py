"""ImageNet's own files and layouts: the shipped synset lists (class-index and devkit order), validation image
numbers, both ground-truth formats, ReaL labels, class-map files, the rules that map class folders to a model's
outputs, and the datasets built on them (mapped folders, a flat folder with a ground truth, ReaL targets)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from tresnet.data.class_mapping import RULES, ClassMapping, read_class_map, resolve_class_mapping
from tresnet.data.class_names import imagenet_class_names
from tresnet.data.datasets import GroundTruthDataset, ImageFolderDataset, RealLabelled
from tresnet.data.imagenet import (
    devkit_synsets,
    imagenet_synset_index,
    imagenet_synsets,
    is_synset,
    read_ground_truth,
    read_real_labels,
    val_image_number,
)
from tresnet.errors import DataError

SEA_SNAKE = "n01751748"  # devkit ILSVRC2012_ID 490, ImageNet class index 65
TENCH = "n01440764"  # class index 0


def _image(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (10, 20, 30)).save(path, format="PNG")


def _val(number: int) -> str:
    return f"ILSVRC2012_val_{number:08d}"


# the shipped synset lists


def test_imagenet_synsets_are_the_1000_sorted_ids():
    synsets = imagenet_synsets()
    assert len(synsets) == 1000 and len(set(synsets)) == 1000
    assert list(synsets) == sorted(synsets) and synsets[0] == TENCH
    assert all(is_synset(s) for s in synsets)
    assert imagenet_synset_index() == {s: i for i, s in enumerate(synsets)}
    assert imagenet_class_names()[0] == "tench"


def test_devkit_order_is_a_permutation_whose_id_490_is_the_sea_snake():
    devkit = devkit_synsets()
    assert len(devkit) == 1000 and set(devkit) == set(imagenet_synsets())
    assert list(devkit) != list(imagenet_synsets())  # another order: the reason a devkit file needs this list
    assert devkit[490 - 1] == SEA_SNAKE
    assert imagenet_synset_index()[SEA_SNAKE] == 65 and imagenet_class_names()[65] == "sea snake"


@pytest.mark.parametrize("name, expected", [
    (TENCH, True), (SEA_SNAKE, True), ("n99999999", True),  # a synset id, ImageNet-1k's or not
    ("n0144076", False), ("n014407640", False), ("N01440764", False), ("x01440764", False),
    (" n01440764", False), ("n01440764.tar", False), ("", False), ("0", False),
])
def test_is_synset(name, expected):
    assert is_synset(name) is expected


@pytest.mark.parametrize("path, expected", [
    ("ILSVRC2012_val_00000042.JPEG", 42),
    ("ILSVRC2012_val_00050000.JPEG", 50000),
    ("/data/imagenet/val/n01751748/ILSVRC2012_val_00000001.png", 1),
    ("ILSVRC2012_val_00000007", 7),
    ("ILSVRC2012_val_42.JPEG", None),  # eight digits
    ("ILSVRC2012_val_000000420.JPEG", None),
    ("ILSVRC2012_test_00000042.JPEG", None),
    ("my_ILSVRC2012_val_00000042.JPEG", None),
    ("cat.png", None),
])
def test_val_image_number(path, expected):
    assert val_image_number(path) == expected


# ground truth


def test_read_ground_truth_from_loc_val_solution_csv(tmp_path):
    path = tmp_path / "LOC_val_solution.csv"
    path.write_text("ImageId,PredictionString\n"
                    f"{_val(3)},{TENCH} 1 2 3 4 \n"
                    f"{_val(1)},{SEA_SNAKE} 10 20 130 200 {SEA_SNAKE} 1 2 60 70\n"
                    "\n"
                    f" {_val(50000)} ,n15075141 0 0 1 1\n")
    assert read_ground_truth(path) == {1: SEA_SNAKE, 3: TENCH, 50000: "n15075141"}


def test_read_ground_truth_from_the_devkit_txt(tmp_path):
    path = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    path.write_text("490\n1\n 1000 \n")
    devkit = devkit_synsets()
    assert read_ground_truth(path) == {1: SEA_SNAKE, 2: devkit[0], 3: devkit[999]}


def test_a_byte_order_mark_and_blank_lines_at_the_end_are_no_error(tmp_path):
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text(f"ImageId,PredictionString\n{_val(1)},{SEA_SNAKE} 1 2 3 4\n", encoding="utf-8-sig")
    txt = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    txt.write_text("\ufeff490\n\n\n", encoding="utf-8")
    assert read_ground_truth(csv) == read_ground_truth(txt) == {1: SEA_SNAKE}


def test_both_ground_truth_formats_read_the_same_truth(tmp_path):
    truth = [imagenet_synsets()[i] for i in (65, 0, 999, 500, 65, 1)]
    txt = tmp_path / "gt.txt"
    txt.write_text("".join(f"{devkit_synsets().index(s) + 1}\n" for s in truth))
    csv = tmp_path / "gt.csv"
    csv.write_text("ImageId,PredictionString\n" + "".join(f"{_val(n)},{s} 1 2 3 4\n"
                                                          for n, s in enumerate(truth, 1)))
    assert read_ground_truth(txt) == read_ground_truth(csv) == dict(enumerate(truth, 1))


@pytest.mark.parametrize("name, text, message", [
    ("gt.csv", "ImageId,Label\nILSVRC2012_val_00000001,n01751748\n", "must start with the header ImageId,"),
    ("gt.csv", "ImageId,PredictionString\nILSVRC2012_val_00000001,n01751748 1\nILSVRC2012_val_2,n01751748 1\n",
     "line 3: expected ILSVRC2012_val_NNNNNNNN,<synset>"),
    ("gt.csv", "ImageId,PredictionString\nILSVRC2012_val_00000001,sea_snake 1 2 3 4\n", "line 2: expected"),
    ("gt.csv", "ImageId,PredictionString\nILSVRC2012_val_00000001\n", "line 2: expected"),
    ("gt.csv", "ImageId,PredictionString\n", "is empty"),
    ("gt.txt", "490\n0\n", "line 2: expected an ILSVRC2012_ID between 1 and 1000"),
    ("gt.txt", "490\n1\n1001\n", "line 3: expected an ILSVRC2012_ID between 1 and 1000"),
    ("gt.txt", "490\n\n1\n", "line 2: expected an ILSVRC2012_ID"),
    ("gt.txt", "n01751748\n", "line 1: expected an ILSVRC2012_ID"),
    ("gt.txt", "-5\n", "line 1: expected an ILSVRC2012_ID"),
    ("gt.txt", "", "is empty"),
])
def test_read_ground_truth_errors_name_the_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError) as caught:
        read_ground_truth(path)
    assert message in str(caught.value) and str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_read_ground_truth_missing_or_binary(tmp_path):
    with pytest.raises(DataError, match="does not exist: pass LOC_val_solution.csv"):
        read_ground_truth(tmp_path / "nope.csv")
    binary = tmp_path / "gt.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(DataError, match="is not text"):
        read_ground_truth(binary)


# ReaL labels


def test_read_real_labels(tmp_path):
    path = tmp_path / "real.json"
    path.write_text(json.dumps([[65], [], [0, 999, 3]]))
    assert read_real_labels(path) == [[65], [], [0, 999, 3]]


@pytest.mark.parametrize("content", [
    {"1": [65]}, [], [65, 3], [[65], 3], [[1000]], [[-1]], [["n01751748"]], [[1.0]], "[[65]]", [[True, False]],
])
def test_read_real_labels_rejects_what_is_not_a_list_of_index_lists(tmp_path, content):
    path = tmp_path / "real.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=r"must be a JSON list with one list of class indices \(0-999\)"):
        read_real_labels(path)


def test_read_real_labels_missing_or_not_json(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_real_labels(tmp_path / "real.json")
    path = tmp_path / "real.json"
    path.write_text("[[65], [")
    with pytest.raises(DataError, match="is not JSON"):
        read_real_labels(path)


# class-map files


def test_read_class_map_plain_names_in_model_order(tmp_path):
    path = tmp_path / "map.txt"
    path.write_text("  plum \n\napple\npear\n")
    assert read_class_map(path, 3) == {"plum": 0, "apple": 1, "pear": 2}


def test_read_class_map_name_index_lines(tmp_path):
    path = tmp_path / "map.csv"
    path.write_text("apple, 7\n\nmy, odd name,3\n plum ,0\n")
    assert read_class_map(path, 10) == {"apple": 7, "my, odd name": 3, "plum": 0}


@pytest.mark.parametrize("text, num_classes, message", [
    ("apple\npear,1\n", 10, "mixes plain names and name,index lines: use one form"),
    ("apple,0\n\npear,10\n", 10, "line 3: index '10' is not a class index of the model (0..9)"),
    ("apple,-1\n", 10, "line 1: index '-1' is not a class index"),
    ("apple,one\n", 10, "line 1: index 'one' is not a class index"),
    ("apple,\n", 10, "line 1: index '' is not a class index"),
    ("a\nb\nc\n", 2, "line 3: index '2' is not a class index of the model (0..1)"),  # more names than outputs
    ("apple,0\npear,1\napple,2\n", 10, "line 3: 'apple' is listed twice"),
    ("apple\napple\n", 10, "line 2: 'apple' is listed twice"),
    ("\n  \n", 10, "is empty"),
])
def test_read_class_map_errors(tmp_path, text, num_classes, message):
    path = tmp_path / "map.txt"
    path.write_text(text)
    with pytest.raises(DataError) as caught:
        read_class_map(path, num_classes)
    assert message in str(caught.value) and str(path) in str(caught.value)


def test_read_class_map_missing_file_says_what_to_pass(tmp_path):
    with pytest.raises(DataError, match="does not exist: pass --class-map FILE"):
        read_class_map(tmp_path / "nope.txt", 10)


# the mapping rules


def test_imagenet_synsets_map_to_their_index_however_many():
    mapping = resolve_class_mapping([SEA_SNAKE, TENCH, imagenet_synsets()[999]], 1000)
    assert mapping.rule == "imagenet-synsets" and mapping.indices == {SEA_SNAKE: 65, TENCH: 0,
                                                                       imagenet_synsets()[999]: 999}
    assert mapping.covered == (0, 65, 999) and mapping.masked and mapping.num_classes == 1000
    assert mapping.to_dict() == dict(rule="imagenet-synsets", source=None, classes=3, model_classes=1000,
                                     masked=True, indices={SEA_SNAKE: 65, TENCH: 0, imagenet_synsets()[999]: 999})
    assert mapping.describe() == ("3 classes mapped by ImageNet-1k synsets (class index = the synset's ImageNet "
                                  "index); prediction over these 3 of the model's 1000 classes only (other logits "
                                  "masked, the ImageNet-A/R protocol)")
    everything = resolve_class_mapping(reversed(imagenet_synsets()), 1000)
    assert not everything.masked and everything.covered == tuple(range(1000))
    assert everything.describe() == ("1000 classes mapped by ImageNet-1k synsets (class index = the synset's "
                                     "ImageNet index)")


def test_synsets_with_an_imagenet_checkpoints_names_are_still_synsets():
    names = [SEA_SNAKE, TENCH]
    for checkpoint_names in (imagenet_class_names(), imagenet_synsets(), None, []):
        mapping = resolve_class_mapping(names, 1000, checkpoint_names=checkpoint_names)
        assert mapping.rule in ("imagenet-synsets", "checkpoint-names")
        assert mapping.indices == {SEA_SNAKE: 65, TENCH: 0}
    assert resolve_class_mapping(names, 1000, checkpoint_names=imagenet_class_names()).rule == "imagenet-synsets"


def test_integer_names_are_class_indices_not_sorted_strings():
    names = ["0", "10", "100", "2", "999"]  # what sorted() gives
    mapping = resolve_class_mapping(names, 1000)
    assert mapping.rule == "integers" and mapping.indices == {"0": 0, "10": 10, "100": 100, "2": 2, "999": 999}
    assert mapping.masked and mapping.covered == (0, 2, 10, 100, 999)
    full = resolve_class_mapping([str(i) for i in range(10)], 10)
    assert full.rule == "integers" and not full.masked
    assert resolve_class_mapping(["0", "1", "10"], 11).describe().startswith(
        "3 classes mapped by class-index names (folder 7 = class 7); prediction over these 3 of the model's 11")


def test_sorted_names_when_as_many_as_the_model_has():
    mapping = resolve_class_mapping(["pear", "apple", "plum"], 3)
    assert mapping.rule == "sorted-names" and mapping.indices == {"apple": 0, "pear": 1, "plum": 2}
    assert not mapping.masked and mapping.describe() == "3 classes mapped by sorted names (as torchvision's ImageFolder)"
    # the checkpoint's names in that order: still the sorted rule, agreeing with them
    same = resolve_class_mapping(["pear", "apple", "plum"], 3, checkpoint_names=["apple", "pear", "plum"])
    assert same.indices == mapping.indices
    # non-ASCII digits are not class indices
    assert resolve_class_mapping(["١", "٢"], 2).rule == "sorted-names"


def test_checkpoint_names_give_a_subset_its_indices():
    names = ["ant", "bee", "cat", "cow", "dog"]
    mapping = resolve_class_mapping(["cat", "ant"], 5, checkpoint_names=names)
    assert mapping.rule == "checkpoint-names" and mapping.indices == {"cat": 2, "ant": 0}
    assert mapping.masked and mapping.covered == (0, 2)
    assert mapping.describe().startswith("2 classes mapped by the class names the checkpoint records; prediction "
                                         "over these 2 of the model's 5 classes only")
    # checkpoint names in an unsorted order: theirs, not the sorted positions
    mapping = resolve_class_mapping(["ant", "bee", "cat"], 3, checkpoint_names=["cat", "ant", "bee"])
    assert mapping.rule == "checkpoint-names" and mapping.indices == {"cat": 0, "ant": 1, "bee": 2}
    assert not mapping.masked


def test_precedence_class_map_then_checkpoint_names_then_synsets_and_integers(tmp_path):
    # checkpoint names before integers: a checkpoint trained on folders '2', '1', '0' in that order
    mapping = resolve_class_mapping(["0", "2"], 3, checkpoint_names=["2", "1", "0"])
    assert mapping.rule == "checkpoint-names" and mapping.indices == {"0": 2, "2": 0}
    # without them (or names that do not cover the data) the integers rule
    assert resolve_class_mapping(["0", "2"], 3).indices == {"0": 0, "2": 2}
    assert resolve_class_mapping(["0", "2"], 3, checkpoint_names=["2", "1", "x"]).rule == "integers"
    # checkpoint names before synsets: a 3-class model trained on three synset folders
    trained = [SEA_SNAKE, TENCH, "n01443537"]
    mapping = resolve_class_mapping([TENCH], 3, checkpoint_names=trained)
    assert mapping.rule == "checkpoint-names" and mapping.indices == {TENCH: 1}
    # the class map before everything
    path = tmp_path / "map.txt"
    path.write_text("0,1\n2,0\n")
    mapping = resolve_class_mapping(["0", "2"], 3, checkpoint_names=["2", "1", "0"],
                                    class_map=read_class_map(path, 3), class_map_source=str(path))
    assert mapping.rule == "class-map" and mapping.indices == {"0": 1, "2": 0} and mapping.source == str(path)
    assert mapping.describe().startswith(f"2 classes mapped by the class map {path}; prediction over these 2")
    assert mapping.to_dict()["source"] == str(path)
    assert RULES == ("class-map", "checkpoint-names", "imagenet-synsets", "integers", "sorted-names")


def test_a_class_map_covers_only_what_it_is_asked_about():
    mapping = resolve_class_mapping(["apple"], 10, class_map={"apple": 3, "pear": 4}, class_map_source="m.txt")
    assert mapping.indices == {"apple": 3} and mapping.covered == (3,)
    with pytest.raises(DataError, match=r"2 classes of folder v are not in the class map m.txt: 'fig', 'kiwi'"):
        resolve_class_mapping(["apple", "fig", "kiwi"], 10, class_map={"apple": 3}, class_map_source="m.txt",
                              data="folder v")


@pytest.mark.parametrize("names, num_classes, checkpoint_names, message", [
    (["n99999999", TENCH], 1000, None, "1 synset classes of folder v are not ImageNet-1k synsets ('n99999999')"),
    ([TENCH, SEA_SNAKE], 10, None, "folder v has 2 synset classes, which name ImageNet-1k classes, but the model "
                                   "has 10 outputs"),
    ([TENCH, "cat"], 1000, None, "folder v mixes 1 synset classes ('n01440764') with 1 other names ('cat')"),
    (["ant", "bee", "cat"], 1000, None, "folder v has 3 classes but the model has 1000"),
    (["5", "1000"], 1000, None, "class-index names past the model's 1000 classes ('1000'; valid: 0..999)"),
    (["7", "07"], 1000, None, "class-index names that mean the same index"),
    (["ant", "bee", "cat"], 3, ["ant", "bee", "cow"],
     "the classes of folder v are not the checkpoint's classes: index 2 is 'cat' in the data, 'cow' in the "
     "checkpoint"),
    # synset folders and a 1000-class checkpoint trained on other names: not read as ImageNet's outputs
    ([TENCH, SEA_SNAKE], 1000, [str(i) for i in range(1000)], "folder v has synset classes but the checkpoint records 1000 other"),
    ([], 10, None, "folder v has 0 classes"),
])
def test_what_no_rule_fits_is_a_one_line_error(names, num_classes, checkpoint_names, message):
    with pytest.raises(DataError) as caught:
        resolve_class_mapping(names, num_classes, checkpoint_names=checkpoint_names, data="folder v")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_class_mapping_is_frozen_and_covered_is_derived():
    mapping = ClassMapping("integers", {"3": 3, "03x": 3, "1": 1}, 4)
    assert mapping.covered == (1, 3) and mapping.masked  # two names, one output: covered once
    with pytest.raises(AttributeError):
        mapping.rule = "sorted-names"


# datasets


def test_map_classes_gives_each_sample_its_model_index(tmp_path):
    for name, files in (("0", ["a.png"]), ("10", ["b.png", "c.png"]), ("2", []), ("999", ["d.png"])):
        (tmp_path / name).mkdir()
        for file in files:
            _image(tmp_path / name / file)
    dataset = ImageFolderDataset(tmp_path)
    assert dataset.classes == ["0", "10", "2", "999"]  # the empty folder is kept
    assert dataset.targets == [0, 1, 1, 3]
    mapping = resolve_class_mapping(dataset.classes, 1000)
    dataset.map_classes(mapping.indices)
    assert dataset.targets == [0, 10, 10, 999] and [t for _, t in dataset.samples] == [0, 10, 10, 999]
    assert dataset.class_to_idx == {"0": 0, "10": 10, "2": 2, "999": 999}
    assert dataset.sample_classes == ["0", "10", "10", "999"]
    assert dataset[1][1] == 10


def test_ground_truth_dataset_labels_a_flat_folder_by_the_image_numbers(tmp_path):
    truth = {1: SEA_SNAKE, 2: TENCH, 3: SEA_SNAKE, 4: "n01443537"}
    gt = tmp_path / "gt.csv"
    gt.write_text("ImageId,PredictionString\n" + "".join(f"{_val(n)},{s} 1 2 3 4\n" for n, s in truth.items()))
    root = tmp_path / "flat"
    for number in (3, 1, 2):
        _image(root / f"{_val(number)}.png")
    _image(root / "more" / f"{_val(4)}.png")  # sub-folders are read too
    (root / "notes.txt").write_text("not an image")
    dataset = GroundTruthDataset(root, gt)
    assert dataset.classes == sorted({TENCH, SEA_SNAKE, "n01443537"})
    assert dataset.ground_truth == gt
    labelled = {val_image_number(path): dataset.classes[target] for path, target in dataset.samples}
    assert labelled == truth
    mapping = resolve_class_mapping(dataset.classes, 1000, data=f"ground truth {gt}")
    dataset.map_classes(mapping.indices)
    assert {val_image_number(path): target for path, target in dataset.samples} == {1: 65, 2: 0, 3: 65, 4: 1}


def test_ground_truth_dataset_errors(tmp_path):
    gt = tmp_path / "gt.txt"
    gt.write_text("490\n490\n")
    root = tmp_path / "flat"
    for name in (f"{_val(1)}.png", f"{_val(3)}.png", "zebra.png"):
        _image(root / name)
    with pytest.raises(DataError) as caught:
        GroundTruthDataset(root, gt)
    message = str(caught.value)
    assert f"2 of the 3 images in {root} have no line in {gt}" in message
    assert f"(e.g. {_val(3)}.png)" in message
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match="has no image files"):
        GroundTruthDataset(empty, gt)
    with pytest.raises(DataError, match="does not exist"):
        GroundTruthDataset(root, tmp_path / "missing.txt")


def test_real_labelled_rows_are_label_then_real_labels_padded(tmp_path):
    for number, synset in ((1, SEA_SNAKE), (2, TENCH), (3, TENCH)):
        _image(tmp_path / synset / f"{_val(number)}.png")
    dataset = ImageFolderDataset(tmp_path)
    dataset.map_classes(resolve_class_mapping(dataset.classes, 1000).indices)
    real = RealLabelled(dataset, [[65, 3, 7], [], [0]])
    assert len(real) == 3 and real.real_images == 2
    by_number = {val_image_number(path): real.rows[i].tolist() for i, (path, _) in enumerate(dataset.samples)}
    assert by_number == {1: [65, 65, 3, 7], 2: [0, -1, -1, -1], 3: [0, 0, -1, -1]}
    image, row = real[0]
    assert isinstance(image, Image.Image) and torch.equal(row, real.rows[0])
    # no ReaL label at all: one column of padding
    assert RealLabelled(dataset, [[], [], []]).rows.tolist() == [[0, -1], [0, -1], [65, -1]]  # tench folder first
    with pytest.raises(DataError, match=f"{_val(3)}.png is not an ImageNet validation image that real.json covers "
                                        r"\(ILSVRC2012_val_00000001 to _00000002\)"):
        RealLabelled(dataset, [[1], [2]], source="real.json")
    _image(tmp_path / TENCH / "tench.png")
    with pytest.raises(DataError, match="tench.png is not an ImageNet validation image"):
        RealLabelled(ImageFolderDataset(tmp_path), [[1]] * 3)
