"""`tresnet validate` and `tresnet predict` for multi-label models: COCO annotations and labels CSVs, mAP and
CP/CR/CF1/OP/OR/OF1 against scikit-learn, labels above the threshold; a model with known answers stands in
for a network (fast), and one end-to-end run takes the task from a checkpoint saved by tresnet."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, precision_score, recall_score
from torch import nn

import tresnet
from helpers import StandInClassifier
from tresnet.cli import _common
from tresnet.cli.main import main
from tresnet.data.sources import ValidationOptions
from tresnet.data.transforms import Preprocessing
from tresnet.errors import ConfigError
from tresnet.inference.evaluate import Scoring
from tresnet.inference.predict import predict
from tresnet.inference.validate import validate
from tresnet.tasks.multilabel import MultiLabelReport

CLASSES = ["cat", "ant", "bee"]  # the COCO file's category order (ids 7, 3, 5): not sorted, not by id
CATEGORY_IDS = [7, 3, 5]
# red value of a uniform image -> (its classes, the logits the stand-in model answers); bee has no positive
IMAGES = {
    20: ({"cat", "ant"}, [2.0, 1.0, -3.0]),
    30: ({"ant"}, [-1.0, 0.5, 0.2]),
    40: ({"cat"}, [0.3, -2.0, -1.0]),
    50: ({"ant"}, [1.5, -0.5, -2.0]),
    60: (set(), [-2.0, -1.0, 0.8]),  # no annotation: left out by default, an all-negative image when kept
    70: ({"cat", "ant"}, [-0.2, 2.5, -0.5]),
}
SMALL = ["--img-size", "64", "--device", "cpu", "--workers", "0", "--batch-size", "2"]


class CodeModel(StandInClassifier):
    """Answers the logits of :data:`IMAGES` for the code read from the red channel of a uniform image."""

    def __init__(self, task: str = "multilabel", class_names: list[str] | None = None, num_classes: int = 3):
        super().__init__(num_classes, class_names, task=task)

    def logits(self, codes: list[int]) -> torch.Tensor:
        return torch.stack([torch.tensor(IMAGES[c][1] + [0.0] * (self.num_classes - 3)) for c in codes])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The images of :data:`IMAGES`, a COCO instances json (plus one listed file that is missing) and a CSV."""
    root = tmp_path_factory.mktemp("ml")
    images = root / "images"
    images.mkdir()
    for code in IMAGES:
        Image.new("RGB", (50, 40), (code, 0, 0)).save(images / f"{code}.png")
    listed = [*IMAGES, 99]  # 99.png is listed with a label but is not on disk
    coco = {
        "images": [{"id": 1000 + code, "file_name": f"{code}.png"} for code in listed],
        "categories": [{"id": cid, "name": name} for cid, name in zip(CATEGORY_IDS, CLASSES, strict=True)],
        "annotations": [{"id": n, "image_id": 1000 + code, "category_id": CATEGORY_IDS[CLASSES.index(name)]}
                        for n, (code, name) in enumerate((c, name) for c in IMAGES for name in sorted(IMAGES[c][0]))]
                       + [{"id": 999, "image_id": 1099, "category_id": 7}],
    }
    (root / "instances.json").write_text(json.dumps(coco))
    rows = [f"images/{code}.png,{' '.join(sorted(IMAGES[code][0]))}" for code in IMAGES if IMAGES[code][0]]
    (root / "labels.csv").write_text("file,labels\n" + "\n".join([*rows, "images/99.png,cat"]) + "\n")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return SimpleNamespace(root=root, images=images, annotations=root / "instances.json", csv=root / "labels.csv",
                           classes=root / "classes.txt")


def _expected(codes, threshold: float = 0.5) -> dict:
    """mAP and the threshold metrics of the stand-in's answers on ``codes``, in percent (scikit-learn)."""
    y = np.array([[name in IMAGES[c][0] for name in CLASSES] for c in codes], dtype=int)
    scores = np.array([IMAGES[c][1] for c in codes])
    ap = [average_precision_score(y[:, k], scores[:, k]) if y[:, k].any() else None for k in range(3)]
    predicted = (1 / (1 + np.exp(-scores)) > threshold).astype(int)
    cp, cr = (100 * f(y, predicted, average="macro", zero_division=0) for f in (precision_score, recall_score))
    op, o_r = (100 * f(y, predicted, average="micro", zero_division=0) for f in (precision_score, recall_score))
    return {"map": 100 * np.mean([a for a in ap if a is not None]), "ap_per_class": [None if a is None else 100 * a
                                                                                      for a in ap],
            "cp": cp, "cr": cr, "cf1": 2 * cp * cr / (cp + cr), "op": op, "or": o_r, "of1": 2 * op * o_r / (op + o_r)}


def _assert_report(report: dict, codes, threshold: float = 0.5) -> None:
    expected = _expected(codes, threshold)
    for key in ("map", "cp", "cr", "cf1", "op", "or", "of1"):
        assert report[key] == pytest.approx(expected[key], abs=1e-9), key
    assert report["ap_per_class"][2] is None and report["ap_per_class"][:2] == pytest.approx(
        expected["ap_per_class"][:2], abs=1e-9)
    assert report["images"] == len(codes) and report["threshold"] == threshold


@pytest.fixture
def stand_in(monkeypatch):
    """Make the commands load ``CodeModel(**options)`` instead of a network."""
    def use(**options):
        monkeypatch.setattr(_common, "load_model", lambda args, command: CodeModel(**options))
    return use


def test_validate_coco_prints_the_metrics_and_writes_the_report(data, stand_in, tmp_path, capsys):
    stand_in()
    out = tmp_path / "report.json"
    code = main(["validate", "--data", str(data.images), "--annotations", str(data.annotations), "--json", str(out),
                 *SMALL])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    codes = [20, 30, 40, 50, 70]  # 60 has no annotation (left out), 99 is missing (skipped)
    expected = _expected(codes)
    assert f"mAP {expected['map']:.3f}% over the 2 of 3 classes with a positive" in captured.out
    assert "5 images, 1 skipped" in captured.out and "3 classes, multilabel" in captured.out
    assert f"at threshold 0.5:  CP {expected['cp']:.3f}%  CR {expected['cr']:.3f}%" in captured.out
    assert "99.png" in captured.err
    report = json.loads(out.read_text())
    _assert_report(report, codes)
    assert report["task"] == "multilabel" and report["metric_unit"] == "percent"
    assert report["classes"] == CLASSES and report["num_classes"] == 3 and report["classes_with_positives"] == 2
    assert report["annotations"] == str(data.annotations) and report["data"] == str(data.images)
    assert report["skipped"] == 1 and report["skipped_files"] == [str(data.images / "99.png")]
    assert {"model", "checkpoint", "img_size", "preprocessing", "loss", "seconds", "img_per_s", "device",
            "precision", "batch_size", "workers", "limit"} <= set(report)


def test_validate_a_csv_with_a_class_list_and_another_threshold(data, stand_in, tmp_path, capsys):
    stand_in()
    out = tmp_path / "report.json"
    assert main(["validate", "--data", str(data.csv), "--classes", str(data.classes), "--threshold", "0.7",
                 "--json", str(out), *SMALL]) == 0
    assert "at threshold 0.7:" in capsys.readouterr().out
    _assert_report(json.loads(out.read_text()), [20, 30, 40, 50, 70], threshold=0.7)


def test_images_without_annotations_kept_as_negatives(data, stand_in, tmp_path):
    stand_in()
    out = tmp_path / "report.json"
    assert main(["validate", "--data", str(data.images), "--annotations", str(data.annotations),
                 "--without-labels", "negative", "--json", str(out), *SMALL]) == 0
    _assert_report(json.loads(out.read_text()), [20, 30, 40, 50, 60, 70])


@pytest.mark.filterwarnings("ignore::tresnet.data.UnreadableImageWarning")
def test_validate_from_python_with_the_checkpoints_class_names(data):
    model = CodeModel(class_names=CLASSES)
    report = validate(model, data.images, data_options=ValidationOptions(annotations=data.annotations), device="cpu", preprocessing=Preprocessing.of(model, img_size=64), progress=False,
                      limit=3)
    assert isinstance(report, MultiLabelReport) and report.classes == CLASSES
    assert report.facts.images + report.facts.skipped == 3  # taken evenly over the 6 listed: 99.png among them
    assert report.facts.checkpoint == "stand-in.safetensors" and report.facts.settings["limit"] == 3
    figures = report.to_dict()  # what --json writes
    assert figures["images"] + figures["skipped"] == 3 and figures["limit"] == 3 and figures["task"] == "multilabel"
    assert figures["map"] == report.map and figures["or"] == report.threshold_metrics["or"]


@pytest.mark.parametrize("options, extra, message", [
    (dict(num_classes=4), [], "names 3 classes but the model has 4"),
    (dict(class_names=["dog", "ant", "bee"]), [], "index 0 is 'cat' in the annotations, 'dog' in the checkpoint"),
    (dict(task="multiclass"), [], "images is multilabel data and the model is multiclass: use data of the model's "
                                  "task (--data digits or --data a folder of class sub-folders (ImageNet-style) or "
                                  "--data NAME:ROOT (a public fine-tuning set as distributed: cifar10, cifar100, "
                                  "flowers102, stanford-cars, oxford-pets, fgvc-aircraft, food101, dtd)), or another "
                                  "checkpoint"),
    (dict(), ["--task", "multiclass"], "the task is multiclass: pass --task multilabel"),
    (dict(), ["--threshold", "1.5"], "must lie in (0, 1), got 1.5"),
])
def test_validate_bad_setups_are_one_line_errors(data, stand_in, capsys, options, extra, message):
    stand_in(**options)
    assert main(["validate", "--data", str(data.images), "--annotations", str(data.annotations), *extra,
                 *SMALL]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_validate_multilabel_without_labels_says_what_to_pass(data, stand_in, capsys):
    stand_in()
    assert main(["validate", "--data", str(data.images), "--task", "multilabel", *SMALL]) == 1
    err = capsys.readouterr().err
    assert "multilabel data " in err and " needs its labels: " in err and "--annotations FILE" in err
    assert "--data labels.csv" in err
    class_folders = data.root / "folders"
    (class_folders / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8), (20, 0, 0)).save(class_folders / "cat" / "a.png")
    assert main(["validate", "--data", str(class_folders), *SMALL]) == 1  # the model's task: multilabel
    err = capsys.readouterr().err
    assert "folders is multiclass data and the model is multilabel: use data of the model's task (" in err
    assert "--annotations FILE" in err and "or another checkpoint" in err


def test_the_single_label_report_names_its_task(data, tmp_path):
    folder = tmp_path / "val"
    for name, code in (("ant", 20), ("bee", 30), ("cat", 60)):  # sorted folders: classes 0, 1, 2
        (folder / name).mkdir(parents=True)
        Image.new("RGB", (8, 8), (code, 0, 0)).save(folder / name / "a.png")
    model = CodeModel(task="multiclass")
    report = validate(model, folder, device="cpu", preprocessing=Preprocessing.of(model, img_size=64), progress=False)
    assert report.facts.task == "multiclass" and report.top1 == pytest.approx(100.0)  # argmax 0, 1, 2
    assert report.to_dict()["task"] == "multiclass" and "map" not in report.to_dict()


def test_predict_lists_the_labels_above_the_threshold_then_the_topk(data, stand_in, tmp_path, capsys):
    stand_in(class_names=CLASSES)
    out = tmp_path / "predictions.json"
    files = [str(data.images / "20.png"), str(data.images / "30.png"), str(tmp_path / "missing.png")]
    assert main(["predict", *files, "--topk", "2", "--json", str(out), *SMALL[:4]]) == 1
    captured = capsys.readouterr()
    assert "missing.png: no such file" in captured.err and "3 classes, multilabel, weights" in captured.err
    lines = captured.out.splitlines()
    start = lines.index(files[0])
    assert lines[start:start + 6] == [files[0], "  labels (probability > 0.5):", "     88.08%  cat (0)",
                                      "     73.11%  ant (1)", "  top-2:", "     88.08%  cat (0)"]
    answers = {a["file"]: a for a in json.loads(out.read_text())["predictions"]}
    assert [s["label"] for s in answers[files[0]]["labels"]] == ["cat", "ant"]
    assert [s["label"] for s in answers[files[1]]["labels"]] == ["ant", "bee"]  # sigmoid 0.62 and 0.55
    assert answers[files[1]]["labels"][0]["prob"] == pytest.approx(1 / (1 + np.exp(-0.5)), rel=1e-6)
    assert answers[files[2]]["labels"] == [] and "error" in answers[files[2]]
    assert list(answers[files[0]]) == ["file", "labels", "topk"]


def test_predict_threshold_and_no_label(data, stand_in, capsys):
    stand_in()
    assert main(["predict", str(data.images / "30.png"), "--threshold", "0.8", "--topk", "1", *SMALL[:4]]) == 0
    assert "  labels (probability > 0.8): none" in capsys.readouterr().out


def test_predict_from_python_follows_the_task():
    image = torch.full((1, 3, 64, 64), 20 / 255)
    model = CodeModel()
    (multi,) = model(image).sigmoid().tolist()
    (single,) = model(image).softmax(dim=1).tolist()
    assert _probs(model, None) == pytest.approx(multi) and _probs(model, "multiclass") == pytest.approx(single)
    assert _probs(CodeModel(task="multiclass"), "multilabel") == pytest.approx(multi)
    with pytest.raises(ConfigError, match="threshold"):
        next(predict(model, ["x.png"], scoring=Scoring(threshold=0.0)))
    with pytest.raises(ConfigError, match="unknown task"):
        next(predict(model, ["x.png"], scoring=Scoring(task="multi")))


def _probs(model: nn.Module, task: str | None) -> list[float]:
    """The probabilities ``predict`` gives the image of code 20, by class index; its labels checked."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "20.png"
        Image.new("RGB", (50, 40), (20, 0, 0)).save(path)
        (answer,) = predict(model, [path], preprocessing=Preprocessing.of(model, img_size=64), scoring=Scoring(task=task))
    probs = {score.index: score.prob for score in answer.topk}
    if answer.labels is None:
        assert "labels" not in answer.to_dict()
    else:
        assert [s.index for s in answer.labels] == [i for i in sorted(probs, key=probs.get, reverse=True)
                                                    if probs[i] > 0.5]
    return [probs[i] for i in range(3)]


def test_eighty_multilabel_classes_without_names_are_cocos(data):
    model = CodeModel(num_classes=80)
    (answer,) = predict(model, [data.images / "20.png"], preprocessing=Preprocessing.of(model, img_size=64), topk=1)
    assert answer.topk[0].label == "person" and [s.label for s in answer.labels] == ["person", "bicycle"]


@pytest.mark.slow  # forward passes of tresnet_m (seconds on a CPU)
def test_a_multilabel_checkpoint_saved_by_tresnet_sets_the_task(data, tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "ml.safetensors"
    tresnet.save_checkpoint(tresnet.create_model("tresnet_m", num_classes=3, task="multilabel"), path,
                            class_names=CLASSES)
    out = tmp_path / "report.json"
    assert main(["validate", "--data", str(data.images), "--annotations", str(data.annotations),
                 "--checkpoint", str(path), "--json", str(out), *SMALL]) == 0
    assert "mAP " in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["task"] == "multilabel" and report["images"] == 5 and report["checkpoint"] == str(path)
    assert 0 <= report["map"] <= 100 and len(report["ap_per_class"]) == 3
    assert main(["predict", "--checkpoint", str(path), str(data.images / "20.png"), *SMALL[:4]]) == 0
    assert "labels (probability > 0.5):" in capsys.readouterr().out
    # the checkpoint records its task: an images folder without labels is told to bring them
    assert main(["validate", "--data", str(data.images), "--checkpoint", str(path), *SMALL]) == 1
    err = capsys.readouterr().err
    assert "needs its labels: " in err and "--annotations FILE" in err
