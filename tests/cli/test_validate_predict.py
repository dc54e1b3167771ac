"""`tresnet validate` and `tresnet predict` end to end, with tresnet_m at a small input size, and with
genet_light: the official release's layout, timm's and ours."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import tresnet
from tresnet.cli.main import main
from tresnet.data import imagenet_class_names
from tresnet.data.imagenet import imagenet_synsets
from tresnet.data.transforms import Preprocessing

CLASSES = ["ant", "bee", "cow"]
SMALL = ["--img-size", "64", "--device", "cpu"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes x 2 images (JPEG and PNG, RGB and greyscale) and one unreadable file."""
    root = tmp_path_factory.mktemp("val")
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir()
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(root / name / "a.jpg")
        Image.fromarray(rng.integers(0, 256, (90, 70), dtype=np.uint8)).save(root / name / "b.png")
    (root / "bee" / "c.jpg").write_text("this is not a picture")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 3-class tresnet_m saved by tresnet, naming its classes."""
    torch.manual_seed(0)
    model = tresnet.create_model("tresnet_m", num_classes=3)
    path = tmp_path_factory.mktemp("ckpt") / "ants.safetensors"
    tresnet.save_checkpoint(model, path, class_names=CLASSES)
    return path


@pytest.mark.slow  # a forward pass of tresnet_m (seconds on a CPU)
def test_validate_prints_accuracy_and_writes_json(folder, checkpoint, tmp_path, capsys):
    out = tmp_path / "result.json"
    code = main(["validate", "--data", str(folder), "--model", "tresnet_m", "--checkpoint", str(checkpoint),
                 "--workers", "0", "--batch-size", "4", "--json", str(out), *SMALL])
    captured = capsys.readouterr()
    assert code == 0
    assert "top-1" in captured.out and "top-5 100.000%" in captured.out  # 3 classes: top-5 holds all
    assert "6 images, 1 skipped" in captured.out and "resize 73 bilinear, centre crop 64x64" in captured.out
    assert "c.jpg" in captured.err and "skipped" in captured.err and "img/s" in captured.err
    report = json.loads(out.read_text())
    assert {"top1", "top5", "images", "skipped", "model", "checkpoint", "img_size", "seconds"} <= set(report)
    assert report["images"] == 6 and report["skipped"] == 1 and report["img_size"] == 64
    assert report["model"] == "tresnet_m" and report["checkpoint"] == str(checkpoint)
    assert report["accuracy_unit"] == "percent" and report["top5"] == 100.0
    correct = report["top1"] * 6 / 100  # a whole number of the 6 images
    assert correct == pytest.approx(round(correct))
    assert report["skipped_files"] == [str(folder / "bee" / "c.jpg")]


@pytest.mark.slow  # a forward pass of tresnet_m (seconds on a CPU)
def test_validate_limit_and_strict(folder, checkpoint, capsys):
    base = ["validate", "--data", str(folder), "--model", "tresnet_m", "--checkpoint", str(checkpoint),
            "--workers", "0", *SMALL]
    assert main([*base, "--limit", "2"]) == 0
    assert "2 of 7 images" in capsys.readouterr().out
    assert main([*base, "--strict"]) == 1
    err = capsys.readouterr().err
    assert "tresnet validate: error: cannot read image" in err and "c.jpg" in err and "strict" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("extra, message", [
    ([], "has 3 classes but the model has 1000"),
    (["--img-size", "30"], "input size 30x30 is not supported"),
    (["--device", "cuda:99"], "cuda:99"),  # absent here: no CUDA, or not that many GPUs
])
def test_validate_bad_setups_are_one_line_errors(folder, capsys, extra, message):
    assert main(["validate", "--data", str(folder), "--model", "tresnet_m", "--workers", "0", *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("make, message", [
    (lambda root: None, "does not exist"),
    (lambda root: root.mkdir(), "is empty"),
])
def test_validate_bad_folders(tmp_path, capsys, make, message):
    root = tmp_path / "val"
    make(root)
    assert main(["validate", "--data", str(root), "--model", "tresnet_m", "--workers", "0"]) == 1
    assert message in capsys.readouterr().err


def test_validate_class_names_must_match_the_checkpoint(folder, tmp_path, capsys):
    model = tresnet.create_model("tresnet_m", num_classes=3)
    path = tmp_path / "other.safetensors"
    tresnet.save_checkpoint(model, path, class_names=["ant", "cat", "cow"])
    assert main(["validate", "--data", str(folder), "--model", "tresnet_m", "--checkpoint", str(path),
                 "--workers", "0", *SMALL]) == 1
    assert "index 1 is 'bee' in the data, 'cat' in the checkpoint" in capsys.readouterr().err


@pytest.mark.slow  # a forward pass of tresnet_m (seconds on a CPU)
def test_predict_answers_good_files_and_fails_for_bad_ones(folder, checkpoint, tmp_path, capsys):
    out = tmp_path / "predictions.json"
    code = main(["predict", "--model", "tresnet_m", "--checkpoint", str(checkpoint), "--topk", "5",
                 "--json", str(out), str(folder / "ant"), str(folder / "bee"), str(tmp_path / "missing.jpg"),
                 *SMALL])
    captured = capsys.readouterr()
    assert code == 1
    good = [str(folder / c / n) for c in ("ant", "bee") for n in ("a.jpg", "b.png")]
    for name in good:
        assert name in captured.out
    assert "c.jpg: not an image" in captured.err and "missing.jpg: no such file" in captured.err
    results = {r["file"]: r for r in json.loads(out.read_text())["predictions"]}
    assert set(results) == {*good, str(folder / "bee" / "c.jpg"), str(tmp_path / "missing.jpg")}
    for name in good:
        answers = results[name]["topk"]
        assert len(answers) == 3  # --topk 5 of a 3-class model
        assert {a["label"] for a in answers} == set(CLASSES)
        assert all(CLASSES[a["index"]] == a["label"] for a in answers)
        assert sum(a["prob"] for a in answers) == pytest.approx(1.0, abs=1e-5)
        assert [a["prob"] for a in answers] == sorted((a["prob"] for a in answers), reverse=True)
    assert results[str(folder / "bee" / "c.jpg")]["topk"] == [] and "error" in results[str(folder / "bee" / "c.jpg")]


@pytest.mark.slow  # a forward pass of tresnet_m (seconds on a CPU)
def test_predict_imagenet_labels_and_success_exit_code(folder, capsys):
    image = folder / "cow" / "a.jpg"
    assert main(["predict", "--model", "tresnet_m", "--topk", "2", str(image), *SMALL]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == str(image) and len(lines) == 3
    names = set(imagenet_class_names())
    label = lines[1].split("%", 1)[1].rsplit(" (", 1)[0].strip()
    assert label in names
    assert "random weights" in captured.err


def test_predict_folder_without_images(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--model", "tresnet_m", str(tmp_path / "empty"), *SMALL]) == 1
    assert "no image files in folder" in capsys.readouterr().err


@pytest.mark.slow  # a forward pass of tresnet_m (seconds on a CPU)
def test_a_checkpoint_saved_by_tresnet_names_its_model(folder, checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "answers.json"
    assert main(["predict", "--checkpoint", str(checkpoint), "--json", str(out), str(folder / "ant" / "a.jpg"),
                 *SMALL]) == 0
    assert "tresnet_m: 3 classes, weights" in capsys.readouterr().err
    assert json.loads(out.read_text())["predictions"][0]["topk"][0]["label"] in CLASSES
    report = tmp_path / "report.json"
    monkeypatch.setattr("tresnet.runtime.cpu_has_bf16", lambda: False)  # as on an AVX2-only CPU
    assert main(["validate", "--data", str(folder), "--checkpoint", str(checkpoint), "--workers", "0",
                 "--precision", "bf16", "--json", str(report), *SMALL]) == 0
    result = json.loads(report.read_text())
    assert result["model"] == "tresnet_m" and result["precision"] == "bf16" and result["images"] == 6
    assert result["number_format"] == "fp32"  # --precision is autocast, as in train: the model itself runs
    captured = capsys.readouterr()
    assert "bf16 autocast" in captured.out and "--precision bf16 computes in bfloat16" in captured.err


def test_without_model_or_checkpoint_the_error_says_what_to_pass(folder, capsys):
    assert main(["validate", "--data", str(folder), "--workers", "0"]) == 1
    assert "no model: pass --model NAME" in capsys.readouterr().err


@pytest.mark.slow  # a forward pass of tresnet_m (seconds on a CPU)
def test_predict_from_python_gives_the_same_answers_as_the_command(folder, checkpoint, tmp_path):
    from tresnet.inference.predict import predict

    out = tmp_path / "cli.json"
    main(["predict", "--checkpoint", str(checkpoint), "--batch-size", "3", "--json", str(out), str(folder), *SMALL])
    model = tresnet.create_model(checkpoint_path=checkpoint)
    answers = [a.to_dict() for a in predict(model, [folder], preprocessing=Preprocessing.of(model, img_size=64), batch_size=3)]
    assert answers == json.loads(out.read_text())["predictions"]
    assert model.training  # its mode is given back
    assert [a["file"] for a in answers if "error" in a] == [str(folder / "bee" / "c.jpg")]


def test_validate_from_python_reports_what_the_json_holds(folder, checkpoint):
    from tresnet.data import UnreadableImageWarning
    from tresnet.inference.validate import validate
    from tresnet.tasks.classification import ClassificationReport

    model = tresnet.create_model(checkpoint_path=checkpoint)
    with pytest.warns(UnreadableImageWarning, match="c.jpg"):
        report = validate(model, folder, preprocessing=Preprocessing.of(model, img_size=64), batch_size=4, device="cpu", progress=False)
    assert isinstance(report, ClassificationReport) and report.facts.task == "multiclass"
    assert report.facts.images == 6 and report.facts.skipped == 1 and report.facts.precision == "fp32"
    assert report.facts.checkpoint == str(checkpoint) and report.facts.checkpoint_format == "tresnet"
    figures = report.to_dict()  # what --json writes
    assert figures["images"] == 6 and figures["skipped"] == 1 and figures["precision"] == "fp32"
    assert figures["checkpoint"] == str(checkpoint) and figures["checkpoint_format"] == "tresnet"
    assert figures["top1"] == report.top1 and figures["top5"] == report.top5 and figures["accuracy_unit"] == "percent"


def test_export_takes_the_model_from_the_checkpoint(checkpoint, tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--output", str(out),
                 "--img-size", "64"]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out
    assert main(["export", "--model", "tresnet_m", "--format", "torchscript", "--output", str(out),
                 "--number-format", "amp"]) == 1
    assert "bad --number-format 'amp' for export: choose one of fp32, fp16, bf16, int8" in capsys.readouterr().err


# --- GENet: the official release's layout, timm's, and ours -------------------------------------------

GENET_PREPROCESSING = "normalised with mean (0.485, 0.456, 0.406) std (0.229, 0.224, 0.225)"


@pytest.fixture(scope="module")
def genet_files(tmp_path_factory):
    """genet_light with random weights (1000 classes) in the official release's layout and in timm's."""
    from test_genet_checkpoints import official_file

    root = tmp_path_factory.mktemp("genet")
    torch.manual_seed(0)
    state = tresnet.create_model("genet_light").state_dict()
    torch.save(state, root / "gernet_s.pth")  # our names are timm's
    return {"official": official_file(root / "GENet_small.pth", "genet_light", state), "timm": root / "gernet_s.pth"}


@pytest.fixture(scope="module")
def thousand_classes(tmp_path_factory, folder):
    """1000 class folders of one small image each (only --limit of them are decoded)."""
    root = tmp_path_factory.mktemp("imagenet_val")
    picture = (folder / "ant" / "a.jpg").read_bytes()
    for synset in imagenet_synsets():
        (root / synset).mkdir()
        (root / synset / "a.jpg").write_bytes(picture)
    return root


def test_validate_a_genet_release_file_at_the_official_size_and_at_timms(genet_files, thousand_classes, tmp_path,
                                                                         capsys):
    reports = {}
    for fmt, size in (("official", []), ("timm", []), ("official", ["--img-size", "224"])):
        out = tmp_path / f"{fmt}{size}.json"
        assert main(["validate", "--data", str(thousand_classes), "--model", "genet_light", "--checkpoint",
                     str(genet_files[fmt]), "--limit", "2", "--workers", "0", "--device", "cpu", "--json", str(out),
                     *size]) == 0
        printed = capsys.readouterr().out
        crop = "resize 256 bilinear, centre crop 224x224" if size else "resize 220 bilinear, centre crop 192x192"
        assert f"preprocessing: {crop}, {GENET_PREPROCESSING}" in printed
        assert f"genet_light: 1000 classes, weights {genet_files[fmt]} ({fmt} format)" in printed
        assert ("published top-1 of genet_light: 75.7% at 192 px (the paper's evaluation), 76.874% at 224 px "
                "(timm's)") in printed
        reports[fmt, bool(size)] = json.loads(out.read_text())
    official, timm_file = reports["official", False], reports["timm", False]
    assert official["img_size"] == 192 and reports["official", True]["img_size"] == 224
    assert official["loss"] == pytest.approx(timm_file["loss"], rel=1e-6) and official["top1"] == timm_file["top1"]


def test_predict_with_a_genet_release_file_gives_imagenet_labels(genet_files, folder, tmp_path, capsys):
    answers = {}
    for fmt in ("official", "timm"):
        out = tmp_path / f"{fmt}.json"
        assert main(["predict", "--model", "genet_light", "--checkpoint", str(genet_files[fmt]), "--topk", "2",
                     "--device", "cpu", "--json", str(out), str(folder / "cow")]) == 0
        assert f"({fmt} format)" in capsys.readouterr().err
        answers[fmt] = json.loads(out.read_text())["predictions"]
    names = set(imagenet_class_names())
    assert len(answers["official"]) == 2 and all(a["topk"][0]["label"] in names for a in answers["official"])
    for ours, theirs in zip(answers["official"], answers["timm"], strict=True):
        assert [s["index"] for s in ours["topk"]] == [s["index"] for s in theirs["topk"]]
        assert ours["topk"][0]["prob"] == pytest.approx(theirs["topk"][0]["prob"], rel=1e-5)


def test_a_genet_checkpoint_of_ours_needs_no_model_name(folder, tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "ants_genet.safetensors"
    tresnet.save_checkpoint(tresnet.create_model("genet_light", num_classes=3), path, class_names=CLASSES)
    report = tmp_path / "report.json"
    assert main(["validate", "--data", str(folder), "--checkpoint", str(path), "--workers", "0", "--json",
                 str(report), *SMALL]) == 0
    printed = capsys.readouterr().out
    assert "genet_light: 3 classes" in printed and "published top-1" not in printed
    # GENet rounds the resize up (64 / 0.875 = 73.1 -> 74), TResNet down (73)
    assert f"preprocessing: resize 74 bilinear, centre crop 64x64, {GENET_PREPROCESSING}" in printed
    result = json.loads(report.read_text())
    assert result["model"] == "genet_light" and result["images"] == 6 and result["checkpoint_format"] == "tresnet"
    answers = tmp_path / "answers.json"
    assert main(["predict", "--checkpoint", str(path), "--json", str(answers), str(folder / "ant" / "a.jpg"),
                 *SMALL]) == 0
    assert "genet_light: 3 classes, weights" in capsys.readouterr().err
    assert json.loads(answers.read_text())["predictions"][0]["topk"][0]["label"] in CLASSES
