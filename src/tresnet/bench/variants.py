"""The built-in benchmark variants of our models, in one place: ``NAME:bn``, ``NAME:memory_efficient``,
``NAME:ml_decoder`` and the deployment paths ``NAME:fused``, ``NAME:bf16``, ``NAME:int8``, ``NAME:onnx`` and
``NAME:onnx_int8``.

``ml_decoder`` is the model with the ML-Decoder head (``create_model(head="ml_decoder")``) instead of
pooling + fc, for the same 1000 classes (100 queries of 10 classes each), so that beside the plain model
its row gives the head's cost in parameters, GMACs and images per second, in every mode.

Importing this module registers them (:mod:`tresnet.bench.targets` does so on first use of the
registry). The deployment variants are inference-only and import :mod:`tresnet.deploy` when built:

- ``fused``: :func:`tresnet.deploy.fuse` of the eval model (fp32, channels-last);
- ``bf16``: ``fuse(model, dtype=torch.bfloat16)``: bfloat16 weights and activations, fp32 images in and
  logits out (CPU or GPU);
- ``int8``: :func:`tresnet.deploy.quantize` (PT2E, then ``torch.compile``, which it runs while the
  variant is built; CPU only, needs torchao);
- ``onnx``: :func:`tresnet.deploy.onnx_model`: the fused model exported to a temporary ONNX file (checked
  against the exact result by :func:`tresnet.deploy.export_model`) and run by ONNX Runtime with as many
  intra-op threads as PyTorch;
- ``onnx_int8``: the same file quantized to int8 by ONNX Runtime (``onnx_model(precision="int8")``).

``int8`` and ``onnx_int8`` measure the two int8 backends of ``validate`` and ``predict`` (``--int8-backend
pt2e`` and ``onnx``: :data:`INT8_BACKEND_VARIANTS`).

All keep the plain eval model as their reference, so the benchmark records how far their logits are from
it (``max_rel_diff``). All but ``fused`` set their own number format (:data:`NUMBER_FORMATS`), so they
run with ``--precision fp32`` only; that format (for ``fused``, the run's precision) picks the compute
ceiling a row's speed is compared with (:mod:`tresnet.bench.ceiling`). The int8 paths are calibrated on
:data:`CALIBRATION_IMAGES` random uniform images at the benchmark's size: the speed of int8 kernels does
not depend on the values or on the ranges calibrated, only the accuracy does, which
``benchmarks/deploy_accuracy.py`` measures on real images.
"""

from __future__ import annotations

import torch
from torch import nn

from tresnet.bench.targets import (
    MODES,
    BuildOptions,
    ModelSpec,
    Variant,
    VariantBuild,
    build_base_model,
    native_img_size,
    register_variant,
)
from tresnet.errors import ConfigError

OURS = frozenset({"tresnet"})
INFER_ONLY = frozenset({"infer"})
# The peak resident memory of a process that builds these holds the plain model and its transformation
# (and, for ONNX, the exporter), so it would not be the memory of running them.
DEPLOY_PEAK_NOTE = "not measured: building a deployment variant holds the plain model as well"
DEPLOYMENT_VARIANTS = ("fused", "bf16", "int8", "onnx", "onnx_int8")
# The number format of the matrix products of the variants that set their own (the others run in the run's
# --precision): the compute ceiling each is measured against.
NUMBER_FORMATS = {"bf16": "bf16", "int8": "int8", "onnx": "fp32", "onnx_int8": "int8"}
CALIBRATION_IMAGES = 32  # random images calibrating the int8 variants (their speed does not depend on them)
# The variant that measures each int8 backend of tresnet.deploy.inference (INT8_BACKENDS).
INT8_BACKEND_VARIANTS = {"pt2e": "int8", "onnx": "onnx_int8"}


def _plain_bn(spec: ModelSpec, options: BuildOptions) -> nn.Module:
    return build_base_model(spec, norm="bn")


def _memory_efficient(spec: ModelSpec, options: BuildOptions) -> nn.Module:
    return build_base_model(spec, memory_efficient=True)


def _ml_decoder(spec: ModelSpec, options: BuildOptions) -> nn.Module:
    return build_base_model(spec, head="ml_decoder")


def _fused(spec: ModelSpec, options: BuildOptions) -> VariantBuild:
    from tresnet.deploy import fuse

    model = build_base_model(spec).eval()
    return VariantBuild(run=fuse(model), reference=model)


def _bf16(spec: ModelSpec, options: BuildOptions) -> VariantBuild:
    from tresnet.deploy import fuse

    model = build_base_model(spec).eval()
    return VariantBuild(run=fuse(model, dtype=torch.bfloat16), reference=model)


def calibration_batch(img_size: int, count: int = CALIBRATION_IMAGES, seed: int = 0) -> torch.Tensor:
    """``count`` uniform [0, 1] images of ``img_size`` px, the same for the same ``seed``: calibration for a
    speed benchmark (the ranges they give change the accuracy, not the speed)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, img_size, img_size, generator=generator)


def _int8(spec: ModelSpec, options: BuildOptions) -> VariantBuild:
    from tresnet.deploy import quantize

    model = build_base_model(spec).eval()
    img_size = options.img_size or native_img_size(spec, model)
    int8 = quantize(model, calibration_batch(img_size))  # compiled here, once for every batch size
    # a plain callable: the benchmark neither moves nor converts nor compiles it again
    return VariantBuild(run=int8.__call__, reference=model)


def _require_onnx() -> None:
    from tresnet.deploy.onnx_runtime import require_onnx

    require_onnx()


def _require_torchao() -> None:
    from tresnet.deploy import require_torchao

    require_torchao()


def _own_format_check(runtime: str, *, cpu_only: bool):
    """A variant's ``check``: refuse a device other than the CPU (with ``cpu_only``) and any precision but
    fp32, since the variant sets its own number format (:data:`NUMBER_FORMATS`)."""

    def check(spec: ModelSpec, options: BuildOptions) -> None:
        if cpu_only and options.device.type != "cpu":
            raise ConfigError(f"{spec.label} runs {runtime} on the CPU, not on {options.device}: use --device cpu")
        if options.precision != "fp32":
            raise ConfigError(f"{spec.label} runs in {NUMBER_FORMATS[spec.variant]} ({runtime}), not "
                              f"{options.precision}: use --precision fp32 (the variant sets its own number format)")

    return check


def _onnx_runner(spec: ModelSpec, options: BuildOptions, *, int8: bool) -> VariantBuild:
    """The plain model in ONNX Runtime, as :func:`tresnet.deploy.onnx_model` builds it (the fused model exported
    to a temporary file and checked, fp32, or with ``int8`` quantized by ONNX Runtime on
    :func:`calibration_batch`), with as many intra-op threads as PyTorch."""
    from tresnet.deploy import onnx_model

    model = build_base_model(spec).eval()
    img_size = options.img_size or native_img_size(spec, model)
    quantized = dict(precision="int8", calibration=calibration_batch(img_size)) if int8 else {}
    runner = onnx_model(model, img_size=img_size, **quantized)
    # a plain callable: the benchmark neither moves nor converts nor counts the parameters of a session
    return VariantBuild(run=runner.__call__, reference=model)


def _onnx(spec: ModelSpec, options: BuildOptions) -> VariantBuild:
    return _onnx_runner(spec, options, int8=False)


def _onnx_int8(spec: ModelSpec, options: BuildOptions) -> VariantBuild:
    return _onnx_runner(spec, options, int8=True)


BUILTIN_VARIANTS = (
    Variant(name="bn", build=_plain_bn, modes=frozenset(MODES), impls=OURS,
            description="our model with plain BatchNorm + activation instead of In-Place ABN"),
    Variant(name="memory_efficient", build=_memory_efficient, modes=frozenset(MODES), impls=OURS,
            description="our model with the memory-lean Bottleneck tails (create_model(memory_efficient=True))"),
    Variant(name="ml_decoder", build=_ml_decoder, modes=frozenset(MODES), impls=OURS,
            description="our model with the ML-Decoder head instead of pooling + fc "
                        "(create_model(head='ml_decoder'), same classes)"),
    Variant(name="fused", build=_fused, modes=INFER_ONLY, impls=OURS, peak_memory_note=DEPLOY_PEAK_NOTE,
            description="tresnet.deploy.fuse(model): BatchNorm folded, fused activations, channels-last "
                        "(inference only)"),
    Variant(name="bf16", build=_bf16, modes=INFER_ONLY, impls=OURS, peak_memory_note=DEPLOY_PEAK_NOTE,
            check=_own_format_check("bfloat16 weights and activations", cpu_only=False),
            description="fuse(model, dtype=torch.bfloat16): the fused model in bfloat16, fp32 images in and "
                        "logits out (inference only; --precision fp32)"),
    Variant(name="int8", build=_int8, modes=INFER_ONLY, impls=OURS, requires=_require_torchao,
            check=_own_format_check("PyTorch's int8 kernels", cpu_only=True), peak_memory_note=DEPLOY_PEAK_NOTE,
            description="tresnet.deploy.quantize(model): PT2E int8 compiled by torch.compile (--int8-backend "
                        "pt2e), calibrated on random images (inference only, on the CPU, --precision fp32; needs torchao: pip "
                        "install 'tresnet[int8]'; compiling takes about a minute)"),
    Variant(name="onnx", build=_onnx, modes=INFER_ONLY, impls=OURS, requires=_require_onnx,
            check=_own_format_check("ONNX Runtime", cpu_only=True), peak_memory_note=DEPLOY_PEAK_NOTE,
            description="the fused model exported to ONNX, run by ONNX Runtime (inference only, on the CPU, "
                        "fp32; pip install 'tresnet[export]')"),
    Variant(name="onnx_int8", build=_onnx_int8, modes=INFER_ONLY, impls=OURS, requires=_require_onnx,
            check=_own_format_check("ONNX Runtime", cpu_only=True), peak_memory_note=DEPLOY_PEAK_NOTE,
            description="the ONNX export quantized to int8 by ONNX Runtime (--int8-backend onnx), calibrated "
                        "on random images (inference only, on the CPU, --precision fp32; pip install 'tresnet[export]')"),
)

for _variant in BUILTIN_VARIANTS:
    register_variant(_variant, replace=True)
