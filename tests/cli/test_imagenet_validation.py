"""`tresnet validate` and `tresnet predict` on ImageNet's layouts: synset folders (all of them or a subset such as
ImageNet-A/R's 200, scored over those classes only), class-index folders (ImageNetV2), the flat val folder with
LOC_val_solution.csv or the devkit's ground truth, ReaL labels, class maps and a checkpoint's class names.

A stand-in model answers chosen logits for the code read from the red channel of a uniform image, so every
accuracy below is worked out by hand: its other logits fall slowly with the index (-10 - i/1000), so among
them the lowest indices come first and no two tie.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from torch import nn

from helpers import StandInClassifier
from tresnet.cli import _common
from tresnet.cli.main import main
from tresnet.data.imagenet import devkit_synsets, imagenet_synset_index, imagenet_synsets
from tresnet.data.sources import ValidationOptions
from tresnet.data.transforms import Preprocessing
from tresnet.inference.evaluate import Scoring, evaluate
from tresnet.inference.validate import validate
from tresnet.tasks import get_task

SMALL = ["--img-size", "64", "--device", "cpu", "--workers", "0", "--batch-size", "4"]
SEA_SNAKE = "n01751748"  # devkit ILSVRC2012_ID 490, ImageNet class index 65


class CodeModel(StandInClassifier):
    """A ``num_classes`` classifier that answers ``answers[code]`` (``{class index: logit}``) for the uniform
    image whose red value is ``code``; the logits it does not name are -10 - index / 1000."""

    def __init__(self, answers: dict[int, dict[int, float]], num_classes: int = 1000,
                 class_names: list[str] | None = None):
        super().__init__(num_classes, class_names)
        self.answers = answers

    def logits(self, codes: list[int]) -> torch.Tensor:
        rows = []
        for code in codes:
            row = -10.0 - torch.arange(self.num_classes, dtype=torch.float32) / 1000
            for index, logit in self.answers[code].items():
                row[index] = logit
            rows.append(row)
        return torch.stack(rows)


@pytest.fixture
def stand_in(monkeypatch):
    """Make the commands load ``CodeModel(answers, **options)`` instead of a network."""
    def use(answers, **options):
        monkeypatch.setattr(_common, "load_model", lambda args, command: CodeModel(answers, **options))
    return use


def _image(path, code: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12), (code, 0, 0)).save(path, format="PNG")  # lossless: the code survives


def _folders(root, images: dict[str, list[int]], empty=()):
    """``root/<class>/<code>.png`` for each class's codes, and empty class folders."""
    for name, codes in images.items():
        for code in codes:
            _image(root / name / f"{code}.png", code)
    for name in empty:
        (root / name).mkdir(parents=True)
    return root


def _val_name(number: int) -> str:
    return f"ILSVRC2012_val_{number:08d}.png"


def _run(argv, tmp_path, capsys) -> tuple[dict, str]:
    """Run ``tresnet validate`` with ``argv``; its JSON report and printed output."""
    out = tmp_path / "report.json"
    code = main(["validate", *argv, "--json", str(out), *SMALL])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(out.read_text()), captured.out


def _fails(argv, capsys, message: str, command: str = "validate") -> str:
    """``tresnet <command> argv`` exits 1 with a one-line error holding ``message``."""
    assert main([command, *argv, *(SMALL if command == "validate" else SMALL[:4])]) == 1
    err = capsys.readouterr().err
    assert message in err, err
    lines = err.strip().splitlines()
    if command == "predict":  # predict names the model and its preprocessing on stderr first
        lines = [line for line in lines if not line.startswith(("tresnet_m: ", "preprocessing: "))]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith(f"tresnet {command}: error: "), err
    return err


def _percent(hits: int, images: int) -> float:
    return pytest.approx(100.0 * hits / images, abs=1e-9)


def test_three_synset_folders_are_scored_over_their_classes(stand_in, tmp_path, capsys):
    s1, s100, s500 = (imagenet_synsets()[i] for i in (1, 100, 500))
    data = _folders(tmp_path / "val", {s1: [10, 11, 12], s100: [20], s500: [30]})
    stand_in({
        10: {1: 5.0},              # right
        11: {7: 5.0, 1: 4.0},      # 7 lies outside the data's classes: right over them, wrong over all
        12: {100: 5.0, 1: 4.0},    # wrong either way (100 is one of the data's classes)
        20: {100: 5.0},            # right
        30: {999: 5.0, 1: 4.0},    # wrong either way; 500 is the third of the three, fifth over all
    })
    report, out = _run(["--data", str(data)], tmp_path, capsys)
    assert report["top1"] == _percent(3, 5) and report["top1_all_classes"] == _percent(2, 5)
    assert report["top5"] == _percent(5, 5)  # the top-3 of 3 classes holds every label
    # over all: 10 (1), 11 (7 1 0 2 3), 12 (100 1 0 2 3), 20 (100) hit; 30 (999 1 0 2 3) misses 500
    assert report["top5_all_classes"] == _percent(4, 5)
    assert report["class_mapping"] == dict(rule="imagenet-synsets", source=None, classes=3, model_classes=1000,
                                           masked=True, indices={s1: 1, s100: 100, s500: 500})
    assert report["ground_truth"] is None and report["images"] == 5 and "real_top1" not in report
    assert ("classes: 3 classes mapped by ImageNet-1k synsets (class index = the synset's ImageNet index); "
            "prediction over these 3 of the model's 1000 classes only") in out
    assert "top-1 60.000%  top-5 100.000% over the 3 classes of the data  (5 images" in out
    assert "over all 1000 classes: top-1 40.000%  top-5 80.000%" in out


def test_a_200_class_subset_with_empty_folders_masks_the_other_800(stand_in, tmp_path, capsys):
    subset = imagenet_synsets()[::5]  # indices 0, 5, ..., 995 (ImageNet-A/R style)
    index = imagenet_synset_index()
    images = {subset[0]: [40, 45], subset[1]: [41], subset[2]: [42], subset[-1]: [43], subset[100]: [44]}
    assert [index[s] for s in images] == [0, 5, 10, 995, 500]
    data = _folders(tmp_path / "val", images, empty=[s for s in subset if s not in images])
    stand_in({
        40: {3: 5.0, 0: 4.0},                                  # masked: 0 | all: 3 (top-5 3 0 1 2 4)
        45: {5: 5.0, 0: 4.0},                                  # masked: 5 0 | all: 5 0 1 2 3
        41: {1: 5.0, 2: 4.0, 3: 3.0, 4: 2.0, 6: 1.0, 5: 0.2},  # masked: 5 | all: 1 2 3 4 6, 5 sixth
        42: {15: 5.0, 20: 4.0, 25: 3.0, 30: 2.0, 35: 1.0, 10: 0.5},  # 10 sixth either way
        43: {995: 5.0},                                        # right either way
        44: {501: 2.0, 500: 1.0},                              # masked: 500 | all: 501 500
    })
    report, out = _run(["--data", str(data)], tmp_path, capsys)
    assert report["top1"] == _percent(4, 6)  # 40 41 43 44
    assert report["top5"] == _percent(5, 6)  # all but 42
    assert report["top1_all_classes"] == _percent(1, 6)  # 43
    assert report["top5_all_classes"] == _percent(4, 6)  # 40 43 44 45
    mapping = report["class_mapping"]
    assert mapping["classes"] == 200 and mapping["masked"] and mapping["rule"] == "imagenet-synsets"
    assert sorted(mapping["indices"].values()) == list(range(0, 1000, 5))
    assert "6 of 6 images in 200 classes" in out
    assert "prediction over these 200 of the model's 1000 classes only" in out
    assert "top-1 66.667%  top-5 83.333% over the 200 classes of the data" in out
    assert "over all 1000 classes: top-1 16.667%  top-5 66.667%" in out


def test_all_1000_synset_folders_are_not_masked(stand_in, tmp_path, capsys):
    synsets = imagenet_synsets()
    data = _folders(tmp_path / "val", {synsets[0]: [50], synsets[999]: [51]}, empty=synsets[1:999])
    stand_in({50: {3: 5.0, 0: 4.0}, 51: {999: 5.0}})
    report, out = _run(["--data", str(data)], tmp_path, capsys)
    assert report["top1"] == _percent(1, 2) and report["top5"] == _percent(2, 2)
    assert not report["class_mapping"]["masked"] and "top1_all_classes" not in report
    assert "over all" not in out and "of the data" not in out


def test_class_index_folders_are_their_numbers_not_sorted_strings(stand_in, tmp_path, capsys):
    data = _folders(tmp_path / "val", {"0": [60], "2": [61], "10": [62], "100": [63], "999": [64]})
    stand_in({
        60: {0: 5.0},
        61: {2: 5.0},
        62: {10: 5.0},                # sorted as strings, folder 10 would be class 1 ('0' '10' '100' '2' '999')
        63: {1: 5.0, 100: 4.0},       # 1 is not a class of the data: right over the data's classes only
        64: {2: 5.0, 999: 4.0},       # wrong either way
    })
    report, out = _run(["--data", str(data)], tmp_path, capsys)
    assert report["class_mapping"]["rule"] == "integers" and report["class_mapping"]["masked"]
    assert report["class_mapping"]["indices"] == {"0": 0, "10": 10, "100": 100, "2": 2, "999": 999}
    assert report["top1"] == _percent(4, 5) and report["top1_all_classes"] == _percent(3, 5)
    assert "class-index names (folder 7 = class 7)" in out


@pytest.mark.parametrize("names, message", [
    (["5", "1000"], "has class-index names past the model's 1000 classes ('1000'; valid: 0..999)"),
    (["7", "07"], "class-index names that mean the same index (such as '7' and '07')"),
])
def test_bad_class_index_folders_are_one_line_errors(stand_in, tmp_path, capsys, names, message):
    stand_in({70: {0: 1.0}})
    data = _folders(tmp_path / "val", {name: [70] for name in names})
    _fails(["--data", str(data)], capsys, message)


def _flat_val(root, codes: dict[int, int]):
    """A flat folder: ILSVRC2012_val_<number>.png of each code."""
    for number, code in codes.items():
        _image(root / _val_name(number), code)
    return root


def _loc_csv(path, truth: dict[int, str]):
    rows = [f"ILSVRC2012_val_{n:08d},{s} 10 20 130 200 {s} 1 2 60 70" for n, s in reversed(truth.items())]
    path.write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    return path


def _devkit_txt(path, synsets_in_order):
    ids = [devkit_synsets().index(s) + 1 for s in synsets_in_order]
    path.write_text("".join(f"{i}\n" for i in ids))
    return path


def test_flat_val_with_loc_csv_or_devkit_txt_gives_the_same_report(stand_in, tmp_path, capsys):
    synsets = imagenet_synsets()
    truth = {1: SEA_SNAKE, 2: synsets[0], 3: synsets[999], 4: SEA_SNAKE, 5: synsets[1]}  # image 5 not on disk
    data = _flat_val(tmp_path / "flat", {1: 80, 2: 81, 3: 82, 4: 83})
    csv_file = _loc_csv(tmp_path / "LOC_val_solution.csv", truth)
    txt_file = _devkit_txt(tmp_path / "ILSVRC2012_validation_ground_truth.txt", truth.values())
    assert txt_file.read_text().splitlines()[0] == "490"
    stand_in({
        80: {65: 5.0},            # right
        81: {3: 5.0, 0: 1.0},     # right over the file's 4 classes (0 1 65 999), wrong over all
        82: {65: 5.0, 999: 1.0},  # wrong either way
        83: {65: 5.0},            # right
    })
    reports = []
    for file in (csv_file, txt_file):
        report, out = _run(["--data", str(data), "--ground-truth", str(file)], tmp_path, capsys)
        assert report["ground_truth"] == str(file)
        assert "4 of 4 images in 4 classes" in out
        reports.append(report)
    for report in reports:
        assert report["top1"] == _percent(3, 4) and report["top1_all_classes"] == _percent(2, 4)
        assert report["top5"] == _percent(4, 4) and report["top5_all_classes"] == _percent(4, 4)
        assert report["class_mapping"]["indices"] == {SEA_SNAKE: 65, synsets[0]: 0, synsets[1]: 1,
                                                      synsets[999]: 999}
    same = ("top1", "top5", "top1_all_classes", "top5_all_classes", "loss", "images", "class_mapping")
    assert {k: reports[0][k] for k in same} == {k: reports[1][k] for k in same}


def test_flat_val_ground_truth_errors(stand_in, tmp_path, capsys):
    stand_in({80: {65: 5.0}})
    truth = {1: SEA_SNAKE, 2: SEA_SNAKE}
    data = _flat_val(tmp_path / "flat", {1: 80, 2: 80, 7: 80})
    csv_file = _loc_csv(tmp_path / "gt.csv", truth)
    _fails(["--data", str(data), "--ground-truth", str(csv_file)], capsys,
           f"1 of the 3 images in {data} have no line in {csv_file} (e.g. ILSVRC2012_val_00000007.png)")
    other = _flat_val(tmp_path / "other", {1: 80})
    _image(other / "photo.png", 80)
    _fails(["--data", str(other), "--ground-truth", str(csv_file)], capsys, "(e.g. photo.png)")
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("ImageId,Label\nILSVRC2012_val_00000001,n01751748\n")
    _fails(["--data", str(other), "--ground-truth", str(bad_header)], capsys,
           "must start with the header ImageId,PredictionString")
    bad_txt = tmp_path / "bad.txt"
    bad_txt.write_text("490\n490\nsea snake\n490\n")
    _fails(["--data", str(other), "--ground-truth", str(bad_txt)], capsys,
           f"{bad_txt} line 3: expected an ILSVRC2012_ID between 1 and 1000")
    _fails(["--data", str(other), "--ground-truth", str(tmp_path / "missing.txt")], capsys, "does not exist")
    _fails(["--data", str(tmp_path / "labels.csv"), "--ground-truth", str(csv_file), "--task", "multilabel"], capsys,
           "--ground-truth labels ImageNet validation images, one class each: it does not apply to a multilabel task")
    # a plain folder is no multilabel data at all: that is said first
    _fails(["--data", str(other), "--ground-truth", str(csv_file), "--task", "multilabel"], capsys,
           f"multilabel data {other} needs its labels: ")


def _real_setup(tmp_path):
    """Images 1-5 of a flat val folder whose devkit ground truth covers the 1000 classes (line k: ID k), so
    nothing is masked; t[k] is the class index of image k."""
    data = _flat_val(tmp_path / "flat", {k: 89 + k for k in range(1, 6)})
    gt = _devkit_txt(tmp_path / "gt.txt", devkit_synsets())
    t = {k: imagenet_synset_index()[devkit_synsets()[k - 1]] for k in range(1, 6)}
    assert t == {1: 278, 2: 212, 3: 250, 4: 193, 5: 217}  # none among 0-4, which the unnamed logits rank first
    return data, gt, t


def test_real_labels_score_the_images_that_have_one(stand_in, tmp_path, capsys):
    data, gt, t = _real_setup(tmp_path)
    stand_in({
        90: {t[1]: 5.0},                                                   # ReaL [t1]: right
        91: {500: 5.0, t[2]: 4.0},                                         # ReaL [500, t2]: right for ReaL only
        92: {501: 5.0},                                                    # ReaL []: left out of ReaL
        93: {600: 5.0, 601: 4.0, 602: 3.0, 603: 2.0, 604: 1.5, t[4]: 1.0},  # ReaL [604]: ReaL top-5 only
        94: {t[5]: 5.0},                                                   # ReaL [998]: right, not for ReaL
    })
    real = tmp_path / "real.json"
    real.write_text(json.dumps([[t[1]], [500, t[2]], [], [604], [998], [3]]))  # image 6 is not on disk
    report, out = _run(["--data", str(data), "--ground-truth", str(gt), "--real-labels", str(real)], tmp_path, capsys)
    assert not report["class_mapping"]["masked"] and report["class_mapping"]["classes"] == 1000
    assert report["top1"] == _percent(2, 5)  # 90 94
    assert report["top5"] == _percent(3, 5)  # 90 91 94 (t4 is sixth)
    assert report["real_images"] == 4
    assert report["real_top1"] == _percent(2, 4)  # 90 91
    assert report["real_top5"] == _percent(3, 4)  # 90 91 93
    assert report["real_labels"] == str(real)
    assert f"ReaL labels: {real}" in out
    assert "ReaL top-1 50.000%  top-5 75.000%  (4 images with a ReaL label)" in out


def test_real_labels_without_any_label_and_in_synset_folders(stand_in, tmp_path, capsys):
    data, gt, t = _real_setup(tmp_path)
    stand_in({89 + k: {t[k]: 5.0} for k in range(1, 6)})
    real = tmp_path / "real.json"
    real.write_text(json.dumps([[]] * 5))
    report, out = _run(["--data", str(data), "--ground-truth", str(gt), "--real-labels", str(real)], tmp_path, capsys)
    assert report["top1"] == _percent(5, 5)
    assert report["real_top1"] is None and report["real_top5"] is None and report["real_images"] == 0
    assert "ReaL no image has a ReaL label  (0 images with a ReaL label)" in out
    # valprep.sh's layout: the images in synset folders, still numbered by their names
    folders = tmp_path / "val"
    for k in range(1, 6):
        _image(folders / devkit_synsets()[k - 1] / _val_name(k), 89 + k)
    real.write_text(json.dumps([[t[1]], [t[1]], [t[3]], [], [t[5], t[4]]]))
    report, _ = _run(["--data", str(folders), "--real-labels", str(real)], tmp_path, capsys)
    assert report["class_mapping"]["masked"]  # 5 of the 1000 classes: ReaL is scored on the masked prediction
    assert report["top1"] == _percent(5, 5) and report["real_images"] == 4
    assert report["real_top1"] == _percent(3, 4)  # images 1, 3, 5 (image 2's ReaL label is t1)
    assert report["real_top5"] == _percent(4, 4)  # image 2: t1 is among its 5 classes


def test_real_labels_errors(stand_in, tmp_path, capsys):
    data, gt, t = _real_setup(tmp_path)
    stand_in({89 + k: {t[k]: 5.0} for k in range(1, 6)})
    real = tmp_path / "real.json"
    real.write_text(json.dumps([[1]] * 3))
    _fails(["--data", str(data), "--ground-truth", str(gt), "--real-labels", str(real)], capsys,
           "ILSVRC2012_val_00000004.png is not an ImageNet validation image that")
    folders = _folders(tmp_path / "val", {SEA_SNAKE: [90]})
    real.write_text(json.dumps([[65]] * 5))
    _fails(["--data", str(folders), "--real-labels", str(real)], capsys,
           "90.png is not an ImageNet validation image")
    for content in ({"1": [1]}, [[1], 2], [["n01440764"]], [[1000]], []):
        real.write_text(json.dumps(content))
        _fails(["--data", str(data), "--ground-truth", str(gt), "--real-labels", str(real)], capsys,
               "must be a JSON list with one list of class indices (0-999)")
    real.write_text("[[1], [2]")
    _fails(["--data", str(data), "--ground-truth", str(gt), "--real-labels", str(real)], capsys, "is not JSON")


def test_real_labels_need_an_imagenet_model(stand_in, tmp_path, capsys):
    stand_in({90: {0: 1.0}}, num_classes=10)
    data = _folders(tmp_path / "val", {"3": [90]})
    real = tmp_path / "real.json"
    real.write_text(json.dumps([[1]]))
    _fails(["--data", str(data), "--real-labels", str(real)], capsys,
           "ReaL labels are ImageNet-1k class indices but the model has 10 classes")


def test_a_class_map_of_names_in_model_order(stand_in, tmp_path, capsys):
    data = _folders(tmp_path / "val", {"apple": [100], "pear": [101], "plum": [102]})
    class_map = tmp_path / "classes.txt"
    class_map.write_text("plum\napple\n\npear\nkiwi\n")  # a blank line is no class
    stand_in({
        100: {1: 5.0},          # apple: right
        101: {3: 5.0, 2: 4.0},  # pear: 3 (kiwi) has no folder: right over the data's classes only
        102: {1: 5.0, 0: 4.0},  # plum: wrong either way
    }, num_classes=4)
    report, out = _run(["--data", str(data), "--class-map", str(class_map)], tmp_path, capsys)
    assert report["class_mapping"] == dict(rule="class-map", source=str(class_map), classes=3, model_classes=4,
                                           masked=True, indices={"apple": 1, "pear": 2, "plum": 0})
    assert report["top1"] == _percent(2, 3) and report["top1_all_classes"] == _percent(1, 3)
    assert f"classes: 3 classes mapped by the class map {class_map}; prediction over these 3 of the model's 4" in out


def test_a_class_map_of_name_index_lines(stand_in, tmp_path, capsys):
    data = _folders(tmp_path / "val", {"apple": [100], "pear": [101], "plum": [102]})
    class_map = tmp_path / "classes.csv"
    class_map.write_text("apple, 7\npear,3\nplum ,0\nfig,9\n")
    stand_in({100: {7: 5.0}, 101: {3: 5.0}, 102: {9: 5.0, 0: 4.0}}, num_classes=10)
    report, _ = _run(["--data", str(data), "--class-map", str(class_map)], tmp_path, capsys)
    assert report["class_mapping"]["indices"] == {"apple": 7, "pear": 3, "plum": 0}
    assert report["top1"] == _percent(3, 3) and report["top1_all_classes"] == _percent(2, 3)
    # the class map wins over the rules that would otherwise apply: here synset folders
    synset_data = _folders(tmp_path / "synsets", {SEA_SNAKE: [100]})
    class_map.write_text(f"{SEA_SNAKE},7\n")
    report, _ = _run(["--data", str(synset_data), "--class-map", str(class_map)], tmp_path, capsys)
    assert report["class_mapping"]["rule"] == "class-map" and report["class_mapping"]["indices"] == {SEA_SNAKE: 7}
    assert report["top1"] == _percent(1, 1)


@pytest.mark.parametrize("text, message", [
    ("apple\npear\n", "1 classes of folder"),
    ("apple,0\npear,1\n", "are not in the class map"),
    ("apple\npear,1\nplum\n", "mixes plain names and name,index lines: use one form"),
    ("apple,0\npear,1\nplum,10\n", "line 3: index '10' is not a class index of the model (0..9)"),
    ("apple,0\napple,1\nplum,2\n", "line 2: 'apple' is listed twice"),
    ("\n\n", "is empty"),
])
def test_class_map_errors(stand_in, tmp_path, capsys, text, message):
    data = _folders(tmp_path / "val", {"apple": [100], "pear": [101], "plum": [102]})
    class_map = tmp_path / "map.txt"
    class_map.write_text(text)
    stand_in({100: {0: 1.0}}, num_classes=10)
    err = _fails(["--data", str(data), "--class-map", str(class_map)], capsys, message)
    if "class map" in message:  # a folder the map leaves out is named
        assert f"classes of folder {data} are not in the class map {class_map}: 'plum'" in err


def test_a_missing_class_map_is_an_error(stand_in, tmp_path, capsys):
    data = _folders(tmp_path / "val", {"apple": [100]})
    stand_in({100: {0: 1.0}}, num_classes=10)
    _fails(["--data", str(data), "--class-map", str(tmp_path / "nope.txt")], capsys, "does not exist")


@pytest.mark.parametrize("names, num_classes, message", [
    (["n99999999", "n01440764"], 1000, "1 synset classes of folder"),
    (["n99999999", "n01440764"], 1000, "are not ImageNet-1k synsets ('n99999999'): pass --class-map FILE"),
    (["n01440764", "cat"], 1000, "mixes 1 synset classes ('n01440764') with 1 other names ('cat')"),
    (["ant", "bee", "cat"], 1000, "has 3 classes but the model has 1000"),
    (["n01440764", SEA_SNAKE], 10, "has 2 synset classes, which name ImageNet-1k classes, but the model has 10"),
])
def test_ambiguous_folders_are_one_line_errors(stand_in, tmp_path, capsys, names, num_classes, message):
    stand_in({110: {0: 1.0}}, num_classes=num_classes)
    data = _folders(tmp_path / "val", {name: [110] for name in names})
    _fails(["--data", str(data)], capsys, message)


def test_a_subset_of_the_checkpoints_own_classes(stand_in, tmp_path, capsys):
    names = ["ant", "bee", "cat", "cow", "dog"]
    data = _folders(tmp_path / "val", {"cat": [120, 121], "ant": [122]})
    stand_in({
        120: {2: 5.0},          # cat: right
        121: {4: 5.0, 2: 4.0},  # cat: dog is not in the data: right over cat and ant only
        122: {2: 5.0, 0: 4.0},  # ant: wrong either way
    }, num_classes=5, class_names=names)
    report, out = _run(["--data", str(data)], tmp_path, capsys)
    assert report["class_mapping"] == dict(rule="checkpoint-names", source=None, classes=2, model_classes=5,
                                           masked=True, indices={"ant": 0, "cat": 2})
    assert report["top1"] == _percent(2, 3) and report["top1_all_classes"] == _percent(1, 3)
    assert report["top5"] == _percent(3, 3) and report["top5_all_classes"] == _percent(3, 3)
    assert report["checkpoint"] == "stand-in.safetensors"
    assert ("classes: 2 classes mapped by the class names the checkpoint records; prediction over these 2 of "
            "the model's 5 classes only") in out
    assert "top-1 66.667%  top-5 100.000% over the 2 classes of the data" in out


def test_checkpoint_names_come_before_class_indices(stand_in, tmp_path, capsys):
    data = _folders(tmp_path / "val", {"0": [130], "2": [131]})
    stand_in({130: {2: 5.0}, 131: {0: 5.0}}, num_classes=3, class_names=["2", "1", "0"])
    report, _ = _run(["--data", str(data)], tmp_path, capsys)
    assert report["class_mapping"]["rule"] == "checkpoint-names"
    assert report["class_mapping"]["indices"] == {"0": 2, "2": 0}
    assert report["top1"] == _percent(2, 2)


def test_validate_from_python_takes_the_same_options(tmp_path):
    truth = {1: SEA_SNAKE, 2: imagenet_synsets()[0]}
    data = _flat_val(tmp_path / "flat", {1: 140, 2: 141})
    gt = _loc_csv(tmp_path / "gt.csv", truth)
    real = tmp_path / "real.json"
    real.write_text(json.dumps([[65, 3], [3]]))
    model = CodeModel({140: {65: 5.0}, 141: {3: 5.0, 0: 4.0}})
    report = validate(model, data, data_options=ValidationOptions(ground_truth=gt), scoring=Scoring(real_labels=real), device="cpu", preprocessing=Preprocessing.of(model, img_size=64), progress=False)
    assert report.top1 == _percent(2, 2) and report.subset["top1_all_classes"] == _percent(1, 2)
    assert report.masked_classes == 2 and report.ground_truth == str(gt)
    # ReaL is scored on the prediction over the 2 classes: image 2's ReaL label 3 is not one of them
    assert report.real["real_top1"] == _percent(1, 2) and report.real["real_images"] == 2
    figures = report.to_dict()  # what --json writes
    assert figures["top1_all_classes"] == _percent(1, 2) and figures["real_top1"] == _percent(1, 2)
    assert figures["real_labels"] == str(real)
    class_map = tmp_path / "map.txt"
    class_map.write_text(f"{SEA_SNAKE},3\n{imagenet_synsets()[0]},65\n")
    report = validate(model, data, data_options=ValidationOptions(ground_truth=gt), scoring=Scoring(class_map=class_map), device="cpu", preprocessing=Preprocessing.of(model, img_size=64), progress=False)
    assert report.class_mapping["rule"] == "class-map" and report.top1 == _percent(0, 2)
    assert report.to_dict()["class_mapping"] == report.class_mapping and not report.real


def test_evaluate_masks_the_logits_outside_the_subset():
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0], [4.0, 0.0, 1.0, 2.0], [0.0, 1.0, 2.0, 3.0]])
    targets = torch.tensor([[2, 1, -1], [3, -1, -1], [2, 0, 3]])  # label, then ReaL labels padded with -1
    model = nn.Linear(1, 1)  # the loader hands the logits as inputs: an identity stands in for the network
    model.forward = lambda x: x
    loader = [(logits, targets)]
    result = evaluate(model, loader, get_task("multiclass").tally("cpu", class_subset=[0, 2, 3]), progress=False)
    # over 0 2 3: row 0 -> 2 (right), row 1 -> 0 (wrong), row 2 -> 3 (wrong); top-3 of 3 always right
    assert result.correct_top1 == 1 and result.correct_top5 == 3 and result.subset["class_subset"] == 3
    # over all: row 0 -> 1, row 1 -> 0, row 2 -> 3: none right
    assert result.subset["top1_all_classes"] == 0.0 and result.subset["top5_all_classes"] == 1.0
    # ReaL: row 0 [1] (1 is masked out: no hit), row 1 none, row 2 [0, 3] -> 3 hit
    assert result.real["real_images"] == 2 and result.real["real_correct_top1"] == 1 and result.real["real_top5"] == 0.5
    figures = result.to_dict()  # the old keys, flat
    assert figures["class_subset"] == 3 and figures["top1_all_classes"] == 0.0 and figures["real_top5"] == 0.5


def test_predict_names_imagenet_synsets_and_takes_a_class_map(stand_in, tmp_path, capsys):
    image = tmp_path / "snake.png"
    _image(image, 150)
    stand_in({150: {65: 5.0, 0: 4.0, 999: 3.0}})
    out = tmp_path / "answers.json"
    assert main(["predict", str(image), "--topk", "3", "--json", str(out), *SMALL[:4]]) == 0
    (answer,) = json.loads(out.read_text())["predictions"]
    assert [s["index"] for s in answer["topk"]] == [65, 0, 999]
    assert [s["synset"] for s in answer["topk"]] == [imagenet_synsets()[i] for i in (65, 0, 999)]
    assert answer["topk"][0]["synset"] == SEA_SNAKE and answer["topk"][0]["label"] == "sea snake"
    assert "sea snake (65, n01751748)" in capsys.readouterr().out
    class_map = tmp_path / "map.txt"
    class_map.write_text("my snake,65\nmy fish,0\n")
    assert main(["predict", str(image), "--topk", "3", "--class-map", str(class_map), "--json", str(out),
                 *SMALL[:4]]) == 0
    (answer,) = json.loads(out.read_text())["predictions"]
    assert [s["label"] for s in answer["topk"]][:2] == ["my snake", "my fish"]
    assert answer["topk"][0]["synset"] == SEA_SNAKE  # the outputs are still ImageNet's
    assert "my snake (65, n01751748)" in capsys.readouterr().out
    class_map.write_text("my snake,1000\n")
    _fails([str(image), "--class-map", str(class_map)], capsys, "index '1000' is not a class index", "predict")


def test_predict_of_a_model_with_its_own_classes_has_no_synsets(stand_in, tmp_path, capsys):
    image = tmp_path / "a.png"
    _image(image, 150)
    stand_in({150: {2: 5.0}}, num_classes=5, class_names=["ant", "bee", "cat", "cow", "dog"])
    out = tmp_path / "answers.json"
    assert main(["predict", str(image), "--topk", "2", "--json", str(out), *SMALL[:4]]) == 0
    (answer,) = json.loads(out.read_text())["predictions"]
    assert set(answer["topk"][0]) == {"index", "label", "prob"}
    assert (answer["topk"][0]["index"], answer["topk"][0]["label"]) == (2, "cat")
    assert all("synset" not in s for s in answer["topk"])
    assert "cat (2)" in capsys.readouterr().out


def test_predict_of_a_checkpoint_that_records_the_synsets_shows_names_and_synsets(stand_in, tmp_path, capsys):
    image = tmp_path / "snake.png"
    _image(image, 150)
    stand_in({150: {65: 5.0}}, class_names=list(imagenet_synsets()))  # trained on ImageNet's synset folders
    out = tmp_path / "answers.json"
    assert main(["predict", str(image), "--topk", "1", "--json", str(out), *SMALL[:4]]) == 0
    (answer,) = json.loads(out.read_text())["predictions"]
    assert answer["topk"][0] | {"prob": None} == {"index": 65, "label": "sea snake", "synset": SEA_SNAKE, "prob": None}
