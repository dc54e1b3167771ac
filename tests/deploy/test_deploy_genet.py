"""GENet deployed: the folded model, ONNX and TorchScript exports compute what the eval-mode model computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tresnet
from helpers import max_rel_diff, randomize_norms, requires_onnx
from tresnet.cli.main import main
from tresnet.deploy import export_model, fuse
from tresnet.layers import ConvNormAct
from tresnet.layers.fused import FusedConvAct
from tresnet.models.genet import BottleneckBlock, XXBlock
from tresnet.models.genet_fusion import FusedGENetBlock

SIZE = 64  # GENet halves the side five times: 64 px is a 2x2 final map, enough to exercise every block


def _model(name: str, residual_gain: float = 0.2, **kwargs) -> nn.Module:
    """A GENet with random signed BN weights, biases and statistics; each branch's last norm scaled by
    ``residual_gain`` (small, as training leaves it: see test_deploy_fusion)."""
    model = randomize_norms(tresnet.create_model(name, num_classes=10, **kwargs), signed=True)
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, (XXBlock, BottleneckBlock)):
                block.last_norm().weight.mul_(residual_gain)
    return model.eval()


@pytest.fixture(scope="module")
def genet_light() -> nn.Module:
    return _model("genet_light")


@pytest.mark.parametrize("name", ["genet_light", "genet_normal", "genet_large"])
def test_fused_genet_equals_eval_model(name, genet_light):
    model = genet_light if name == "genet_light" else _model(name)
    fused = fuse(model)
    for size in (SIZE, 96):
        x = torch.rand(2, 3, size, size)
        with torch.no_grad():
            want = model(x)
        got = fused(x)
        assert got.shape == want.shape == (2, 10)
        assert max_rel_diff(got, want) < 1e-5, (name, size)


def test_folding_a_genet_is_exact_in_fp64():
    model = _model("genet_light", residual_gain=1.0).double()
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        want = model(x)
    assert max_rel_diff(fuse(model)(x), want) < 1e-12


def test_fused_genet_has_no_norm_keeps_depthwise_convs_and_needs_no_grad(genet_light):
    fused = fuse(genet_light)
    kinds = {type(m) for m in fused.modules()}
    assert not any(issubclass(k, (nn.BatchNorm2d, ConvNormAct, XXBlock, BottleneckBlock)) for k in kinds)
    blocks = [m for m in fused.modules() if isinstance(m, FusedGENetBlock)]
    assert len(blocks) == sum(s.depth for s in genet_light.arch.stages)
    depthwise = fused.stages[3][0].branch[1].conv
    assert depthwise.groups == depthwise.in_channels == depthwise.out_channels > 1
    assert isinstance(fused.stem, FusedConvAct) and fused.stem.channels_last_input
    assert fused.stem.activation == "relu" and fused.final_conv.activation == "relu"
    assert not any(p.requires_grad for p in fused.parameters())
    assert isinstance(genet_light.stem, ConvNormAct)  # the original is left as it was


def test_fused_features_only_genet_equals_eval_model():
    model = _model("genet_light", features_only=True, out_indices=(0, 1, 2, 3, 4))
    fused = fuse(model)
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        want = model(x)
    got = fused(x)
    assert [g.shape for g in got] == [w.shape for w in want] and len(got) == 5
    assert all(g.is_contiguous(memory_format=torch.channels_last) for g in got)
    for g, w in zip(got, want, strict=True):
        assert max_rel_diff(g, w) < 1e-5


def test_fused_genet_without_onednn_paths_gives_the_same_result(genet_light):
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        want = genet_light(x)
    assert max_rel_diff(fuse(genet_light, channels_last=False)(x), want) < 1e-5
    xg = x.clone().requires_grad_(True)  # autograd: plain ops instead of the oneDNN fused kernels
    out = fuse(genet_light)(xg)
    out.sum().backward()
    assert xg.grad is not None and max_rel_diff(out.detach(), want) < 1e-5


@requires_onnx
def test_genet_onnx_matches_pytorch(genet_light, tmp_path):
    import onnx

    path = tmp_path / "genet_light.onnx"
    report = export_model(genet_light, path, format="onnx", img_size=SIZE, dynamic_batch=True)
    assert report.max_rel_diff <= 1e-4 and report.batch_sizes == (1, 3)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "BatchNormalization" not in ops and {"Conv", "Relu", "Add"} <= ops


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_genet_torchscript_matches_pytorch(genet_light, tmp_path):
    path = tmp_path / "genet_light.pt"
    report = export_model(genet_light, path, format="torchscript", img_size=SIZE)
    assert report.max_rel_diff <= 1e-4
    loaded = torch.jit.load(str(path))
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert max_rel_diff(loaded(x), genet_light(x)) <= 1e-4


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_command_takes_a_genet(tmp_path, capsys):
    out = tmp_path / "genet_light.pt"
    rc = main(["export", "--model", "genet_light", "--format", "torchscript", "--output", str(out),
               "--img-size", str(SIZE)])
    assert rc == 0 and out.is_file()
    assert "torchscript, fused, fp32, 64x64" in capsys.readouterr().out


def test_export_command_refuses_a_size_genet_cannot_take(tmp_path, capsys):
    rc = main(["export", "--model", "genet_light", "--format", "torchscript", "--output", str(tmp_path / "m.pt"),
               "--img-size", "16"])
    err = capsys.readouterr().err
    assert rc == 1 and "input size 16x16 is not supported" in err and "Traceback" not in err
