"""Helpers shared by the tests (importable as `helpers`: pytest puts tests/ on the path)."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch
from torch import nn


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


# Skip a single test when an optional package is absent (never a whole module: the tests that check
# the error raised without the package must still run).
requires_timm = pytest.mark.skipif(_missing("timm"), reason="needs timm (pip install 'tresnet[test]')")
requires_onnx = pytest.mark.skipif(_missing("onnx") or _missing("onnxruntime"),
                                   reason="needs onnx and onnxruntime (pip install 'tresnet[export]')")
requires_torchao = pytest.mark.skipif(_missing("torchao"), reason="needs torchao (pip install 'tresnet[int8]')")
requires_matplotlib = pytest.mark.skipif(_missing("matplotlib"), reason="needs matplotlib")
requires_sklearn = pytest.mark.skipif(_missing("sklearn"), reason="needs scikit-learn")


def randomize_norms(model: torch.nn.Module, signed: bool = False, seed: int = 0) -> torch.nn.Module:
    """Random BN weights, biases and running statistics, so that conversions are really exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                w = torch.rand(n, generator=gen) * 1.2 + 0.3
                if signed:
                    w = w * (torch.randint(0, 2, (n,), generator=gen) * 2 - 1)
                m.weight.copy_(w)
                m.bias.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
                m.running_mean.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference, relative to the largest magnitude of ``b``."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def tiny_bench_config(models: str, **overrides):
    """A :class:`~tresnet.bench.BenchConfig` that runs in seconds on a CPU: 64 px, batch 2, one timed repeat."""
    from tresnet.bench import BenchConfig

    settings = dict(models=models, device="cpu", img_size=64, batch_size=2, warmup=0, repeats=1,
                    peak_memory=False)
    settings.update(overrides)
    return BenchConfig(**settings)


class StandInClassifier(nn.Module):
    """What the commands need of a model, without a network: ``num_classes``, ``pretrained_cfg`` (TResNet-M's
    preprocessing), ``checkpoint_info`` naming ``class_names`` when given, a parameter so that ``.to()`` and
    ``.eval()`` behave. Subclasses answer :meth:`logits` for the ``codes`` of the inputs: each input is a
    uniform image whose red value (0-255) is its code, which survives resizing and cropping exactly."""

    def __init__(self, num_classes: int, class_names: list[str] | None = None, **cfg):
        super().__init__()
        from tresnet import get_pretrained_cfg

        self.num_classes = num_classes
        self.anchor = nn.Parameter(torch.zeros(()))
        self.pretrained_cfg = {**get_pretrained_cfg("tresnet_m"), "num_classes": num_classes, **cfg}
        self.checkpoint_info = None if class_names is None else SimpleNamespace(
            metadata={"class_names": class_names}, path="stand-in.safetensors", format="tresnet",
            describe=lambda: "weights stand-in.safetensors (tresnet format)")

    def check_input_size(self, height: int, width: int) -> None:
        pass

    def logits(self, codes: list[int]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = (x[:, 0].mean(dim=(1, 2)) * 255).round().long().tolist()
        return self.logits(codes) + self.anchor
