"""`tresnet export` end to end at a small size."""

from __future__ import annotations

import pytest
import torch

import tresnet
from helpers import max_rel_diff, randomize_norms, requires_onnx
from tresnet.cli.main import main


@requires_onnx
def test_export_onnx_from_a_checkpoint(tmp_path, capsys):
    import onnxruntime as ort

    model = randomize_norms(tresnet.create_model("tresnet_m", num_classes=7)).eval()
    ckpt = tmp_path / "m.safetensors"
    tresnet.save_checkpoint(model, ckpt)
    out = tmp_path / "out" / "m.onnx"
    rc = main(["export", "--model", "tresnet_m", "--checkpoint", str(ckpt), "--format", "onnx",
               "--output", str(out), "--img-size", "64", "--dynamic-batch"])
    printed = capsys.readouterr().out
    assert rc == 0 and out.is_file()
    assert "at batch 1, 3 its outputs are" in printed and "from the float64 result (PyTorch fp32:" in printed
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 3, 64, 64)
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        assert max_rel_diff(torch.from_numpy(got), model(x)) <= 1e-4


@pytest.mark.parametrize("extra,message", [
    (["--format", "tflite", "--output", "{tmp}/m.tflite"], "unknown export format 'tflite'"),
    pytest.param(["--format", "onnx", "--output", "{tmp}/m.onnx", "--img-size", "30"],
                 "input size 30x30 is not supported", marks=requires_onnx),
    (["--format", "torchscript", "--output", "{tmp}"], "is a folder"),
    (["--format", "onnx", "--output", "{tmp}/m.onnx", "--opset", "99"], "ONNX opset 99 is not supported"),
    (["--format", "onnx", "--output", "{tmp}/m.onnx", "--number-format", "bf16"], "no bfloat16 convolution"),
    (["--format", "torchscript", "--output", "{tmp}/m.pt", "--number-format", "int8", "--calibration", "{tmp}"],
     "int8 export writes ONNX"),
    (["--format", "onnx", "--output", "{tmp}/m.onnx", "--number-format", "int8"], "needs calibration images"),
    (["--format", "onnx", "--output", "{tmp}/m.onnx", "--calibration", "{tmp}"], "are for --number-format int8"),
    (["--format", "onnx", "--output", "{tmp}/m.onnx", "--number-format", "int4"], "bad --number-format 'int4'"),
])
def test_bad_input_is_one_line_and_exit_1(extra, message, tmp_path, capsys):
    args = ["export", "--model", "tresnet_m"] + [a.format(tmp=tmp_path) for a in extra]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert message in err and err.startswith("tresnet export: error:")
    assert err.count("\n") == 1 and "Traceback" not in err
