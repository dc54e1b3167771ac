"""After the README's demos, the next commands a user types answer as the run's own validation did: the
checkpoint records its preprocessing (32 px, squash) and split, `validate --data digits` reproduces the best
score, `tresnet data` writes the images `predict` then answers on, and `export` writes a 32 px model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tresnet
from helpers import requires_onnx, requires_sklearn
from training.train_testdata import make_train_val
from tresnet.cli.main import main

# One short epoch that learns (about 60% top-1 on digits): a score that a wrong preprocessing would not reproduce.
QUICK = ["--model", "genet_light", "--epochs", "1", "--max-steps-per-epoch", "60", "--batch-size", "16",
         "--warmup-epochs", "0", "--no-progress", "--threads", "1"]


def _train(out: Path, *args: str) -> dict:
    assert main(["train", "--output", str(out), *QUICK, *args]) == 0
    return json.loads((out / "summary.json").read_text())


def _validate(capsys, tmp_path: Path, *args: str) -> dict:
    report = tmp_path / "report.json"
    assert main(["validate", *args, "--workers", "0", "--no-progress", "--json", str(report)]) == 0
    captured = capsys.readouterr()
    assert "it/s" not in captured.err  # --no-progress: no bar
    return json.loads(report.read_text()) | {"printed": captured.out}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "run"
    return out, _train(out, "--data", "digits")


@pytest.fixture(scope="module")
def mosaic_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mosaics") / "run"
    return out, _train(out, "--task", "multilabel", "--data", "digits-multilabel")


@requires_sklearn
@pytest.mark.slow  # a short digits run (seconds)
def test_the_digits_checkpoint_records_its_preprocessing_and_split(digits_run):
    out, _ = digits_run
    model = tresnet.create_model(checkpoint_path=out / "best.safetensors")
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32) and cfg["crop_mode"] == "squash"
    assert cfg["preprocessing_source"] == "checkpoint" and cfg["mean"] == (0.485, 0.456, 0.406)
    meta = model.checkpoint_info.metadata
    assert (meta["trained_on"], float(meta["val_split"]), int(meta["split_seed"])) == ("digits", 0.2, 0)
    assert tresnet.get_pretrained_cfg("genet_light")["input_size"] == (3, 192, 192)  # the registry is untouched


@requires_sklearn
@pytest.mark.slow
def test_validate_on_the_bundled_digits_gives_the_runs_own_best_top1(digits_run, tmp_path, capsys):
    out, summary = digits_run
    report = _validate(capsys, tmp_path, "--data", "digits", "--checkpoint", str(out / "best.safetensors"))
    assert 0.2 < summary["best_top1"] < 1.0  # trained: a score that could differ
    assert report["images"] == 359 and report["top1"] == pytest.approx(100 * summary["best_top1"], abs=1e-9)
    assert report["img_size"] == 32 and report["preprocessing"]["crop_mode"] == "squash"
    assert report["preprocessing"]["source"] == "checkpoint"
    assert "preprocessing: squash to 32x32 bilinear" in report["printed"]
    assert "(recorded in the checkpoint)" in report["printed"]


@requires_sklearn
@pytest.mark.slow
def test_predict_on_the_written_images_answers_as_the_validation(digits_run, tmp_path, capsys):
    out, summary = digits_run
    checkpoint = str(out / "best.safetensors")
    images = tmp_path / "digits_val"
    assert main(["data", "digits", "--output", str(images), "--checkpoint", checkpoint]) == 0
    assert "wrote 359 val images of digits at 32x32" in capsys.readouterr().out
    answers = tmp_path / "answers.json"
    assert main(["predict", "--checkpoint", checkpoint, str(images), "--topk", "1", "--json", str(answers),
                 "--no-progress"]) == 0
    assert "preprocessing: squash to 32x32" in capsys.readouterr().err
    written = json.loads(answers.read_text())
    assert written["preprocessing"]["img_size"] == [32, 32] and written["model"] == "genet_light"
    predictions = written["predictions"]
    right = sum(Path(p["file"]).parent.name == p["topk"][0]["label"] for p in predictions)
    assert len(predictions) == 359 and right / 359 == pytest.approx(summary["best_top1"], abs=1e-9)
    # the same images in memory (--data digits) give the same answers (the same tensors, batched in another
    # order: the probabilities may differ in their last bits)
    assert main(["predict", "--checkpoint", checkpoint, "--data", "digits", "--topk", "1", "--json",
                 str(answers)]) == 0
    in_memory = {p["file"].split("/")[-1]: p["topk"][0] for p in json.loads(answers.read_text())["predictions"]}
    for p in predictions:
        twin = in_memory[Path(p["file"]).stem]
        assert twin["label"] == p["topk"][0]["label"] and twin["prob"] == pytest.approx(p["topk"][0]["prob"], rel=1e-5)
    report = _validate(capsys, tmp_path, "--data", str(images), "--checkpoint", checkpoint)
    assert report["top1"] == pytest.approx(100 * summary["best_top1"], abs=1e-9)


@requires_sklearn
@requires_onnx
@pytest.mark.slow
def test_export_writes_a_32_px_model(digits_run, tmp_path, capsys):
    out, _ = digits_run
    assert main(["export", "--checkpoint", str(out / "best.safetensors"), "--format", "onnx", "--output",
                 str(tmp_path / "digits.onnx")]) == 0
    assert "32x32" in capsys.readouterr().out


@requires_sklearn
@pytest.mark.slow
def test_validate_on_the_bundled_mosaics_gives_the_runs_own_best_map(mosaic_run, tmp_path, capsys):
    out, summary = mosaic_run
    checkpoint = str(out / "best.safetensors")
    # mAP ranks the scores, so the 1e-7 that another batch size or thread count gives the logits can move
    # its 4th decimal: validate as the run did (batch 16, one thread) to reproduce it exactly
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = _validate(capsys, tmp_path, "--data", "digits-multilabel", "--checkpoint", checkpoint,
                           "--batch-size", "16")
    finally:
        torch.set_num_threads(threads)
    assert report["images"] == 1000 and report["map"] == pytest.approx(100 * summary["best_map"], abs=1e-12)
    assert report["threshold"] == 0.5 and report["preprocessing"]["crop_mode"] == "squash"
    images = tmp_path / "mosaics"
    assert main(["data", "digits-multilabel", "--output", str(images), "--checkpoint", checkpoint]) == 0
    from_files = _validate(capsys, tmp_path, "--data", str(images / "labels.csv"), "--checkpoint", checkpoint)
    assert from_files["map"] == pytest.approx(report["map"], abs=1e-3)  # the same to the printed decimals


@requires_sklearn
@pytest.mark.slow
def test_a_task_other_than_the_checkpoints_is_a_one_line_error(digits_run, mosaic_run, capsys):
    for (out, _), task, data in ((digits_run, "multilabel", "digits-multilabel"), (mosaic_run, "multiclass", "digits")):
        for command in (["validate", "--data", data], ["predict", "--data", data]):
            assert main([*command, "--checkpoint", str(out / "best.safetensors"), "--task", task]) == 1
            err = capsys.readouterr().err.strip().splitlines()
            assert err[-1].startswith(f"tresnet {command[0]}: error: checkpoint ") and "leave --task out" in err[-1]
    out, _ = digits_run
    assert main(["validate", "--data", "digits-multilabel", "--checkpoint", str(out / "best.safetensors")]) == 1
    assert ("digits-multilabel is multilabel data and the model is multiclass: use data of the model's task "
            "(--data digits or ") in capsys.readouterr().err


@pytest.mark.slow  # a short run on an image folder (seconds)
def test_a_checkpoint_trained_with_squash_validates_with_squash(tmp_path, capsys):
    data = make_train_val(tmp_path / "data", train_per_class=6, val_per_class=3)
    out = tmp_path / "run"
    summary = _train(out, "--data", str(data), "--img-size", "32", "--crop-mode", "squash", "--batch-size", "6",
                     "--workers", "0")
    report = _validate(capsys, tmp_path, "--data", str(data / "val"), "--checkpoint", str(out / "best.safetensors"))
    assert report["preprocessing"]["crop_mode"] == "squash" and report["img_size"] == 32
    assert report["top1"] == pytest.approx(100 * summary["best_top1"], abs=1e-9)
    # an explicit flag still overrides what the checkpoint recorded
    cropped = _validate(capsys, tmp_path, "--data", str(data / "val"), "--checkpoint", str(out / "best.safetensors"),
                        "--crop-pct", "0.875")
    # (GENet rounds the resize up: 32 / 0.875 = 36.6 -> 37)
    assert cropped["preprocessing"]["crop_mode"] == "center" and cropped["preprocessing"]["resize_size"] == 37


@pytest.fixture(scope="module")
def canvases_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("canvases") / "run"
    # a few steps of the demo recipe at 64 px: a detector whose AP a wrong preprocessing or split would not reproduce
    return out, _train(out, "--task", "detection", "--data", "digits-detection", "--img-size", "64",
                       "--fpn-channels", "64", "--max-steps-per-epoch", "20", "--max-val-images", "64")


@requires_sklearn
@pytest.mark.slow
def test_validate_on_the_bundled_canvases_gives_the_runs_own_ap_and_coco_tools_agree(canvases_run, tmp_path, capsys):
    out, summary = canvases_run
    checkpoint = str(out / "best.safetensors")
    report = _validate(capsys, tmp_path, "--data", "digits-detection", "--checkpoint", checkpoint)
    assert report["task"] == "detection" and report["images"] == 500 and report["img_size"] == 64
    images = tmp_path / "canvases"
    assert main(["data", "digits-detection", "--output", str(images), "--checkpoint", checkpoint]) == 0
    assert len(list(images.glob("*.png"))) == 500 and (images / "instances.json").is_file()
    from_files = _validate(capsys, tmp_path, "--data", str(images), "--annotations", str(images / "instances.json"),
                           "--checkpoint", checkpoint)
    assert from_files["ap"] == pytest.approx(report["ap"], abs=1e-3)  # the PNGs are lossless
    assert 0.0 <= summary["best_ap"] <= 1.0
