"""tresnet.deploy.export_model: ONNX (in ONNX Runtime) and TorchScript files that match PyTorch."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import tresnet
from helpers import max_rel_diff, randomize_norms, requires_onnx
from tresnet.deploy import ExportError, ExportMismatchError, export_model
from tresnet.errors import ConfigError, InputSizeError, MissingDependencyError
from tresnet.layers import ConvNormAct
from tresnet.models.tresnet import BasicBlock, Bottleneck

SIZE = 64


def _model(name: str) -> nn.Module:
    model = randomize_norms(tresnet.create_model(name, num_classes=10), signed=True)
    with torch.no_grad():  # small residual branches, as after training (see test_deploy_fusion)
        for block in model.modules():
            if isinstance(block, (BasicBlock, Bottleneck)):
                block.last_norm().weight.mul_(0.2)
    return model.eval()


@pytest.fixture(scope="module")
def tresnet_m() -> nn.Module:
    return _model("tresnet_m")


def _tiny() -> nn.Module:
    """A two-unit network of tresnet layers: enough for the paths that fail before or after exporting."""
    return randomize_norms(nn.Sequential(ConvNormAct(3, 8, 3, 2, anti_alias=True),
                                         ConvNormAct(8, 4, 1, 1, "identity", 0.0))).eval()


@requires_onnx
@pytest.mark.parametrize("name", ["tresnet_m", "tresnet_v2_l"])
def test_onnx_matches_pytorch_with_a_dynamic_batch(name, tresnet_m, tmp_path):
    import onnx
    import onnxruntime as ort

    model = tresnet_m if name == "tresnet_m" else _model(name)
    path = tmp_path / f"{name}.onnx"
    report = export_model(model, path, format="onnx", img_size=SIZE, dynamic_batch=True)
    assert report.path == path and path.is_file()
    assert report.batch_sizes == (1, 3) and report.max_rel_diff <= 1e-4

    # Independently of the export's own check: exported at batch 1, run at batch 3.
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    ops = {node.op_type for node in graph.node}
    assert "BatchNormalization" not in ops and "Pad" not in ops  # folded; reflect pad as slices
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(3, 3, SIZE, SIZE)
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = model(x)
    assert got.shape == (3, 10)
    assert max_rel_diff(torch.from_numpy(got), want) <= 1e-4


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_matches_pytorch_with_a_dynamic_batch(tresnet_m, tmp_path):
    path = tmp_path / "tresnet_m.pt"
    report = export_model(tresnet_m, path, format="torchscript", img_size=SIZE, dynamic_batch=True)
    assert report.max_rel_diff <= 1e-4 and report.opset is None
    loaded = torch.jit.load(str(path))
    x = torch.rand(3, 3, SIZE, SIZE)
    with torch.no_grad():
        assert max_rel_diff(loaded(x), tresnet_m(x)) <= 1e-4


@requires_onnx
def test_unfused_onnx_keeps_reflect_padding_and_still_matches(tresnet_m, tmp_path):
    import onnx

    # The model as it is: ONNX Runtime runs the blur's reflect Pad and the BatchNormalization nodes.
    path = tmp_path / "plain.onnx"
    report = export_model(tresnet_m, path, format="onnx", img_size=SIZE, fused=False)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Pad" in ops
    assert report.max_rel_diff <= 1e-4 and report.batch_sizes == (1,)


@requires_onnx
def test_fp16_onnx_is_within_the_fp16_tolerance(tresnet_m, tmp_path):
    import onnx

    path = tmp_path / "half.onnx"
    report = export_model(tresnet_m, path, format="onnx", img_size=SIZE, number_format="fp16")
    assert report.limit == 1e-2 and report.max_rel_diff <= 1e-2
    graph = onnx.load(str(path)).graph
    half = onnx.TensorProto.FLOAT16
    assert graph.input[0].type.tensor_type.elem_type == graph.output[0].type.tensor_type.elem_type == half
    assert all(t.data_type == half for t in graph.initializer)  # computed in fp16 throughout


def test_export_leaves_the_model_as_it_was(tmp_path):
    model = _tiny().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_model(model, tmp_path / "tiny.pt", format="torchscript", img_size=16)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- bad input ------------------------------------------------------------------------------------


def test_unknown_format(tmp_path):
    with pytest.raises(ConfigError, match="unknown export format 'tflite'"):
        export_model(_tiny(), tmp_path / "m.tflite", format="tflite", img_size=16)


@requires_onnx  # the size is checked after the format's packages
def test_input_size_the_model_cannot_take(tresnet_m, tmp_path):
    with pytest.raises(InputSizeError, match="62x62"):
        export_model(tresnet_m, tmp_path / "m.onnx", format="onnx", img_size=62)
    assert not (tmp_path / "m.onnx").exists()


def test_output_that_is_a_folder(tmp_path):
    with pytest.raises(ExportError, match="is a folder"):
        export_model(_tiny(), tmp_path, format="torchscript", img_size=16)


def test_output_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ExportError, match="cannot write"):
        export_model(_tiny(), blocker / "m.pt", format="torchscript", img_size=16)


def test_onnx_without_its_packages(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'tresnet\[export\]'"):
        export_model(_tiny(), tmp_path / "m.onnx", format="onnx", img_size=16)
    # TorchScript needs neither package.
    export_model(_tiny(), tmp_path / "m.pt", format="torchscript", img_size=16)


def test_a_mismatch_fails_loudly_and_writes_nothing(monkeypatch, tmp_path):
    export_module = sys.modules["tresnet.deploy.export"]
    real_run = export_module._run_torchscript
    monkeypatch.setattr(export_module, "_run_torchscript",
                        lambda path, inputs: [[o + 0.1 for o in outs] for outs in real_run(path, inputs)])
    out = tmp_path / "m.pt"
    with pytest.raises(ExportMismatchError, match="nothing was written"):
        export_model(_tiny(), out, format="torchscript", img_size=16)
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary file


def test_a_runtime_refusal_is_one_export_error(monkeypatch, tmp_path):
    export_module = sys.modules["tresnet.deploy.export"]

    def refuse(path, inputs):
        raise RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : no kernel for Gemm(6)")

    monkeypatch.setattr(export_module, "_run_torchscript", refuse)
    with pytest.raises(ExportError, match="torchscript export of Sequential failed: .*NOT_IMPLEMENTED"):
        export_model(_tiny(), tmp_path / "m.pt", format="torchscript", img_size=16)
    assert list(tmp_path.iterdir()) == []


@requires_onnx
def test_the_exported_file_records_the_preprocessing_of_its_inputs(tmp_path):
    import json

    import onnx

    from tresnet.data.transforms import Preprocessing

    model = tresnet.create_model("genet_light", num_classes=10).eval()
    model.pretrained_cfg.update(Preprocessing.of(model, img_size=32, crop_mode="squash").to_config())
    path = tresnet.save_checkpoint(model, tmp_path / "digits.safetensors")
    loaded = tresnet.create_model(checkpoint_path=path)
    report = export_model(loaded, tmp_path / "d.onnx", format="onnx")  # the size the checkpoint records
    assert report.img_size == (32, 32) and report.preprocessing["crop_mode"] == "squash"
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "d.onnx")).metadata_props}
    assert json.loads(props["tresnet_preprocessing"]) == report.preprocessing
    report = export_model(loaded, tmp_path / "d.pt", format="torchscript", img_size=64)
    extra = {"tresnet_preprocessing.json": ""}
    torch.jit.load(str(tmp_path / "d.pt"), _extra_files=extra)
    assert json.loads(extra["tresnet_preprocessing.json"])["img_size"] == [64, 64] == report.preprocessing["img_size"]
