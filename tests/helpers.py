"""Helpers shared by the tests (importable as `helpers`: pytest puts tests/ on the path)."""

from __future__ import annotations

import importlib.util

import pytest
import torch


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


# Skip a single test when an optional package is absent (never a whole module: the tests that check
# the error raised without the package must still run).
requires_timm = pytest.mark.skipif(_missing("timm"), reason="needs timm (pip install 'tresnet[test]')")
requires_onnx = pytest.mark.skipif(_missing("onnx") or _missing("onnxruntime"),
                                   reason="needs onnx and onnxruntime (pip install 'tresnet[export]')")
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
