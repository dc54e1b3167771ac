"""`tresnet train` on the command line: options, the digits default recipe, one-line errors."""

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
    assert "--amp" not in out  # deprecated: still accepted, no longer shown


def test_deprecated_amp_flags_still_parse_with_a_warning(tmp_path, capsys):
    code = main(["train", "--data", "digits", "--output", str(tmp_path / "o"), "--amp", "--amp-dtype", "bfloat16",
                 "--precision", "fp16"])
    err = capsys.readouterr().err
    assert "tresnet train: warning: --amp --amp-dtype bfloat16 is deprecated: use --precision bf16" in err
    assert code == 1 and "precision is 'fp16'" in err  # they mean bf16: a contradiction is refused
    recipe = tmp_path / "old.yaml"
    recipe.write_text("amp: true\nprecision: bf16\n")
    assert main(["train", "--data", "digits", "--output", str(tmp_path / "o"), "--config", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert "tresnet train: warning: amp / amp_dtype are deprecated: use precision='amp'" in err
    assert "tresnet train: error: amp / amp_dtype in recipe" in err


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
    assert saved["img_size"] == 32 and saved["batch_size"] == 8 and saved["data"] == "digits"
    assert "best val top-1" in capsys.readouterr().out
    # the same command again without --resume would overwrite the run: refused in one line
    assert main(["train", "--data", "digits", "--output", str(out), *QUICK]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tresnet train: error:") and "--resume" in err and "\n" not in err
    # --resume with a setting that contradicts the saved run
    assert main(["train", "--output", str(out), "--resume", "--lr", "0.5"]) == 1
    assert "lr (saved" in capsys.readouterr().err
    assert saved["precision"] == "fp32" and "amp" not in saved
    assert main(["train", "--output", str(out), "--resume", "--amp"]) == 1  # the old flag means precision amp
    err = capsys.readouterr().err
    assert "warning: --amp is deprecated: use --precision amp" in err and "precision (saved 'fp32', given 'amp')" in err


def test_bad_recipe_key_is_one_line(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("epochs: 1\nwarmup: 3\n")
    code = main(["train", "--data", "digits", "--output", str(tmp_path / "o"), "--config", str(recipe)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "unknown key 'warmup'" in err and "warmup_epochs" in err and "\n" not in err


@requires_sklearn
def test_bad_values_are_one_line(tmp_path, capsys):
    code = main(["train", "--data", "digits", "--output", str(tmp_path / "o"), "--optimizer", "adam"])
    assert code == 1 and "optimizer" in capsys.readouterr().err
    code = main(["train", "--data", "digits", "--output", str(tmp_path / "o"), "--img-size", "30", *QUICK])
    assert code == 1 and "30x30" in capsys.readouterr().err
