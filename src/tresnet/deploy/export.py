"""ONNX, PT2 and TorchScript export that is checked against the exact result before the file appears.

:func:`export_model` prepares the model (folded with :func:`tresnet.deploy.fuse` unless told not to; in
fp32, fp16, bfloat16, or int8 calibrated on images), writes the file to a temporary name beside the
output, loads it back (ONNX Runtime for ONNX, ``torch.export.load`` for PT2, ``torch.jit.load`` for
TorchScript) and runs it on check images. The file's outputs, and those of the fp32 PyTorch model, are each
compared with the model run in float64 (:mod:`tresnet.deploy.exactness`): the file is accepted when its error is
within the bound of its number format (:data:`EXPORT_NUMBER_FORMATS`), ``max(multiple * PyTorch fp32's error,
floor)``. Only then is it renamed to the output path; otherwise nothing is written and
:class:`ExportMismatchError` gives both errors.

ONNX uses PyTorch's TorchScript-based exporter (``dynamo=False``), which needs only ``onnx``; the
newer exporter needs ``onnxscript``. ONNX and ONNX Runtime are the optional extra
``pip install 'tresnet[export]'``. int8 files are ONNX, quantized by ONNX Runtime
(:func:`tresnet.deploy.quantize_onnx`); bfloat16 files are PT2 or TorchScript, since ONNX Runtime has no
bfloat16 convolution on the CPU. PT2 (:mod:`tresnet.deploy.pt2`) is a ``torch.export`` ExportedProgram
(``pt2``), or that program compiled by AOTInductor (``aoti``); it replaces TorchScript, whose ``torch.jit``
functions PyTorch 2.14 deprecates.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from tresnet.data.transforms import Preprocessing
from tresnet.deploy.detection_export import export_detector, is_detector
from tresnet.deploy.exactness import Agreement, as_list, exact_outputs, fp32_outputs
from tresnet.deploy.export_files import (
    DEFAULT_OPSET,
    PREPROCESSING_METADATA,
    TRACE_BATCH,
    ExportReport,
    check_export_args,
    judge,
    record_metadata,
    refusal_as_error,
    run_onnx,
    write_atomically,
    write_onnx,
)
from tresnet.deploy.fusion import cast_for_inference, fuse
from tresnet.deploy.int8 import DEFAULT_CALIBRATION_IMAGES, Calibration, quantize_onnx, resolve_calibration
from tresnet.deploy.pt2 import PROGRAM_FORMATS, run_program, write_program
from tresnet.errors import ConfigError

DEFAULT_IMG_SIZE = 224
# The exported file is checked at the traced batch size (TRACE_BATCH), and at another when the batch is dynamic.
CHECK_SEED = 0  # the check's random images are the same at every export
DYNAMIC_CHECK_BATCH = 3


def _img_size(model: nn.Module, img_size: int | tuple[int, int] | None) -> tuple[int, int]:
    if img_size is None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        size = tuple(cfg.get("input_size", (3, DEFAULT_IMG_SIZE, DEFAULT_IMG_SIZE))[-2:])
    elif isinstance(img_size, int):
        size = (img_size, img_size)
    else:
        size = tuple(img_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ConfigError(f"image size {img_size!r} is not a positive int or (height, width)")
    check = getattr(model, "check_input_size", None)
    if check is not None:
        check(*size)
    return size


def _output_names(count: int, listed: bool) -> list[str]:
    return [f"features_{i}" for i in range(count)] if listed else ["logits"]


def prepare_for_export(model: nn.Module, *, fused: bool = True, number_format: str = "fp32") -> nn.Module:
    """The CPU eval-mode copy of ``model`` that gets exported: folded (:func:`fuse`) unless ``fused=False``.

    ``number_format``: fp32 and int8 give an fp32 copy (int8 is quantized
    from the exported fp32 file); fp16 an fp16 copy taking fp16 images (an unfolded model's BatchNorms stay
    fp32); bf16 a bfloat16 copy that takes and returns fp32 (:func:`fuse` with ``dtype``). ``model`` is
    left untouched.
    """
    prepared = fuse(model) if fused else copy.deepcopy(model).eval().requires_grad_(False)
    prepared = prepared.to("cpu")
    if number_format == "bf16":
        return cast_for_inference(prepared.float(), torch.bfloat16)
    if number_format != "fp16":
        return prepared.float()
    prepared.half()
    for module in prepared.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.float()  # norms of an unfolded model stay fp32 on fp16 inputs, as under autocast
    return prepared


def _write_onnx(prepared: nn.Module, example: torch.Tensor, path: str, *, opset: int, dynamic_batch: bool,
                output_names: list[str]) -> None:
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: "batch"} for name in ["input", *output_names]}
    write_onnx(prepared, (example,), path, opset=opset, input_names=["input"], output_names=output_names,
               dynamic_axes=dynamic_axes)


def _write_torchscript(prepared: nn.Module, example: torch.Tensor, path: str, *, listed: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic
        with torch.no_grad():
            traced = torch.jit.trace(prepared, example, check_trace=False, strict=not listed)
        torch.jit.save(traced, path)  # (deprecation notice silenced: TorchScript is what we are asked for)


def _run_torchscript(path: str, inputs: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(path, map_location="cpu")
    loaded.eval()
    with torch.no_grad():
        return [[o.float() for o in as_list(loaded(x))] for x in inputs]


def _random_images(batch_sizes: tuple[int, ...], channels: int, size: tuple[int, int], seed: int) -> list[torch.Tensor]:
    """One batch of uniform [0, 1] images per batch size, the same for the same ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(b, channels, *size, generator=gen) for b in batch_sizes]


def _calibration_check_images(images: torch.Tensor, batch_sizes: tuple[int, ...]) -> list[torch.Tensor]:
    """Check batches of the given sizes taken from the calibration images (repeated when there are too few)."""
    needed = sum(batch_sizes)
    pool = images.repeat((needed + len(images) - 1) // len(images), 1, 1, 1)[:needed]
    return list(pool.split(list(batch_sizes)))


def _onnx_int8(prepared: nn.Module, example: torch.Tensor, path: str, calibration: torch.Tensor, *, opset: int,
               dynamic_batch: bool, output_names: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="tresnet-export-", dir=Path(path).parent) as folder:
        float_path = str(Path(folder) / "fp32.onnx")
        _write_onnx(prepared, example, float_path, opset=opset, dynamic_batch=dynamic_batch,
                    output_names=output_names)
        quantize_onnx(float_path, path, calibration)


def export_preprocessing(model: nn.Module, size: tuple[int, int]) -> dict | None:
    """How the inputs of ``model``'s exported file are prepared (:class:`~tresnet.data.transforms.Preprocessing`
    at the export size, as a dict), or None for a model without a configuration."""
    cfg = getattr(model, "pretrained_cfg", None)
    if not cfg:
        return None
    return replace(Preprocessing.of(model), img_size=(size[0], size[1])).to_dict()


def _write_and_run(prepared: nn.Module, inputs: list[torch.Tensor], tmp: str, *, format: str, opset: int,
                   dynamic_batch: bool, output_names: list[str], metadata: dict[str, dict | None], model_name: str,
                   calibration: torch.Tensor | None) -> list[list[torch.Tensor]]:
    """Write ``prepared`` to ``tmp`` as ``format`` (int8 when ``calibration`` is given) with ``metadata``, load it back
    and run it on ``inputs``.

    Raises :class:`ExportError` in one line when the exporter, the quantizer or the runtime refuses the model.
    """
    with refusal_as_error(format, model_name):
        if format in PROGRAM_FORMATS:  # torch.export's: the metadata is saved with the program
            # torch.export specializes a batch of 1: a dynamic batch is traced on the largest check batch
            write_program(prepared, inputs[-1] if dynamic_batch else inputs[0], tmp, format=format,
                          dynamic_batch=dynamic_batch, metadata=metadata)
            return run_program(tmp, inputs)
        if format == "onnx" and calibration is not None:
            _onnx_int8(prepared, inputs[0], tmp, calibration, opset=opset, dynamic_batch=dynamic_batch,
                       output_names=output_names)
        elif format == "onnx":
            _write_onnx(prepared, inputs[0], tmp, opset=opset, dynamic_batch=dynamic_batch, output_names=output_names)
        else:
            _write_torchscript(prepared, inputs[0], tmp, listed=output_names != ["logits"])
        got = run_onnx(tmp, inputs) if format == "onnx" else _run_torchscript(tmp, inputs)
    record_metadata(tmp, format, metadata)  # metadata only: the checked graph is unchanged
    return got


def _check_images(model: nn.Module, calibration: torch.Tensor | None, batch_sizes: tuple[int, ...],
                  size: tuple[int, int], seed: int) -> list[torch.Tensor]:
    """The images an export is checked on: calibration images for int8, random ones otherwise."""
    if calibration is not None:
        return _calibration_check_images(calibration, batch_sizes)
    return _random_images(batch_sizes, getattr(model, "in_chans", 3), size, seed)


def _calibration_batch(model: nn.Module, calibration: Calibration | None, size: tuple[int, int]) -> torch.Tensor:
    """The int8 calibration images: a ready batch, or ``calibration.count`` images of a folder at ``size``."""
    if calibration is None:
        raise ConfigError("int8 export needs calibration images: --calibration DIR (a folder of images like the "
                          "ones the model will see), or calibration=Calibration(DIR) from Python")
    return resolve_calibration(calibration.images, model, count=calibration.count or DEFAULT_CALIBRATION_IMAGES,
                               size=size)


def export_model(model: nn.Module, output: str | os.PathLike, *, format: str,
                 img_size: int | tuple[int, int] | None = None, dynamic_batch: bool = False,
                 number_format: str = "fp32", fused: bool = True, opset: int = DEFAULT_OPSET,
                 calibration: Calibration | None = None, tolerance: float | None = None) -> ExportReport:
    """Export ``model`` to ``output`` as ONNX, PT2 (``pt2``, or ``aoti`` compiled by AOTInductor) or TorchScript
    (``format``: :data:`FORMATS`), checked against the float64 result; return the report.

    The export is traced on CPU at batch 1 and ``img_size`` (default: the model's configured input
    size); with ``dynamic_batch`` the batch axis is free and the check also runs at batch 3 (PT2 is then traced
    at batch 3, since ``torch.export`` specializes a batch of 1).
    ``number_format`` (the file's, :data:`EXPORT_NUMBER_FORMATS`): ``fp32`` (default), ``fp16``, ``bf16``
    (PT2 and TorchScript: fp32 in and out, bfloat16 inside) or ``int8`` (ONNX only, quantized by ONNX Runtime,
    calibrated on ``calibration``, a :class:`~tresnet.deploy.int8.Calibration`: a folder of images, ``count`` of
    them (default :data:`~tresnet.deploy.int8.DEFAULT_CALIBRATION_IMAGES`), or a preprocessed batch).

    The check runs the file and ``model`` in fp32 and float64 (eval, CPU) on seeded random images in [0, 1] (int8:
    calibration images): the file's largest difference from float64, as a fraction of the largest output,
    must be within :data:`~tresnet.deploy.exactness.BOUNDS` of ``number_format`` (or ``tolerance``). The file is
    renamed to ``output`` only when it passes, and records its inputs' preprocessing (:data:`PREPROCESSING_METADATA`).

    Raises :class:`~tresnet.errors.ConfigError` (unknown format or number format, a number format the format
    cannot hold, int8 without calibration, bad size argument), :class:`~tresnet.errors.InputSizeError`
    (a size the model cannot take), :class:`~tresnet.errors.DataError` (calibration images that cannot be
    found or read), :class:`~tresnet.errors.MissingDependencyError` (ONNX without its packages),
    :class:`ExportError` (an output that cannot be written, or a file the exporter, the quantizer or the
    runtime refuses) and :class:`ExportMismatchError`.
    """
    if is_detector(model):
        return export_detector(model, output, format=format, opset=opset, fused=fused, number_format=number_format,
                               dynamic_batch=dynamic_batch, img_size=img_size, tolerance=tolerance)
    path = check_export_args(format, output, opset, number_format)
    size = _img_size(model, img_size)
    calibration_batch = _calibration_batch(model, calibration, size) if number_format == "int8" else None
    prepared = prepare_for_export(model, fused=fused, number_format=number_format)
    batch_sizes = (TRACE_BATCH, DYNAMIC_CHECK_BATCH) if dynamic_batch else (TRACE_BATCH,)
    images = _check_images(model, calibration_batch, batch_sizes, size, CHECK_SEED)
    exact = exact_outputs(model, images)
    fp32, listed = fp32_outputs(model, images)
    inputs = [x.to(torch.float16) if number_format == "fp16" else x for x in images]
    output_names = _output_names(len(fp32[0]), listed)
    found: list[Agreement] = []

    def write_and_check(tmp: str) -> None:
        got = _write_and_run(prepared, inputs, tmp, format=format, opset=opset, dynamic_batch=dynamic_batch,
                             output_names=output_names, metadata={PREPROCESSING_METADATA: preprocessing},
                             model_name=type(model).__name__, calibration=calibration_batch)
        found.append(judge(got, exact, fp32, number_format, tolerance, format, path))

    preprocessing = export_preprocessing(model, size)
    write_atomically(path, write_and_check)
    result = found[0]
    return ExportReport(path=path, format=format, img_size=size, fused=fused, number_format=number_format,
                        dynamic_batch=dynamic_batch, opset=opset if format == "onnx" else None,
                        batch_sizes=batch_sizes, max_abs_diff=result.abs_error, max_rel_diff=result.error,
                        fp32_error=result.fp32_error, limit=result.limit,
                        calibration_images=len(calibration_batch) if calibration_batch is not None else None,
                        preprocessing=preprocessing)


__all__ = ["export_model", "export_preprocessing", "prepare_for_export"]
