"""The ML-Decoder head: shapes, group decoding, the published forward, what is and is not learned."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tresnet.layers import MLDecoderHead
from tresnet.layers.ml_decoder import ml_decoder_options


def published_forward(state: dict, x: torch.Tensor, num_classes: int, num_heads: int = 8) -> torch.Tensor:
    """The official ML-Decoder forward in eval mode (Alibaba-MIIL/ML_Decoder ml_decoder.py), written from
    its description with functional ops: sequence-first attention and a per-query matmul loop."""
    s = {k.removeprefix("decoder."): v for k, v in state.items()}
    tokens = F.relu(F.linear(x.flatten(2).transpose(1, 2), s["embed_standart.weight"], s["embed_standart.bias"]))
    memory = tokens.transpose(0, 1)  # (T, B, D)
    queries = s["query_embed.weight"]
    dim = queries.shape[1]
    tgt = queries.unsqueeze(1).expand(-1, x.shape[0], -1)  # (Q, B, D)
    layer = {k.removeprefix("layers.0."): v for k, v in s.items() if k.startswith("layers.0.")}
    tgt = F.layer_norm(tgt + tgt, (dim,), layer["norm1.weight"], layer["norm1.bias"])
    attended, _ = F.multi_head_attention_forward(
        tgt, memory, memory, dim, num_heads, layer["multihead_attn.in_proj_weight"],
        layer["multihead_attn.in_proj_bias"], None, None, False, 0.0, layer["multihead_attn.out_proj.weight"],
        layer["multihead_attn.out_proj.bias"], training=False, need_weights=False)
    tgt = F.layer_norm(tgt + attended, (dim,), layer["norm2.weight"], layer["norm2.bias"])
    fed = F.linear(F.relu(F.linear(tgt, layer["linear1.weight"], layer["linear1.bias"])),
                   layer["linear2.weight"], layer["linear2.bias"])
    h = F.layer_norm(tgt + fed, (dim,), layer["norm3.weight"], layer["norm3.bias"]).transpose(0, 1)
    pooling = s["duplicate_pooling"]
    out = torch.zeros(h.shape[0], h.shape[1], pooling.shape[2])
    for i in range(h.shape[1]):
        out[:, i, :] = h[:, i, :] @ pooling[i]
    return out.flatten(1)[:, :num_classes] + s["duplicate_pooling_bias"]


def randomized(head: MLDecoderHead, seed: int = 0) -> MLDecoderHead:
    """``head`` with every tensor random (LayerNorms and biases included), so no term hides behind a 1 or a 0."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*head.parameters(), *head.buffers()]:
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.2)
    return head


@pytest.mark.parametrize("num_classes,queries,group", [(10, 10, 1), (80, 80, 1), (1000, 100, 10), (250, 100, 3)])
def test_queries_and_group_size_follow_the_paper(num_classes, queries, group):
    head = MLDecoderHead(32, num_classes, embed_dim=64, num_heads=4, ff_dim=96)
    assert (head.num_queries, head.group_size, head.num_classes, head.in_features) == (queries, group, num_classes, 32)
    assert head.decoder.duplicate_pooling.shape == (queries, 64, group)
    assert head.decoder.duplicate_pooling_bias.shape == (num_classes,)
    x = torch.rand(3, 32, 5, 4)
    assert head(x).shape == (3, num_classes)
    assert head(x, pre_logits=True).shape == (3, queries, 64)


def test_default_sizes_are_the_published_ones():
    head = MLDecoderHead(2048, 80)
    layer = head.decoder.layers[0]
    assert head.embed_dim == 768 and layer.linear1.out_features == 2048 and layer.multihead_attn.num_heads == 8
    assert layer.dropout.p == 0.1 and len(head.decoder.layers) == 1
    assert ml_decoder_options({f"head.{k}": v for k, v in head.state_dict().items()}) == dict(
        num_classes=80, num_queries=80, embed_dim=768, ff_dim=2048)
    assert ml_decoder_options({"head.fc.weight": (80, 2048)}) == {}


@pytest.mark.parametrize("num_classes,num_queries", [(80, None), (1000, None), (30, 7)])
def test_eval_forward_equals_the_published_formula(num_classes, num_queries):
    torch.manual_seed(0)
    head = randomized(MLDecoderHead(48, num_classes, num_queries=num_queries, embed_dim=64, num_heads=8,
                                    ff_dim=80)).eval()
    x = torch.rand(2, 48, 3, 5)
    with torch.no_grad():
        want = published_forward(head.state_dict(), x, num_classes)
        got = head(x)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_channels_last_and_token_inputs_give_the_same_logits():
    head = randomized(MLDecoderHead(16, 12, embed_dim=32, num_heads=4, ff_dim=40)).eval()
    x = torch.rand(2, 16, 4, 4)
    with torch.no_grad():
        plain = head(x)
        assert torch.allclose(head(x.to(memory_format=torch.channels_last)), plain, atol=1e-6)
        assert torch.allclose(head(x.flatten(2).transpose(1, 2)), plain, atol=1e-6)


def test_decoder_has_no_self_attention():
    head = MLDecoderHead(16, 20, embed_dim=32, num_heads=4, ff_dim=40)
    attentions = [m for m in head.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    assert len(attentions) == 1 and not any("self_attn" in name for name, _ in head.named_modules())
    # With one query per image, what it decodes cannot depend on the other queries: change them, it stays.
    head.eval()
    x = torch.rand(1, 16, 3, 3)
    with torch.no_grad():
        before = head(x, pre_logits=True)[0, 0].clone()
        head.decoder.query_embed.weight[1:] += 1.0
        after = head(x, pre_logits=True)[0, 0]
    assert torch.allclose(before, after, atol=1e-6)


def test_queries_are_not_trainable_and_gradients_reach_everything_else():
    head = MLDecoderHead(16, 25, num_queries=5, embed_dim=32, num_heads=4, ff_dim=40)
    names = {n for n, _ in head.named_parameters()}
    assert "decoder.query_embed.weight" not in names
    assert "decoder.query_embed.weight" in head.state_dict()
    head.requires_grad_(True)  # what a trainer may do: the queries still stay out of every optimiser
    assert all("query_embed" not in n for n, _ in head.named_parameters())
    x = torch.rand(4, 16, 3, 3, requires_grad=True)
    head.train()
    head(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, param in head.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    head = MLDecoderHead(16, 12, embed_dim=32, num_heads=4, ff_dim=40)
    x = torch.rand(2, 16, 3, 3)
    head.train()
    assert not torch.allclose(head(x), head(x))
    head.eval()
    assert torch.equal(head(x), head(x))


def test_initialisation_follows_the_official_code():
    torch.manual_seed(0)
    head = MLDecoderHead(256, 400)
    decoder = head.decoder
    assert torch.count_nonzero(decoder.duplicate_pooling_bias) == 0
    q, d, k = decoder.duplicate_pooling.shape
    xavier_std = math.sqrt(2.0 / (d * k + q * k))
    assert decoder.duplicate_pooling.std().item() == pytest.approx(xavier_std, rel=0.05)
    assert decoder.query_embed.weight.std().item() == pytest.approx(1.0, rel=0.05)
    assert torch.count_nonzero(decoder.layers[0].multihead_attn.in_proj_bias) == 0


@pytest.mark.parametrize("kwargs", [dict(num_classes=0), dict(num_classes=10, num_queries=11),
                                    dict(num_classes=10, num_queries=0),
                                    dict(num_classes=10, embed_dim=30, num_heads=8)])
def test_bad_sizes_are_refused(kwargs):
    with pytest.raises(ValueError):
        MLDecoderHead(16, **kwargs)


@pytest.mark.filterwarnings("ignore")  # the tracer's notes on shape checks and its deprecation notice
def test_torchscript_trace_matches_at_another_batch_size():
    head = randomized(MLDecoderHead(16, 30, num_queries=7, embed_dim=32, num_heads=4, ff_dim=40)).eval()
    with torch.no_grad():
        traced = torch.jit.trace(head, torch.rand(2, 16, 4, 4))
        x = torch.rand(3, 16, 4, 4)
        assert torch.allclose(traced(x), head(x), atol=1e-5)
