"""The forms a benchmark runs a model in (``NAME:FORM`` in a model list), their registry, and the built-in ones
of our models, in one place: ``NAME:bn``, ``NAME:memory_efficient``, ``NAME:ml_decoder`` and the deployment
paths ``NAME:fused``, ``NAME:bf16``, ``NAME:int8``, ``NAME:onnx``, ``NAME:onnx_int8``, ``NAME:pt2`` and ``NAME:aoti``.

A form (:class:`Form`) is a named way of turning a model's spec into what gets timed; :func:`register_form` adds
one. "Form" is the benchmark's word: a model's *variant* is its network shape (``arch``), and a run's
*precision* is its autocast; a deployment form sets its own *number format* (:data:`NUMBER_FORMATS`).

``ml_decoder`` is the model with the ML-Decoder head (``create_model(head="ml_decoder")``) instead of
pooling + fc, for the same 1000 classes (100 queries of 10 classes each), so that beside the plain model
its row gives the head's cost in parameters, GMACs and images per second, in every mode.

The built-in forms are registered when this module is imported. The deployment forms are inference-only:

- ``fused``: :func:`tresnet.deploy.fuse` of the eval model (fp32, channels-last);
- ``bf16``: ``fuse(model, dtype=torch.bfloat16)``: bfloat16 weights and activations, fp32 images in and
  logits out (CPU or GPU; what ``validate`` and ``predict`` run for ``--number-format bf16``);
- ``int8``: :func:`tresnet.deploy.quantize` (PT2E, then ``torch.compile``, which it runs while the
  form is built; CPU only, needs torchao);
- ``onnx``: :func:`tresnet.deploy.onnx_model`: the fused model exported to a temporary ONNX file (checked
  against the exact result by :func:`tresnet.deploy.export_model`) and run by ONNX Runtime with as many
  intra-op threads as PyTorch;
- ``onnx_int8``: the same file quantized to int8 by ONNX Runtime (``onnx_model(number_format="int8")``);
- ``pt2``: :func:`tresnet.deploy.pt2_model`: the fused model exported by ``torch.export`` to a temporary PT2 file
  (checked like ``onnx``) and loaded back, ``torch.export.load(path).module()``, run by PyTorch's eager kernels;
- ``aoti``: the same program compiled ahead of time by AOTInductor (``tresnet export --format aoti``; a C++
  compiler, about a minute for a small model, while the form is built).

``int8`` and ``onnx_int8`` measure the two int8 backends of ``validate`` and ``predict`` (``--int8-backend
pt2e`` and ``onnx``: :data:`INT8_BACKEND_FORMS`), as ``--number-format int8`` runs them.

All keep the plain eval model as their reference, so the benchmark records how far their logits are from
it (``max_rel_diff``). All but ``fused`` set their own number format (:data:`NUMBER_FORMATS`), so they
run with ``--precision fp32`` only; that format (for ``fused``, the run's precision) picks the compute
ceiling a row's speed is compared with (:mod:`tresnet.bench.ceiling`). The int8 paths are calibrated on
:data:`CALIBRATION_IMAGES` random uniform images at the benchmark's size: the speed of int8 kernels does
not depend on the values or on the ranges calibrated, only the accuracy does, which
``benchmarks/deploy_accuracy.py`` measures on real images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tresnet.bench.detectors import check_detector, detector_builder
from tresnet.bench.specs import MODES, BuildOptions, ModelSpec, build_base_model, native_img_size
from tresnet.deploy import fuse, onnx_model, pt2_model, quantize, require_onnx, require_torchao
from tresnet.errors import ConfigError

OURS = frozenset({"tresnet"})
INFER_ONLY = frozenset({"infer"})
# The peak resident memory of a process that builds these holds the plain model and its transformation
# (and, for ONNX, the exporter), so it would not be the memory of running them.
DEPLOY_PEAK_NOTE = "not measured: building a deployment form holds the plain model as well"
DEPLOYMENT_FORMS = ("fused", "bf16", "int8", "onnx", "onnx_int8", "pt2", "aoti")
# The number format of the matrix products of the forms that set their own (the others run in the run's
# --precision): the compute ceiling each is measured against.
NUMBER_FORMATS = {"bf16": "bf16", "int8": "int8", "onnx": "fp32", "onnx_int8": "int8", "pt2": "fp32", "aoti": "fp32"}
CALIBRATION_IMAGES = 32  # random images calibrating the int8 forms (their speed does not depend on them)
# The form that measures each int8 backend of tresnet.deploy.inference (INT8_BACKENDS).
INT8_BACKEND_FORMS = {"pt2e": "int8", "onnx": "onnx_int8"}


@dataclass(frozen=True)
class Form:
    """A named way of turning a spec into something to run.

    ``build(spec, options)`` returns an ``nn.Module`` (moved to the device by the runner; trainable
    when ``"train"`` is in ``modes``), a plain callable ``f(images) -> logits`` that handles its
    own device (inference only, no parameter or GMAC count), or a :class:`FormBuild` of either with
    the plain model it was derived from. ``impls`` limits which implementations it applies to (None:
    any). ``requires()``, when given, raises :class:`~tresnet.errors.MissingDependencyError` where a
    package it needs is absent; ``check(spec, options)`` raises :class:`ConfigError` for options it
    cannot run with (a device, a precision). With ``peak_memory_note`` the CPU peak-memory probe is
    skipped and the note recorded instead. ``task`` names the task whose batches, targets and loss the timed
    steps use (:class:`tresnet.tasks.Task`); None: images and class labels with cross-entropy.
    """

    name: str
    build: Callable[[ModelSpec, BuildOptions], Any]
    modes: frozenset[str] = frozenset({"infer"})
    impls: frozenset[str] | None = None
    description: str = ""
    requires: Callable[[], object] | None = None
    check: Callable[[ModelSpec, BuildOptions], None] | None = None
    peak_memory_note: str | None = None
    task: str | None = None  # a task whose batches and loss its steps take (a detector's); None: classification


@dataclass
class FormBuild:
    """What a form's build returns when it has more to say than the thing to run.

    ``run``: the module or callable that is timed. ``reference``: the plain eval model ``run`` was
    derived from; the benchmark records the largest difference of ``run``'s logits from it
    (``max_rel_diff``) and then drops it.
    """

    run: Any
    reference: nn.Module | None = None


_FORMS: dict[str, Form] = {}


def register_form(form: Form, *, replace: bool = False) -> None:
    """Make ``NAME:<form.name>`` usable in model lists. Raises :class:`ConfigError` on a clash."""
    if not form.name.isidentifier():
        raise ConfigError(f"form name {form.name!r} must be an identifier")
    if form.name in _FORMS and not replace:
        raise ConfigError(f"form {form.name!r} is already registered")
    if not form.modes or not set(form.modes) <= set(MODES):
        raise ConfigError(f"form {form.name!r}: modes must be a non-empty subset of {MODES}")
    _FORMS[form.name] = form


def list_forms() -> list[str]:
    """Names of the registered forms."""
    return sorted(_FORMS)


def get_form(name: str) -> Form:
    """The registered form ``name``; :class:`ConfigError` listing the known ones if absent."""
    if name not in _FORMS:
        known = ", ".join(list_forms()) or "none"
        raise ConfigError(f"unknown model form {name!r}; registered forms: {known}")
    return _FORMS[name]


def _plain_bn(spec: ModelSpec, options: BuildOptions) -> nn.Module:
    return build_base_model(spec, norm="bn")


def _memory_efficient(spec: ModelSpec, options: BuildOptions) -> nn.Module:
    return build_base_model(spec, memory_efficient=True)


def _ml_decoder(spec: ModelSpec, options: BuildOptions) -> nn.Module:
    return build_base_model(spec, head="ml_decoder")


def _fused(spec: ModelSpec, options: BuildOptions) -> FormBuild:
    model = build_base_model(spec).eval()
    return FormBuild(run=fuse(model), reference=model)


def _bf16(spec: ModelSpec, options: BuildOptions) -> FormBuild:
    model = build_base_model(spec).eval()
    return FormBuild(run=fuse(model, dtype=torch.bfloat16), reference=model)


def calibration_batch(img_size: int, count: int = CALIBRATION_IMAGES, seed: int = 0) -> torch.Tensor:
    """``count`` uniform [0, 1] images of ``img_size`` px, the same for the same ``seed``: calibration for a
    speed benchmark (the ranges they give change the accuracy, not the speed)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, img_size, img_size, generator=generator)


def _int8(spec: ModelSpec, options: BuildOptions) -> FormBuild:
    model = build_base_model(spec).eval()
    img_size = options.img_size or native_img_size(spec, model)
    int8 = quantize(model, calibration_batch(img_size))  # compiled here, once for every batch size
    # a plain callable: the benchmark neither moves nor converts nor compiles it again
    return FormBuild(run=int8.__call__, reference=model)


def _own_format_check(runtime: str, *, cpu_only: bool):
    """A form's ``check``: refuse a device other than the CPU (with ``cpu_only``) and any precision but
    fp32, since the form sets its own number format (:data:`NUMBER_FORMATS`)."""

    def check(spec: ModelSpec, options: BuildOptions) -> None:
        if cpu_only and options.device.type != "cpu":
            raise ConfigError(f"{spec.label} runs {runtime} on the CPU, not on {options.device}: use --device cpu")
        if options.precision != "fp32":
            raise ConfigError(f"{spec.label} runs in {NUMBER_FORMATS[str(spec.form)]} ({runtime}), not "
                              f"{options.precision}: use --precision fp32 (the form sets its own number format)")

    return check


def _onnx_runner(spec: ModelSpec, options: BuildOptions, *, int8: bool) -> FormBuild:
    """The plain model in ONNX Runtime, as :func:`tresnet.deploy.onnx_model` builds it (the fused model exported
    to a temporary file and checked, fp32, or with ``int8`` quantized by ONNX Runtime on
    :func:`calibration_batch`), with as many intra-op threads as PyTorch."""
    model = build_base_model(spec).eval()
    img_size = options.img_size or native_img_size(spec, model)
    quantized: dict[str, Any] = dict(number_format="int8", calibration=calibration_batch(img_size)) if int8 else {}
    runner = onnx_model(model, img_size=img_size, **quantized)
    # a plain callable: the benchmark neither moves nor converts nor counts the parameters of a session
    return FormBuild(run=runner.__call__, reference=model)


def _onnx(spec: ModelSpec, options: BuildOptions) -> FormBuild:
    return _onnx_runner(spec, options, int8=False)


def _onnx_int8(spec: ModelSpec, options: BuildOptions) -> FormBuild:
    return _onnx_runner(spec, options, int8=True)


def _program_runner(format: str):
    """A form's build: the fused model's checked PT2 export as ``format`` (``pt2`` or ``aoti``) loaded back
    (:func:`tresnet.deploy.pt2_model`), any batch size."""

    def build(spec: ModelSpec, options: BuildOptions) -> FormBuild:
        model = build_base_model(spec).eval()
        loaded = pt2_model(model, format=format, img_size=options.img_size or native_img_size(spec, model))
        # a plain callable, not the module: the benchmark neither moves nor converts nor compiles (nor puts in
        # eval mode, which an exported program refuses) the exported program again
        return FormBuild(run=lambda images: loaded(images), reference=model)

    return build


BUILTIN_FORMS = (
    Form(name="bn", build=_plain_bn, modes=frozenset(MODES), impls=OURS,
            description="our model with plain BatchNorm + activation instead of In-Place ABN"),
    Form(name="memory_efficient", build=_memory_efficient, modes=frozenset(MODES), impls=OURS,
            description="our model with the memory-lean Bottleneck tails (create_model(memory_efficient=True))"),
    Form(name="ml_decoder", build=_ml_decoder, modes=frozenset(MODES), impls=OURS,
            description="our model with the ML-Decoder head instead of pooling + fc "
                        "(create_model(head='ml_decoder'), same classes)"),
    Form(name="fused", build=_fused, modes=INFER_ONLY, impls=OURS, peak_memory_note=DEPLOY_PEAK_NOTE,
            description="tresnet.deploy.fuse(model): BatchNorm folded, fused activations, channels-last "
                        "(inference only)"),
    Form(name="bf16", build=_bf16, modes=INFER_ONLY, impls=OURS, peak_memory_note=DEPLOY_PEAK_NOTE,
            check=_own_format_check("bfloat16 weights and activations", cpu_only=False),
            description="fuse(model, dtype=torch.bfloat16): the fused model in bfloat16, fp32 images in and "
                        "logits out (inference only; --precision fp32)"),
    Form(name="int8", build=_int8, modes=INFER_ONLY, impls=OURS, requires=require_torchao,
            check=_own_format_check("PyTorch's int8 kernels", cpu_only=True), peak_memory_note=DEPLOY_PEAK_NOTE,
            description="tresnet.deploy.quantize(model): PT2E int8 compiled by torch.compile (--int8-backend "
                        "pt2e), calibrated on random images (inference only, on the CPU, --precision fp32; needs torchao: pip "
                        "install 'tresnet[int8]'; compiling takes about a minute)"),
    Form(name="onnx", build=_onnx, modes=INFER_ONLY, impls=OURS, requires=require_onnx,
            check=_own_format_check("ONNX Runtime", cpu_only=True), peak_memory_note=DEPLOY_PEAK_NOTE,
            description="the fused model exported to ONNX, run by ONNX Runtime (inference only, on the CPU, "
                        "fp32; pip install 'tresnet[export]')"),
    Form(name="onnx_int8", build=_onnx_int8, modes=INFER_ONLY, impls=OURS, requires=require_onnx,
            check=_own_format_check("ONNX Runtime", cpu_only=True), peak_memory_note=DEPLOY_PEAK_NOTE,
            description="the ONNX export quantized to int8 by ONNX Runtime (--int8-backend onnx), calibrated "
                        "on random images (inference only, on the CPU, --precision fp32; pip install 'tresnet[export]')"),
    Form(name="pt2", build=_program_runner("pt2"), modes=INFER_ONLY, impls=OURS,
            check=_own_format_check("its torch.export program", cpu_only=True), peak_memory_note=DEPLOY_PEAK_NOTE,
            description="the fused model exported by torch.export (a PT2 file, dynamic batch) and loaded back: "
                        "torch.export.load(path).module() (inference only, on the CPU, fp32)"),
    Form(name="aoti", build=_program_runner("aoti"), modes=INFER_ONLY, impls=OURS,
            check=_own_format_check("its AOTInductor-compiled program", cpu_only=True),
            peak_memory_note=DEPLOY_PEAK_NOTE,
            description="that PT2 program compiled ahead of time by AOTInductor and loaded back: "
                        "torch._inductor.aoti_load_package(path) (inference only, on the CPU, fp32; needs a C++ "
                        "compiler; compiling takes minutes)"),
    *(Form(name=head, build=detector_builder(head), modes=frozenset(MODES), check=check_detector, task="detection",
           description=f"torchvision's {title} on the model's backbone as a detection run from ImageNet weights "
                       f"trains it (norms frozen, three backbone parts trained, random boxes as targets); "
                       f"resnet50:{head}: torchvision's {head}_resnet50_fpn built the same way; 80 classes, the "
                       f"input side as the detector's size")
      for head, title in (("fcos", "FCOS"), ("retinanet", "RetinaNet"))),
)

for _builtin in BUILTIN_FORMS:
    register_form(_builtin)

__all__ = ["BUILTIN_FORMS", "CALIBRATION_IMAGES", "DEPLOYMENT_FORMS", "INT8_BACKEND_FORMS", "NUMBER_FORMATS", "Form",
           "FormBuild", "calibration_batch", "get_form", "list_forms", "register_form"]
