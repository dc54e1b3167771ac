"""The benchmark form NAME:ml_decoder: our model with the ML-Decoder head, in every mode, beside the plain one."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_bench_config
from tresnet.bench import list_forms, run_benchmark
from tresnet.bench.forms import get_form
from tresnet.layers import MLDecoderHead


def test_ml_decoder_is_a_builtin_form_for_every_mode():
    assert "ml_decoder" in list_forms()
    form = get_form("ml_decoder")
    assert set(form.modes) == {"infer", "train"} and form.impls == frozenset({"tresnet"})


def _head_macs(in_features: int, tokens: int, head: MLDecoderHead) -> int:
    """MACs of the ML-Decoder on one image: projections, attention, feed-forward, group FC (the paper's layers)."""
    q, d, k = head.num_queries, head.embed_dim, head.group_size
    ff = head.decoder.layers[0].linear1.out_features
    return (tokens * in_features * d + 2 * tokens * d * d + 2 * q * d * d + 2 * q * tokens * d + 2 * q * d * ff
            + q * d * k)


@pytest.mark.slow
def test_ml_decoder_rows_give_the_heads_cost_in_both_modes():
    plain, decoder = run_benchmark(tiny_bench_config("genet_light,genet_light:ml_decoder", mode="both"))
    assert decoder.form == "ml_decoder" and decoder.max_rel_diff is None
    assert decoder.infer.img_per_s > 0 and decoder.train.img_per_s > 0 and plain.train.img_per_s > 0
    head = MLDecoderHead(1920, 1000)
    fc_params = 1920 * 1000 + 1000
    head_params = sum(p.numel() for p in head.parameters())
    assert decoder.params_m - plain.params_m == pytest.approx((head_params - fc_params) / 1e6, abs=1e-6)
    tokens = (64 // 32) ** 2
    extra_gmacs = (_head_macs(1920, tokens, head) - 1920 * 1000) / 1e9
    assert decoder.gmacs - plain.gmacs == pytest.approx(extra_gmacs, rel=0.01)
    assert torch.isfinite(torch.tensor(decoder.infer.img_per_s))
