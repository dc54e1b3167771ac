"""`tresnet train` on the command line: options, the digits default recipe (TResNet and GENet), family
forms of recipes, one-line errors."""

from __future__ import annotations

import json

import pytest
import yaml

from helpers import requires_sklearn
from tresnet.cli.main import main

QUICK = ["--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "8", "--max-val-images", "16",
         "--no-progress", "--threads", "1"]


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--config", "--batch-size", "--init-checkpoint", "--resume", "--precision", "--channels-last",
                 "--ema-decay", "--mixup", "--auto-augment", "digits-demo", "imagenet-paper", "fp32, amp, bf16, fp16"):
        assert flag in out, flag
    assert "--amp" not in out


def test_the_amp_options_of_earlier_versions_are_gone(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--data", "digits", "--output", str(tmp_path / "o"), "--amp"])
    assert info.value.code == 2 and "--amp" in capsys.readouterr().err
    recipe = tmp_path / "old.yaml"
    recipe.write_text("amp: true\n")
    assert main(["train", "--data", "digits", "--output", str(tmp_path / "o"), "--config", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tresnet train: error: 'amp' in recipe") and "is now run.precision (--precision): amp" in err


def test_unknown_option_is_refused(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--data", "digits", "--output", "x", "--learning-rate", "1"])
    assert info.value.code == 2 and "--learning-rate" in capsys.readouterr().err


@requires_sklearn
def test_digits_trains_end_to_end_with_the_demo_recipe(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "tresnet_m", "--data", "digits", "--output", str(out), *QUICK]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["best_top1"] <= 1.0 and summary["epochs"] == 1 and summary["num_classes"] == 10
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["img_size"] == 32 and saved["optimisation"]["batch_size"] == 8
    assert saved["data"]["train"] == "digits"
    assert "best val top-1" in capsys.readouterr().out
    # the same command again without --resume would overwrite the run: refused in one line
    assert main(["train", "--data", "digits", "--output", str(out), *QUICK]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tresnet train: error:") and "--resume" in err and "\n" not in err
    # --resume with a setting that contradicts the saved run
    assert main(["train", "--output", str(out), "--resume", "--lr", "0.5"]) == 1
    assert "lr (saved" in capsys.readouterr().err
    assert saved["run"]["precision"] == "fp32" and "amp" not in saved["run"]
    assert main(["train", "--output", str(out), "--resume", "--precision", "amp"]) == 1
    assert "precision (saved 'fp32', given 'amp')" in capsys.readouterr().err


def test_bad_recipe_key_is_one_line(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("optimisation:\n  epochs: 1\n  warmup: 3\n")
    code = main(["train", "--data", "digits", "--output", str(tmp_path / "o"), "--config", str(recipe)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "unknown key 'warmup' in the section 'optimisation'" in err and "warmup_epochs" in err
    assert "\n" not in err
    recipe.write_text("epochs: 1\n")  # a recipe of an earlier version, without sections
    code = main(["train", "--data", "digits", "--output", str(tmp_path / "o"), "--config", str(recipe)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "'epochs' in recipe" in err and "optimisation: {epochs: 1}" in err and "\n" not in err


@requires_sklearn
def test_bad_values_are_one_line(tmp_path, capsys):
    code = main(["train", "--data", "digits", "--output", str(tmp_path / "o"), "--optimizer", "lamb"])
    assert code == 1 and "optimizer" in capsys.readouterr().err
    code = main(["train", "--data", "digits", "--output", str(tmp_path / "o"), "--img-size", "30", *QUICK])
    assert code == 1 and "30x30" in capsys.readouterr().err


@requires_sklearn
def test_a_genet_trains_on_digits_and_its_checkpoint_predicts_without_a_model_name(tmp_path, capsys):
    from PIL import Image

    from tresnet.data.digits import load_digits_images

    out = tmp_path / "genet"
    assert main(["train", "--model", "genet_light", "--data", "digits", "--output", str(out), *QUICK]) == 0
    printed = capsys.readouterr().out
    assert "norm bn" in printed and "inputs normalised with mean (0.485, 0.456, 0.406)" in printed
    saved = yaml.safe_load((out / "config.yaml").read_text())["model"]
    assert saved["name"] == "genet_light" and saved["norm"] == "bn" and saved["img_size"] == 32
    images, labels = load_digits_images(32)
    Image.fromarray(images[0].permute(1, 2, 0).numpy()).save(tmp_path / "digit.png")
    assert main(["predict", "--checkpoint", str(out / "best.safetensors"), "--topk", "3", "--device", "cpu",
                 str(tmp_path / "digit.png")]) == 0
    captured = capsys.readouterr()
    assert "genet_light: 10 classes, weights" in captured.err and len(captured.out.splitlines()) == 4


def test_in_place_abn_with_a_genet_is_one_line(tmp_path, capsys):
    code = main(["train", "--model", "genet_light", "--norm", "inplace_abn", "--data", "digits", "--output",
                 str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err
    assert err == ("tresnet train: error: norm 'inplace_abn' is not available for genet_light (GENet norms: bn): "
                   "leave norm out for the family's default, or pass --norm bn")


def test_the_genet_form_of_a_recipe_is_noted(tmp_path, capsys):
    # a missing data folder stops the run after the configuration is built
    code = main(["train", "--model", "genet_light", "--config", "finetune", "--data", str(tmp_path / "none"),
                 "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and "note: recipe finetune-genet: the form of finetune for this model's family" in err
    assert main(["train", "--model", "tresnet_m", "--config", "finetune", "--data", str(tmp_path / "none"),
                 "--output", str(tmp_path / "o")]) == 1
    assert "note" not in capsys.readouterr().err
