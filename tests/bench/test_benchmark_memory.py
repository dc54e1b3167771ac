"""What autograd keeps for backward: the per-image slope and the per-step constant, in fp32 and under autocast."""

from __future__ import annotations

import pytest
from torch import nn

import tresnet
from helpers import tiny_bench_config
from tresnet.bench import run_benchmark
from tresnet.bench.memory import MIB, saved_memory

C = 8  # the small network's channels


def small_network() -> nn.Module:
    """conv (keeps its input and weight) -> ReLU (its output) -> pool (the same output) -> C logits."""
    return nn.Sequential(nn.Conv2d(3, C, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def known_answer(side: int, bytes_per_value: int) -> tuple[int, int]:
    """(bytes per image, bytes per step) that :func:`small_network` keeps at ``side`` px, counted by hand.

    Per image: the conv's input (3 x side^2 values in its compute type), the ReLU's output (C x side^2, shared
    by the pool) and the loss's logsumexp input and result (C + 1 fp32 values). Per step: under autocast the
    conv's low-precision copy of its weight (C x 3 x 3 x 3); in fp32 the weight itself is a parameter.
    """
    per_image = bytes_per_value * (3 + C) * side * side + 4 * (C + 1)
    per_step = 0 if bytes_per_value == 4 else bytes_per_value * C * 27
    return per_image, per_step


@pytest.mark.parametrize("precision, bytes_per_value", [("fp32", 4), ("bf16", 2), ("fp16", 2)])
@pytest.mark.parametrize("side", [6, 7])
def test_slope_and_constant_of_a_small_network_are_the_known_answer(precision, bytes_per_value, side):
    got = saved_memory(small_network(), img_size=side, batch_sizes=(3, 7), precision=precision)
    per_image, per_step = known_answer(side, bytes_per_value)
    assert got.bytes_per_image == per_image and got.constant_bytes == pytest.approx(per_step, abs=1e-6)
    assert got.batch_sizes == (3, 7)
    assert got.to_dict()["saved_mib_per_img"] == pytest.approx(per_image / MIB)


def test_the_slope_needs_two_distinct_batches():
    for bad in ((4, 4), (4, 2), (0, 2)):
        with pytest.raises(ValueError, match="two batch sizes"):
            saved_memory(small_network(), img_size=4, batch_sizes=bad)


def test_under_autocast_the_constant_is_the_low_precision_copy_of_the_weights():
    model = tresnet.create_model("tresnet_m", num_classes=10)
    copied = sum(p.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
                 for p in m.parameters(recurse=False))
    fp32, bf16 = saved_memory(model, img_size=32), saved_memory(model, img_size=32, precision="bf16")
    assert fp32.constant_bytes < 0.01 * 2 * copied  # BN statistics only
    assert bf16.constant_bytes == pytest.approx(2 * copied, rel=0.01)
    # the same network in half the bytes per value, once the constant is set apart
    assert bf16.bytes_per_image == pytest.approx(fp32.bytes_per_image / 2, rel=0.01)


def test_the_benchmark_column_is_the_slope_and_the_constant_its_own_column():
    (row,) = run_benchmark(tiny_bench_config("tresnet_m", mode="infer", img_size=32, precision="bf16", threads=1,
                                                timer="cpu"))
    expected = saved_memory(tresnet.create_model("tresnet_m"), img_size=32, precision="bf16")
    assert row.saved_mib_per_img == pytest.approx(expected.bytes_per_image / MIB, rel=1e-6)
    assert row.saved_constant_mib == pytest.approx(expected.constant_bytes / MIB, rel=1e-6)
    assert row.to_dict()["saved_constant_mib"] > 50  # TResNet-M's 31 M weights in bfloat16
