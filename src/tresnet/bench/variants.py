"""The built-in benchmark variants of our models, in one place: ``NAME:bn``, ``NAME:memory_efficient``,
``NAME:ml_decoder``, ``NAME:fused`` and ``NAME:onnx``.

``ml_decoder`` is the model with the ML-Decoder head (``create_model(head="ml_decoder")``) instead of
pooling + fc, for the same 1000 classes (100 queries of 10 classes each), so that beside the plain model
its row gives the head's cost in parameters, GMACs and images per second, in every mode.

Importing this module registers them (:mod:`tresnet.bench.targets` does so on first use of the
registry). The deployment variants are inference-only and import :mod:`tresnet.deploy` when built:
``fused`` is :func:`tresnet.deploy.fuse` of the eval model; ``onnx`` is the fused model exported to a
temporary ONNX file (checked against PyTorch by :func:`tresnet.deploy.export_model`) and run by ONNX
Runtime with as many intra-op threads as PyTorch. Both keep the plain eval model as their reference,
so the benchmark records how far their logits are from it (``max_rel_diff``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

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


class OnnxRunner:
    """An ONNX Runtime session called like a model: a torch batch in, torch logits out (on the CPU)."""

    def __init__(self, session) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().cpu().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def _require_onnx() -> None:
    from tresnet.deploy.export import require_onnx

    require_onnx()


def _check_onnx(spec: ModelSpec, options: BuildOptions) -> None:
    if options.device.type != "cpu":
        raise ConfigError(f"{spec.label} runs ONNX Runtime on the CPU, not on {options.device}: use --device cpu")
    if options.precision != "fp32":
        raise ConfigError(f"{spec.label} runs in fp32 (ONNX Runtime), not {options.precision}: use --precision fp32")


def _onnx(spec: ModelSpec, options: BuildOptions) -> VariantBuild:
    from tresnet.deploy import export_model
    from tresnet.deploy.export import onnx_session

    model = build_base_model(spec).eval()
    img_size = options.img_size or native_img_size(spec, model)
    with tempfile.TemporaryDirectory(prefix="tresnet-bench-") as folder:
        report = export_model(model, Path(folder) / f"{spec.name}.onnx", format="onnx", img_size=img_size,
                              dynamic_batch=True)
        session = onnx_session(report.path, threads=torch.get_num_threads())
    return VariantBuild(run=OnnxRunner(session), reference=model)


BUILTIN_VARIANTS = (
    Variant(name="bn", build=_plain_bn, modes=frozenset(MODES), impls=OURS,
            description="our model with plain BatchNorm + activation instead of In-Place ABN"),
    Variant(name="memory_efficient", build=_memory_efficient, modes=frozenset(MODES), impls=OURS,
            description="our model with the memory-lean Bottleneck tails (create_model(memory_efficient=True))"),
    Variant(name="ml_decoder", build=_ml_decoder, modes=frozenset(MODES), impls=OURS,
            description="our model with the ML-Decoder head instead of pooling + fc "
                        "(create_model(head='ml_decoder'), same classes)"),
    Variant(name="fused", build=_fused, modes=INFER_ONLY, impls=OURS, peak_memory_note=DEPLOY_PEAK_NOTE,
            description="tresnet.deploy.fuse(model): BatchNorm folded, fused activations, channels-last"),
    Variant(name="onnx", build=_onnx, modes=INFER_ONLY, impls=OURS, requires=_require_onnx, check=_check_onnx,
            peak_memory_note=DEPLOY_PEAK_NOTE,
            description="the fused model exported to ONNX, run by ONNX Runtime on the CPU"),
)

for _variant in BUILTIN_VARIANTS:
    register_variant(_variant, replace=True)
