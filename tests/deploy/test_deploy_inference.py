"""int8's two backends (PT2E, ONNX Runtime): the rule that picks one, --int8-backend, and the ONNX Runtime model
that validate and predict run like a PyTorch one."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import tresnet
from helpers import randomize_norms, requires_onnx
from tresnet.cli.main import main
from tresnet.deploy import BOUNDS, OnnxModel, check_against_exact, onnx_model
from tresnet.deploy.inference import (
    INFERENCE_NUMBER_FORMATS,
    INT8_BACKENDS,
    check_inference_number_format,
    check_inference_precision,
    check_int8_backend,
    choose_int8_backend,
    inference_model,
    resolve_int8_backend,
)
from tresnet.errors import ConfigError, MissingDependencyError
from tresnet.inference.runner import RunOptions, make_inference_model

SIZE = 64


@pytest.fixture(scope="module")
def genet() -> nn.Module:
    return randomize_norms(tresnet.create_model("genet_light", num_classes=10)).eval()


@pytest.mark.parametrize(("amx", "installed", "chosen"), [
    (True, {"pt2e", "onnx"}, "pt2e"),    # Sapphire Rapids: PT2E's oneDNN kernels use the AMX tiles
    (False, {"pt2e", "onnx"}, "onnx"),   # AVX-512 VNNI and AVX2 CPUs: ONNX Runtime
    (False, {"pt2e"}, "pt2e"),           # ONNX Runtime is an optional extra
    (True, {"onnx"}, "onnx"),
    (True, set(), "pt2e"),               # neither: the preferred one, whose use says how to install it
])
def test_auto_takes_pt2e_with_amx_and_onnx_runtime_elsewhere(amx, installed, chosen):
    assert choose_int8_backend(amx=amx, installed=installed) == chosen


def test_precision_is_autocast_and_the_number_format_is_what_runs():
    assert INFERENCE_NUMBER_FORMATS == ("fp32", "bf16", "int8")
    with pytest.raises(ConfigError, match="^int8 is a number format, not an autocast precision: use --number-format "
                                          "int8$"):
        check_inference_precision("int8", "cpu")
    with pytest.raises(ConfigError, match="runs without autocast: leave out --precision amp"):
        check_inference_precision("amp", "cpu", "bf16")
    with pytest.raises(ConfigError, match="bad --number-format 'amp': choose one of fp32, bf16, int8"):
        check_inference_number_format("amp", "cpu")
    assert check_inference_precision("bf16", "cpu") == "bf16"  # bfloat16 autocast of the model itself


@pytest.mark.filterwarnings("ignore::tresnet.runtime.EmulatedBf16Warning")  # on a CPU without bfloat16 arithmetic
def test_an_autocast_precision_runs_the_model_itself_under_that_autocast(genet):
    for precision in ("fp32", "bf16"):
        inference = make_inference_model(genet, "cpu", RunOptions(precision=precision), img_size=SIZE)
        assert inference.runner is genet and inference.precision == precision
        assert inference.settings() == {"number_format": "fp32"}
    assert inference(torch.rand(2, 3, SIZE, SIZE)).dtype == torch.float32
    folded = make_inference_model(genet, "cpu", RunOptions(number_format="bf16"), img_size=SIZE)
    assert folded.runner is not genet and folded.precision == "fp32"


def test_a_bad_backend_is_a_one_line_error():
    assert INT8_BACKENDS == ("auto", "pt2e", "onnx")
    with pytest.raises(ConfigError, match=r"bad --int8-backend 'tensorrt': choose one of auto, pt2e, onnx"):
        resolve_int8_backend("tensorrt")
    with pytest.raises(ConfigError, match="--int8-backend is for --number-format int8, not fp32"):
        check_int8_backend("fp32", "onnx")
    check_int8_backend("fp32", None)
    assert resolve_int8_backend("auto") == resolve_int8_backend(None) in ("pt2e", "onnx")


def test_a_backend_without_its_packages_says_how_to_install_them(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match=r"onnxruntime is missing\): pip install 'tresnet\[export\]'"):
        resolve_int8_backend("onnx")
    monkeypatch.setitem(sys.modules, "torchao", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'tresnet\[int8\]'"):
        resolve_int8_backend("pt2e")


@requires_onnx
def test_the_onnx_runtime_backend_runs_like_the_model(genet):
    images = torch.rand(6, 3, SIZE, SIZE)
    runner = inference_model(genet, "int8", "cpu", calibration=images, int8_backend="onnx")
    assert isinstance(runner, OnnxModel) and runner.number_format == "int8"
    assert (runner.backend, runner.backend_name, runner.calibrated_on, runner.img_size) == (
        "onnx", "ONNX Runtime", 6, (SIZE, SIZE))
    found = check_against_exact(runner, genet, [images[:4], images[4:5]], "int8")
    assert found.ok and found.limit == BOUNDS["int8"].floor, found.describe()
    with torch.inference_mode():  # as validate and predict call it: channels-last batches, inference mode
        out = runner(images[:3].contiguous(memory_format=torch.channels_last))
    assert out.dtype == torch.float32 and out.shape == (3, 10) and runner.train().training is True
    with pytest.raises(ConfigError, match="runs on the CPU"):
        runner(images.to("meta"))


@requires_onnx
def test_the_fp32_onnx_model_is_the_models_function(genet):
    runner = onnx_model(genet, img_size=SIZE, threads=1)
    images = torch.rand(2, 3, SIZE, SIZE)
    found = check_against_exact(runner, genet, [images], "fp32")
    assert found.ok and runner.number_format == "fp32" and runner.calibrated_on is None, found.describe()
    assert "fp32 in ONNX Runtime at 64x64" in repr(runner)


@pytest.mark.parametrize(("extra", "message"), [
    (["--int8-backend", "onnx"], "--int8-backend is for --number-format int8, not fp32"),
    (["--number-format", "int8", "--calibration", "{tmp}", "--int8-backend", "tflite"], "bad --int8-backend 'tflite'"),
])
def test_validate_and_predict_check_the_backend_before_any_work(extra, message, tmp_path, capsys):
    for command in (["validate", "--data", str(tmp_path)], ["predict", str(tmp_path)]):
        assert main([*command, "--model", "genet_light", *[a.format(tmp=tmp_path) for a in extra]]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_export_writes_int8_with_onnx_runtime_only(tmp_path, capsys):
    args = ["export", "--model", "genet_light", "--format", "onnx", "--output", str(tmp_path / "m.onnx"),
            "--number-format", "int8", "--calibration", str(tmp_path)]
    assert main([*args, "--int8-backend", "pt2e"]) == 1
    assert "--int8-backend pt2e has no file form" in capsys.readouterr().err
    assert main([*args[:-4], "--int8-backend", "onnx"]) == 1
    assert "--int8-backend is for --number-format int8, not fp32" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_the_int8_note_names_the_backend_and_how_it_was_chosen(capsys):
    from argparse import Namespace

    from tresnet.cli._common import announce_deployment

    announce_deployment(Namespace(int8_backend="onnx", calibration="calib", calibration_images=None), "int8",
                        "validate")
    err = capsys.readouterr().err
    assert err.startswith("tresnet validate: note: int8 by onnx (--int8-backend): calibrating on up to 128 images "
                          "of calib and exporting the model to ONNX") and err.count("\n") == 1
    announce_deployment(Namespace(int8_backend=None, calibration="calib", calibration_images=6), "int8", "predict")
    auto = resolve_int8_backend(None)
    assert f"int8 by {auto} (the faster on this CPU, --int8-backend auto)" in capsys.readouterr().err
