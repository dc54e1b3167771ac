"""How far a deployed model is from the exact answer: every path is compared with the model run in float64.

An export compared with the fp32 PyTorch model cannot tell a wrong file from rounding: in a deep network
with large activations, fp32 rounding alone moves the logits by a few 1e-4 of their largest magnitude,
and the fp32 PyTorch model used as the reference is then often *less* exact than the file under test.
So every path (an exported file, :func:`~tresnet.deploy.fuse`, bfloat16, int8) and the fp32 PyTorch model
itself are each compared with the same model run in float64 on the CPU (exact to about 1e-13 here), on
the same images. The error of a path is the largest difference of its outputs from the float64 outputs,
divided by the largest float64 output magnitude. A path is accepted when

    error <= max(multiple * error of the fp32 PyTorch model, floor)

with the ``multiple`` and ``floor`` of its number format (:data:`BOUNDS`): an fp32 path may be up to
ten times as far from the exact result as PyTorch's own fp32 model is (never less than 1e-5 of the
largest output); lower number formats have a floor that their rounding (bf16: 8 significant bits; int8:
256 levels per tensor) makes necessary. A wrong export (a layer missing, a sign flipped, two channels
swapped) is off by a sizeable fraction of the largest output (tests/deploy/test_deploy_exactness.py) and
is refused at the fp32 bound. The fraction of images on which a path keeps the float64 model's top-1
class is reported beside the error, not required: on random weights or random images the top logits
are near ties that any rounding reorders.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

Outputs = list[list[torch.Tensor]]  # per input batch, the model's output tensors


@dataclass(frozen=True)
class Bound:
    """The largest error a path in ``number_format`` may have: ``max(multiple * fp32 error, floor)``."""

    number_format: str
    multiple: float
    floor: float

    def limit(self, fp32_error: float) -> float:
        return max(self.multiple * fp32_error, self.floor)

    def describe(self) -> str:
        return f"{self.multiple:g}x PyTorch fp32's error, at least {self.floor:g}"


# Errors are fractions of the largest float64 output magnitude. fp32 and fp16: as above. bfloat16 keeps
# 8 significant bits (a relative rounding of 2^-9 per operation), which over some fifty layers moves the
# logits of the bundled models by 1e-2 to 4e-2 of their largest magnitude. int8 (per-channel weights,
# per-tensor activations calibrated on real images) moves them by 3e-2 to 1.5e-1 on the same models.
BOUNDS = {
    "fp32": Bound("fp32", 10.0, 1e-5),
    "fp16": Bound("fp16", 10.0, 1e-2),
    "bf16": Bound("bf16", 10.0, 5e-2),
    "int8": Bound("int8", 10.0, 0.15),
}


def as_list(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def run_outputs(run: Callable, inputs: Sequence[torch.Tensor]) -> Outputs:
    """``run``'s outputs for each input, as fp32 CPU tensors, without autograd."""
    with torch.no_grad():
        return [[o.detach().float().cpu() for o in as_list(run(x))] for x in inputs]


def exact_outputs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> Outputs:
    """``model`` in eval mode, run in float64 on the CPU on each input: the exact answer to about 1e-13.

    ``model`` itself is left as it is (a float64 copy is made and dropped).
    """
    exact = copy.deepcopy(model).cpu().double().eval()
    with torch.no_grad():
        return [[o.detach().cpu() for o in as_list(exact(x.cpu().double()))] for x in inputs]


def fp32_outputs(model: nn.Module, inputs: Sequence[torch.Tensor]) -> tuple[Outputs, bool]:
    """``model``'s eval-mode outputs in its own dtype and device (as fp32 CPU tensors), and whether it returns
    a list or tuple (``features_only``) rather than one tensor; its train/eval mode is restored."""
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    listed = []

    def run(x: torch.Tensor):
        out = model(x.to(device))
        listed.append(isinstance(out, (list, tuple)))
        return out

    model.eval()
    try:
        return run_outputs(run, inputs), bool(listed and listed[0])
    finally:
        model.train(was_training)


def relative_error(got: Outputs, exact: Outputs) -> tuple[float, float]:
    """``(largest absolute difference, largest difference relative to each output's largest magnitude)``.

    Raises ValueError when the outputs do not have the same number or shapes.
    """
    max_abs = max_rel = 0.0
    for outs, refs in zip(got, exact, strict=True):
        if len(outs) != len(refs):
            raise ValueError(f"{len(outs)} outputs where the model gives {len(refs)}")
        for out, ref in zip(outs, refs, strict=True):
            if tuple(out.shape) != tuple(ref.shape):
                raise ValueError(f"output of shape {tuple(out.shape)} where the model gives {tuple(ref.shape)}")
            ref = ref.double()
            gap = (out.double() - ref).abs()
            # a NaN or an infinity anywhere (in the path's output, or the exact one overflowing) is no match
            diff = (gap.max().item() if torch.isfinite(gap).all() else float("inf")) if gap.numel() else 0.0
            scale = ref.abs().max().item() if ref.numel() else 0.0
            max_abs = max(max_abs, diff)
            max_rel = max(max_rel, diff / scale if scale > 0 else diff)
    return max_abs, max_rel


def top1_agreement(got: Outputs, exact: Outputs) -> float:
    """The fraction of images whose top-1 class (first output, ``(N, classes)`` logits) is the exact one's."""
    same = total = 0
    for outs, refs in zip(got, exact, strict=True):
        if outs[0].dim() != 2:
            return 1.0  # not logits (feature maps): nothing to agree on
        same += int((outs[0].argmax(1) == refs[0].argmax(1)).sum())
        total += outs[0].shape[0]
    return same / total if total else 1.0


@dataclass(frozen=True)
class Agreement:
    """How close one path is to the float64 result, beside the fp32 PyTorch model, and whether it passes."""

    number_format: str
    error: float  # the path's largest difference from float64, relative to the largest float64 output
    abs_error: float
    fp32_error: float  # the same for the fp32 PyTorch model
    limit: float
    top1: float  # fraction of images where the path's top-1 class is the float64 model's

    @property
    def ok(self) -> bool:
        return self.error <= self.limit

    def describe(self) -> str:
        """``1.4e-04 of the largest output from the float64 result (PyTorch fp32: 2.9e-04; limit 2.9e-03)``."""
        return (f"{self.error:.2g} of the largest output from the float64 result (PyTorch fp32: "
                f"{self.fp32_error:.2g}; limit {self.limit:.2g})")

    def to_dict(self) -> dict:
        return dict(number_format=self.number_format, error=self.error, abs_error=self.abs_error,
                    fp32_error=self.fp32_error, limit=self.limit, top1_agreement=self.top1, ok=self.ok)


def agreement(got: Outputs, exact: Outputs, fp32: Outputs, number_format: str) -> Agreement:
    """How close ``got`` (a path in ``number_format``) is to ``exact``, beside ``fp32`` (PyTorch's fp32 outputs)."""
    abs_error, error = relative_error(got, exact)
    _, fp32_error = relative_error(fp32, exact)
    return Agreement(number_format=number_format, error=error, abs_error=abs_error, fp32_error=fp32_error,
                     limit=BOUNDS[number_format].limit(fp32_error), top1=top1_agreement(got, exact))


def check_against_exact(run: Callable, model: nn.Module, inputs: Sequence[torch.Tensor],
                        number_format: str = "fp32") -> Agreement:
    """Run ``run`` (a deployed form of ``model``: fused, exported, bf16, int8) and ``model`` in fp32 and in
    float64 on ``inputs``; return the :class:`Agreement` (``.ok`` says whether it is within its bound)."""
    exact = exact_outputs(model, inputs)
    return agreement(run_outputs(run, inputs), exact, fp32_outputs(model, inputs)[0], number_format)


__all__ = ["BOUNDS", "Agreement", "Bound", "agreement", "check_against_exact",
           "exact_outputs", "fp32_outputs", "relative_error", "run_outputs", "top1_agreement"]
