"""In-Place Activated BatchNorm: forward, gradients, running statistics, safety and errors."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from helpers import max_rel_diff
from tresnet.errors import TResNetError
from tresnet.layers import BatchNormAct2d, InPlaceABN, InPlaceABNSync
from tresnet.layers.inplace_abn import inplace_abn, invertible_scale

ACTIVATIONS = [("leaky_relu", 0.01), ("leaky_relu", 1e-3), ("elu", 1.0), ("identity", 0.0)]


def reference(x, weight, bias, activation, param, training=True, running_mean=None, running_var=None, eps=1e-5):
    """BatchNorm + activation written with autograd-differentiable ops (the maths In-Place ABN must match)."""
    dims = [0, 2, 3]
    if training:
        mean = x.mean(dims, keepdim=True)
        var = x.var(dims, unbiased=False, keepdim=True)
    else:
        mean = running_mean.view(1, -1, 1, 1)
        var = running_var.view(1, -1, 1, 1)
    z = (x - mean) / torch.sqrt(var + eps) * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
    if activation == "leaky_relu":
        return F.leaky_relu(z, param)
    if activation == "elu":
        return F.elu(z, param)
    return z


def run_abn(x, weight, bias, activation, param, training=True, running_mean=None, running_var=None):
    # In-Place ABN overwrites its input: give it a non-leaf copy.
    return inplace_abn(x.clone(), weight, bias, running_mean, running_var, training, 0.1, 1e-5, activation, param)


@pytest.mark.parametrize("activation,param", ACTIVATIONS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_equals_batchnorm_plus_activation(activation, param, channels_last):
    x = torch.randn(4, 6, 5, 7) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    abn = InPlaceABN(6, activation, param or 0.01)
    ref = BatchNormAct2d(6, activation, param or 0.01)
    with torch.no_grad():
        for m in (abn, ref):
            m.weight.copy_(torch.linspace(-1.5, 1.5, 6))
            m.bias.copy_(torch.linspace(-0.3, 0.3, 6))
    expected = ref(x.clone())
    out = abn(x.clone())
    assert max_rel_diff(out, expected) < 1e-5


@pytest.mark.parametrize("activation,param", ACTIVATIONS)
@pytest.mark.parametrize("weights", ["mixed", "negative", "near_zero"])
def test_gradcheck_float64(activation, param, weights):
    torch.manual_seed(1)
    x = torch.randn(3, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    w = {"mixed": torch.tensor([0.7, -1.3, 2.0, -0.4]), "negative": -torch.rand(4) - 0.2,
         "near_zero": torch.tensor([1e-3, -2e-3, 5e-3, 1e-2])}[weights]
    w = w.double().requires_grad_()
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, b: run_abn(x, w, b, activation, param)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-5)
    # and the same numbers as autograd through the reference maths
    dy = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    ours = torch.autograd.grad(fn(x, w, b), (x, w, b), dy)
    theirs = torch.autograd.grad(reference(x, w, b, activation, param), (x, w, b), dy)
    for a, e in zip(ours, theirs, strict=True):
        assert max_rel_diff(a, e) < 1e-8


@pytest.mark.parametrize("activation,param", ACTIVATIONS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_fp32_gradients_match_the_reference(activation, param, channels_last, training):
    x = torch.randn(8, 16, 6, 6) * 2 + 0.5
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    # ELU saturates to -alpha for very negative inputs, where no inverse is exact: stay clear of it.
    w = (torch.randn(16) * (0.5 if activation == "elu" else 1.5)).requires_grad_()
    b = (torch.randn(16) * 0.2).requires_grad_()
    rm, rv = torch.randn(16) * 0.1, torch.rand(16) + 0.5
    dy = torch.randn(8, 16, 6, 6)
    ours = torch.autograd.grad(run_abn(x, w, b, activation, param, training, rm.clone(), rv.clone()), (x, w, b), dy)
    theirs = torch.autograd.grad(reference(x, w, b, activation, param, training, rm, rv), (x, w, b), dy)
    for a, e in zip(ours, theirs, strict=True):
        assert max_rel_diff(a, e) < 2e-4
    assert ours[0].is_contiguous(memory_format=torch.channels_last) or not channels_last


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
def test_running_statistics_follow_batchnorm2d(momentum):
    abn, bn = InPlaceABN(5, "leaky_relu", 0.01, momentum=momentum), torch.nn.BatchNorm2d(5, momentum=momentum)
    for step in range(4):
        x = torch.randn(6, 5, 4, 4) * (step + 1) + step
        abn(x.clone())
        bn(x.clone())
    assert torch.allclose(abn.running_mean, bn.running_mean, atol=1e-6)
    assert torch.allclose(abn.running_var, bn.running_var, atol=1e-5)
    assert abn.num_batches_tracked.item() == bn.num_batches_tracked.item() == 4
    abn.eval()
    bn.eval()
    x = torch.randn(2, 5, 3, 3)
    assert max_rel_diff(abn(x.clone()), F.leaky_relu(bn(x), 0.01)) < 1e-5


def test_overwrites_its_input_and_keeps_only_its_output():
    abn = InPlaceABN(4)
    conv = torch.nn.Conv2d(3, 4, 1)
    x = torch.randn(2, 3, 5, 5)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        h = conv(x)
        out = abn(h)
    assert out.data_ptr() == h.data_ptr()  # written in place
    big = {t.untyped_storage().data_ptr() for t in saved if t.numel() == out.numel()}
    assert big == {out.untyped_storage().data_ptr()}  # the conv output is kept only as the ABN output


def test_bf16_input_gets_fp32_statistics():
    x = torch.randn(8, 4, 6, 6) * 4 + 100  # a large mean that bf16 statistics would lose
    w, b = torch.ones(4, requires_grad=True), torch.zeros(4, requires_grad=True)
    out = run_abn(x.bfloat16().requires_grad_(), w, b, "leaky_relu", 0.01)
    assert out.dtype == torch.bfloat16
    expected = reference(x.bfloat16().float(), w, b, "leaky_relu", 0.01)
    assert (out.float() - expected).abs().max() < 0.02
    out.float().sum().backward()
    assert w.grad.dtype == torch.float32


def test_autocast_bf16_forward_and_backward():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    abn = InPlaceABN(8)
    x = torch.randn(4, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = abn(conv(x))
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    assert torch.isfinite(abn.weight.grad).all() and torch.isfinite(conv.weight.grad).all()


def test_one_value_per_channel_in_training_is_a_clear_error():
    with pytest.raises(TResNetError, match="more than one value per channel"):
        InPlaceABN(4)(torch.randn(1, 4, 1, 1))


def test_overwriting_a_tensor_another_node_needs_raises_pytorchs_error():
    a = torch.randn(4, 3, 5, 5, requires_grad=True)
    h = a.sigmoid()  # sigmoid keeps its output for backward
    out = InPlaceABN(3)(h)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_leaf_input_is_refused_by_pytorch():
    with pytest.raises(RuntimeError, match="leaf Variable"):
        InPlaceABN(3)(torch.randn(4, 3, 5, 5, requires_grad=True))


def test_eval_without_grad_is_a_plain_affine_step():
    abn = InPlaceABN(4, "identity").eval()
    with torch.no_grad():
        abn.running_mean.fill_(1.0)
        abn.running_var.fill_(4.0)
        abn.weight.fill_(2.0)
        abn.bias.fill_(0.5)
    x = torch.full((1, 4, 2, 2), 3.0)
    with torch.no_grad():
        assert torch.allclose(abn(x), torch.full_like(x, 2.0 * (3.0 - 1.0) / (4.0 + 1e-5) ** 0.5 + 0.5))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_models_cast_to_another_dtype_run_in_eval(dtype):
    abn = InPlaceABN(4).to(dtype).eval()
    with torch.no_grad():
        assert abn(torch.randn(2, 4, 3, 3, dtype=dtype)).dtype == dtype


def test_tiny_weights_are_computed_with_scale_eps():
    w = torch.tensor([0.0, -1e-7, 0.5])
    assert torch.equal(invertible_scale(w, 1e-5), torch.tensor([1e-5, -1e-5, 0.5]))


def test_sync_variant_without_a_process_group_warns_once_and_works_locally():
    sync, local = InPlaceABNSync(4), InPlaceABN(4)
    x = torch.randn(4, 4, 3, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's default: once per place in the code that warns
        out = sync(x.clone())
        sync(x.clone())
        InPlaceABNSync(4)(x.clone())
    assert sum("process group" in str(w.message) for w in caught) == 1
    assert torch.allclose(out, local(x.clone()))
    assert local.stats_group() is None


@pytest.mark.parametrize("momentum", [0.1, None])
def test_count_batch_records_a_training_batch_and_gives_the_momentum(momentum):
    abn = InPlaceABN(3, momentum=momentum)
    assert abn.count_batch() == (0.1 if momentum else 1.0)
    assert abn.count_batch() == (0.1 if momentum else 0.5)  # the cumulative average's 1 / batches
    assert abn.num_batches_tracked.item() == 2
    abn.eval()
    assert abn.count_batch() == (0.1 if momentum else 0.0) and abn.num_batches_tracked.item() == 2


def test_saturated_elu_gives_finite_gradients():
    x = torch.randn(4, 3, 5, 5) * 30
    x.requires_grad_()
    w, b = torch.ones(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    out = run_abn(x, w * 20, b, "elu", 1.0)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="unknown activation"):
        InPlaceABN(4, activation="gelu")
