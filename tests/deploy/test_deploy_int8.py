"""int8: calibration images (and their errors), PT2E quantization within its bound of the float64 result,
ONNX Runtime's int8 export, and --number-format bf16 / int8 in validate, predict and export."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from PIL import Image
from torch import nn

import tresnet
from helpers import randomize_norms, requires_onnx, requires_torchao
from tresnet.cli.main import main
from tresnet.deploy import (
    BOUNDS,
    Calibration,
    check_against_exact,
    export_model,
    load_calibration_images,
    onnx_session,
    quantize,
)
from tresnet.errors import ConfigError, DataError, MissingDependencyError

SIZE = 64


@pytest.fixture(scope="module")
def tresnet_m() -> nn.Module:
    return randomize_norms(tresnet.create_model("tresnet_m", num_classes=10)).eval()


def _write_images(folder, count: int, size: int = 40, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for i in range(count):
        sub = folder / str(i % 2)
        sub.mkdir(parents=True, exist_ok=True)
        pixels = (torch.rand(size, size, 3, generator=gen) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(sub / f"{i}.png")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    _write_images(folder, 12)
    return folder


def test_calibration_images_are_taken_evenly_with_the_models_preprocessing(tresnet_m, image_folder):
    images = load_calibration_images(image_folder, tresnet_m, img_size=SIZE, count=5)
    assert images.shape == (5, 3, SIZE, SIZE) and images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() <= 1.0  # TResNet's [0, 1] input
    assert load_calibration_images(image_folder, tresnet_m, img_size=SIZE, count=100).shape[0] == 12


@pytest.mark.parametrize("layout,message", [
    ("missing", "does not exist"),
    ("file", "is not a folder"),
    ("empty", "holds no image"),
    ("text only", "holds no image"),
    ("unreadable", r"cannot read image .*bad\.png.*one of the calibration images: remove it"),
])
def test_calibration_folders_that_cannot_serve_are_one_line_errors(layout, message, tresnet_m, tmp_path):
    folder = tmp_path / "cal"
    if layout == "file":
        folder.write_text("x")
    elif layout != "missing":
        folder.mkdir()
    if layout == "text only":
        (folder / "notes.txt").write_text("no pictures here")
    if layout == "unreadable":
        _write_images(folder, 2)
        (folder / "0" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=message) as caught:
        load_calibration_images(folder, tresnet_m, img_size=SIZE)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("layout", ["empty", "unreadable"])
def test_export_with_bad_calibration_images_writes_nothing(layout, tmp_path, capsys):
    folder = tmp_path / "cal"
    folder.mkdir()
    if layout == "unreadable":
        (folder / "a.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "out" / "m.onnx"
    rc = main(["export", "--model", "tresnet_m", "--format", "onnx", "--output", str(out), "--img-size", str(SIZE),
               "--number-format", "int8", "--calibration", str(folder)])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("tresnet export: error:") and err.count("\n") == 1
    assert not out.exists() and not out.parent.exists()


def test_quantize_without_torchao_says_how_to_install_it(tresnet_m, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.quantization.pt2e.quantize_pt2e", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'tresnet\[int8\]'"):
        quantize(tresnet_m, torch.rand(2, 3, SIZE, SIZE))


@requires_torchao
def test_quantize_refuses_a_batch_that_is_not_images(tresnet_m):
    with pytest.raises(ConfigError, match=r"\(N, C, H, W\) batch"):
        quantize(tresnet_m, torch.rand(3, SIZE, SIZE), compile=False)


@requires_torchao
def test_int8_is_within_its_bound_of_the_float64_result(tresnet_m, image_folder):
    # The quantized graph run as reference ops (no compilation): the same quantization, checked quickly.
    int8 = quantize(tresnet_m, image_folder, img_size=SIZE, compile=False)
    images = load_calibration_images(image_folder, tresnet_m, img_size=SIZE)
    found = check_against_exact(int8, tresnet_m, [images[:4], images[4:7]], "int8")
    assert found.ok, found.describe()
    assert found.error > 100 * found.fp32_error  # really quantized
    assert int8.calibrated_on == 12 and int8.training is False
    assert sum(p.numel() for p in tresnet_m.parameters()) > 0 and tresnet_m.training is False  # untouched


@requires_torchao
@pytest.mark.slow
def test_compiled_int8_runs_any_batch_size_within_its_bound(tresnet_m, image_folder):
    images = load_calibration_images(image_folder, tresnet_m, img_size=SIZE)
    int8 = quantize(tresnet_m, images)
    found = check_against_exact(int8, tresnet_m, [images[:5], images[5:6]], "int8")
    assert found.ok, found.describe()
    with torch.no_grad():
        one, three = int8(images[:1]), int8(images[:3])
    assert one.dtype == torch.float32 and three.shape == (3, 10)
    assert torch.allclose(one[0], three[0], atol=1e-4 * three.abs().max().item())  # batch-independent
    with pytest.raises(ConfigError, match="runs on the CPU"):
        int8(images.to("meta"))


@requires_onnx
def test_int8_onnx_export_is_checked_and_runs_any_batch(tresnet_m, image_folder, tmp_path):
    import onnx
    import onnxruntime as ort

    path = tmp_path / "m_int8.onnx"
    report = export_model(tresnet_m, path, format="onnx", img_size=SIZE, dynamic_batch=True, number_format="int8",
                          calibration=Calibration(image_folder, count=8))
    assert report.number_format == "int8" and report.calibration_images == 8 and report.limit == BOUNDS["int8"].floor
    assert 0 < report.max_rel_diff <= report.limit
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": torch.rand(5, 3, SIZE, SIZE).numpy()})
    assert out.shape == (5, 10)
    # the benchmark's session: its threads sleep between runs rather than spin on the cores
    options = onnx_session(path, threads=1).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_bf16_torchscript_export_takes_and_returns_fp32(tresnet_m, tmp_path):
    path = tmp_path / "m_bf16.pt"
    report = export_model(tresnet_m, path, format="torchscript", img_size=SIZE, number_format="bf16")
    assert report.number_format == "bf16" and report.max_rel_diff <= report.limit
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        out = loaded(torch.rand(2, 3, SIZE, SIZE))
    assert out.dtype == torch.float32 and out.shape == (2, 10)


def _checkpoint(tresnet_m, tmp_path):
    path = tmp_path / "m.safetensors"
    tresnet.save_checkpoint(tresnet_m, path)
    return path


def test_validate_in_bf16_runs_the_folded_bfloat16_model(tresnet_m, image_folder, tmp_path, capsys):
    report = tmp_path / "v.json"
    rc = main(["validate", "--checkpoint", str(_checkpoint(tresnet_m, tmp_path)), "--data", str(image_folder),
               "--img-size", str(SIZE), "--device", "cpu", "--workers", "0", "--number-format", "bf16",
               "--json", str(report)])
    out = capsys.readouterr().out
    assert rc == 0 and "bf16 (folded, bfloat16 weights and activations)" in out and "top-1" in out
    written = json.loads(report.read_text())
    assert written["number_format"] == "bf16" and written["precision"] == "fp32"  # the folded model, no autocast


@pytest.mark.parametrize("extra,message", [
    (["--number-format", "int8"], "--number-format int8 needs calibration images"),
    (["--calibration", "{tmp}"], "are for --number-format int8, not fp32"),
    (["--number-format", "int8", "--calibration", "{tmp}", "--calibration-images", "0"], "at least 1"),
    (["--number-format", "int8", "--calibration", "{tmp}", "--device", "meta"], "bad --device"),
    (["--precision", "int8", "--calibration", "{tmp}"],
     "int8 is a number format, not an autocast precision: use --number-format int8"),
    (["--number-format", "bf16", "--precision", "amp"],
     "--number-format bf16 sets its own number format and runs without autocast: leave out --precision amp"),
    (["--number-format", "fp16"], "bad --number-format 'fp16': choose one of fp32, bf16, int8"),
])
def test_validate_and_predict_refuse_int8_options_that_do_not_fit(extra, message, image_folder, tmp_path, capsys):
    for command in (["validate", "--data", str(image_folder)], ["predict", str(image_folder)]):
        args = [*command, "--model", "tresnet_m"] + [a.format(tmp=tmp_path) for a in extra]
        assert main(args) == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


@requires_torchao
def test_validate_in_int8_calibrates_on_the_folder_and_reports_it(tresnet_m, image_folder, tmp_path, capsys,
                                                                  monkeypatch):
    # The quantized graph runs uncompiled here (the same numbers, without a minute of compiling): the
    # compiled kernels are test_compiled_int8_runs_any_batch_size_within_its_bound's.
    monkeypatch.setattr(torch, "compile", lambda module, **options: module)
    report = tmp_path / "v.json"
    rc = main(["validate", "--checkpoint", str(_checkpoint(tresnet_m, tmp_path)), "--data", str(image_folder),
               "--img-size", str(SIZE), "--device", "cpu", "--workers", "0", "--batch-size", "5",
               "--number-format", "int8", "--calibration", str(image_folder), "--calibration-images", "6",
               "--json", str(report)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert f"int8 (calibrated on 6 images of {image_folder})" in captured.out
    assert "calibrating on up to 6 images" in captured.err
    written = json.loads(report.read_text())
    assert written["number_format"] == "int8" and written["precision"] == "fp32"
    assert written["calibration_images"] == 6 and written["images"] == 12


LEAK_CHECK = """
import torch, tresnet
from tresnet.deploy import quantize
quantize(tresnet.create_model("genet_light", num_classes=4).eval(), torch.rand(2, 3, 32, 32))
print("compiled")
"""


@requires_torchao
@pytest.mark.slow
def test_compiling_int8_says_nothing_about_cuda(tmp_path):
    # Inductor's first compilation imports torch.utils.cpp_extension, whose logger reports on import where it found
    # a CUDA toolkit when no GPU is there: a line for torch's developers that leaked out of validate --number-format int8
    import os
    import subprocess

    env = {**os.environ, "CUDA_HOME": str(tmp_path)}  # a toolkit "found", as on a machine with one and no GPU
    done = subprocess.run([sys.executable, "-c", LEAK_CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr
    assert "CUDA" not in done.stderr, done.stderr
