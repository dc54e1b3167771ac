"""bfloat16 on a CPU without bfloat16 arithmetic: emulated, several times slower than fp32, and said so."""

from __future__ import annotations

import warnings

import pytest

from tresnet import runtime


def test_bf16_on_a_cpu_that_emulates_it_warns(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    for precision in ("bf16", "amp"):  # amp is bfloat16 autocast on the CPU
        with pytest.warns(UserWarning, match=rf"--precision {precision} computes in bfloat16, but this CPU has no "
                                             r"bfloat16 arithmetic .*use --precision fp32"):
            runtime.warn_if_bf16_is_emulated(precision, "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtime.warn_if_bf16_is_emulated("fp32", "cpu")
        runtime.warn_if_bf16_is_emulated("bf16", "cuda")  # a GPU's bfloat16 is its own
        monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
        runtime.warn_if_bf16_is_emulated("bf16", "cpu")
