"""Exports and deployment paths judged against the float64 result: wrong files refused, rounding accepted."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import tresnet
from helpers import randomize_norms, requires_onnx
from tresnet.deploy import BOUNDS, ExportMismatchError, check_against_exact, export_model, fuse
from tresnet.deploy.exactness import agreement, exact_outputs, relative_error
from tresnet.layers.fused import FusedConvAct

SIZE = 64


def far_from_init(model: nn.Module, seed: int = 0) -> nn.Module:
    """BN weights, biases and running statistics far from their initial values, as after long training: the
    logits reach a few hundred and PyTorch's own fp32 result is a few 1e-4 of them away from the exact one."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen))
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def tresnet_m() -> nn.Module:
    return randomize_norms(tresnet.create_model("tresnet_m", num_classes=10), signed=True).eval()


def _images(*batches: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.rand(b, 3, SIZE, SIZE, generator=gen) for b in batches]


def test_errors_are_fractions_of_the_largest_exact_output_and_nan_is_no_match():
    exact = [[torch.tensor([[10.0, -20.0]])]]
    assert relative_error([[torch.tensor([[10.0, -19.0]])]], exact) == (1.0, 0.05)
    assert relative_error([[torch.tensor([[float("nan"), -20.0]])]], exact)[1] == float("inf")
    assert relative_error([[torch.tensor([[float("inf"), -20.0]])]], exact)[1] == float("inf")
    with pytest.raises(ValueError, match="shape"):
        relative_error([[torch.zeros(1, 3)]], exact)


def test_the_limit_is_a_multiple_of_pytorchs_own_error_with_a_floor():
    exact = [[torch.tensor([[100.0]])]]
    fp32 = [[torch.tensor([[100.01]])]]  # PyTorch fp32 1e-4 off
    near = agreement([[torch.tensor([[100.05]])]], exact, fp32, "fp32")
    assert near.fp32_error == pytest.approx(1e-4, rel=1e-3) and near.limit == pytest.approx(1e-3, rel=1e-3) and near.ok
    assert not agreement([[torch.tensor([[100.2]])]], exact, fp32, "fp32").ok
    exact_fp32 = [[torch.tensor([[100.0]])]]
    assert agreement(exact_fp32, exact, exact_fp32, "fp32").limit == BOUNDS["fp32"].floor
    assert agreement(exact_fp32, exact, exact_fp32, "int8").limit == BOUNDS["int8"].floor


def _first_fused_conv(module: nn.Module) -> FusedConvAct:
    return next(m for m in module.modules() if isinstance(m, FusedConvAct))


def _drop_last_block(prepared: nn.Module) -> None:
    prepared.body.layer4[-1] = nn.Identity()


def _flip_sign(prepared: nn.Module) -> None:
    conv = _first_fused_conv(prepared.body.layer3).conv
    with torch.no_grad():
        conv.weight.neg_()
        conv.bias.neg_()


def _swap_channels(prepared: nn.Module) -> None:
    conv = _first_fused_conv(prepared.body.layer2).conv
    with torch.no_grad():
        conv.weight[[0, 1]] = conv.weight[[1, 0]].clone()
        conv.bias[[0, 1]] = conv.bias[[1, 0]].clone()


@pytest.mark.parametrize("format", [pytest.param("onnx", marks=requires_onnx), "torchscript"])
@pytest.mark.parametrize("breakage", [_drop_last_block, _flip_sign, _swap_channels],
                         ids=["missing block", "wrong sign", "swapped channels"])
def test_a_wrong_export_is_refused_and_nothing_is_written(format, breakage, tresnet_m, monkeypatch, tmp_path):
    export_module = sys.modules["tresnet.deploy.export"]
    prepare = export_module.prepare_for_export

    def broken(*args, **kwargs):
        prepared = prepare(*args, **kwargs)
        breakage(prepared)
        return prepared

    monkeypatch.setattr(export_module, "prepare_for_export", broken)
    with pytest.raises(ExportMismatchError, match=r"from the float64 result \(PyTorch fp32: .*nothing was written"):
        export_model(tresnet_m, tmp_path / "m.out", format=format, img_size=SIZE, dynamic_batch=True)
    assert list(tmp_path.iterdir()) == []


def test_an_export_giving_nan_is_refused(tresnet_m, monkeypatch, tmp_path):
    export_module = sys.modules["tresnet.deploy.export"]
    real_run = export_module._run_torchscript
    monkeypatch.setattr(export_module, "_run_torchscript",
                        lambda path, inputs: [[o * float("nan") for o in outs] for outs in real_run(path, inputs)])
    with pytest.raises(ExportMismatchError, match="is inf of the largest output"):
        export_model(tresnet_m, tmp_path / "m.pt", format="torchscript", img_size=SIZE)
    assert list(tmp_path.iterdir()) == []


@requires_onnx
@pytest.mark.slow
def test_a_correct_export_of_a_model_far_from_init_is_accepted(tmp_path):
    # The case a fixed tolerance of 1e-4 against fp32 PyTorch refused: TResNet-L at 256 px, dynamic batch,
    # statistics far from their initial values. PyTorch's own fp32 result is then about 1e-4 of the largest
    # logit from the exact one (8.5e-5 here, 1.8e-4 on another input), and ONNX Runtime's as far or further.
    model = far_from_init(tresnet.create_model("tresnet_l"))
    report = export_model(model, tmp_path / "l.onnx", format="onnx", img_size=256, dynamic_batch=True)
    assert report.path.is_file() and report.batch_sizes == (1, 3)
    assert report.fp32_error > 2e-5  # the limit is set by PyTorch's own error, not the floor
    assert report.max_rel_diff <= report.limit == pytest.approx(10 * report.fp32_error)


@pytest.mark.parametrize("name", ["tresnet_m", "genet_light"])
def test_fused_and_bf16_are_within_their_bounds_of_the_float64_result(name, tresnet_m):
    model = tresnet_m if name == "tresnet_m" else randomize_norms(tresnet.create_model(name, num_classes=10)).eval()
    images = _images(1, 2)
    fp32 = check_against_exact(fuse(model), model, images, "fp32")
    assert fp32.ok and fp32.error < 1e-5, fp32.describe()
    bf16_model = fuse(model, dtype=torch.bfloat16)
    bf16 = check_against_exact(bf16_model, model, images, "bf16")
    assert bf16.ok, bf16.describe()
    assert bf16.error > 10 * fp32.error  # really computed in bfloat16
    with torch.no_grad():
        out = bf16_model(images[0])
    assert out.dtype == torch.float32 and next(bf16_model.parameters()).dtype == torch.bfloat16


def test_exact_outputs_leave_the_model_as_it_was(tresnet_m):
    before = {k: v.clone() for k, v in tresnet_m.state_dict().items()}
    exact_outputs(tresnet_m, _images(1))
    assert all(v.dtype == before[k].dtype and torch.equal(v, before[k]) for k, v in tresnet_m.state_dict().items())
