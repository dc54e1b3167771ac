"""Deployment of models with the ML-Decoder head: fusion folds the body and keeps the head; ONNX and
TorchScript exports pass their own check against PyTorch, for single- and multi-label models."""

from __future__ import annotations

import pytest
import torch

import tresnet
from helpers import max_rel_diff, randomize_norms, requires_onnx
from tresnet.deploy import export_model, fuse, onnx_session
from tresnet.layers import MLDecoderHead

SIZE = 64
# Small networks (one block per TResNet stage): every fusion rule, a fraction of the time.
MODELS = {"tresnet_m": dict(layers=(1, 1, 1, 1)), "genet_light": {}}


def ml_decoder_model(name: str, task: str = "multilabel", num_classes: int = 30) -> torch.nn.Module:
    torch.manual_seed(0)
    model = tresnet.create_model(name, head="ml_decoder", num_classes=num_classes, task=task,
                                 **MODELS[name])
    return randomize_norms(model, seed=1).eval()


@pytest.mark.parametrize("name", list(MODELS))
def test_fuse_folds_the_body_and_keeps_the_ml_decoder_head(name):
    model = ml_decoder_model(name)
    fused = fuse(model)
    assert isinstance(fused.head, MLDecoderHead) and fused.pretrained_cfg["head"] == "ml_decoder"
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    head, original = fused.head.state_dict(), model.head.state_dict()
    assert all(torch.equal(head[k], original[k]) for k in original)
    assert not any(p.requires_grad for p in fused.parameters())
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert max_rel_diff(fused(x), model(x)) < 1e-5
    assert isinstance(model.head, MLDecoderHead) and model.training is False  # the original is untouched


@requires_onnx
@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_export_of_an_ml_decoder_model_passes_its_check(tmp_path, name, task):
    model = ml_decoder_model(name, task)
    report = export_model(model, tmp_path / "m.onnx", format="onnx", img_size=SIZE, dynamic_batch=True)
    assert report.path.is_file() and report.max_rel_diff < 1e-4 and report.batch_sizes == (1, 3)
    session = onnx_session(report.path)
    x = torch.rand(4, 3, SIZE, SIZE)
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = model(x)
    assert logits.shape == (4, 30)
    # what a multi-label user reads: one sigmoid probability per class
    assert (torch.sigmoid(torch.from_numpy(logits)) - torch.sigmoid(want)).abs().max() < 1e-5


@pytest.mark.filterwarnings("ignore")  # TorchScript's deprecation notice
@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_torchscript_export_of_an_ml_decoder_model_passes_its_check(tmp_path, task):
    model = ml_decoder_model("tresnet_m", task, num_classes=250)  # 100 queries of 3 classes
    report = export_model(model, tmp_path / "m.pt", format="torchscript", img_size=SIZE, dynamic_batch=True)
    assert report.max_rel_diff < 1e-4
    loaded = torch.jit.load(str(report.path))
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert max_rel_diff(loaded(x), model(x)) < 1e-4
