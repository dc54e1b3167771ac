"""ONNX and TorchScript export that is checked against PyTorch before the file appears.

:func:`export_model` prepares the model (folded with :func:`tresnet.deploy.fuse` unless told not
to), writes the file to a temporary name beside the output, loads it back (ONNX Runtime for ONNX,
``torch.jit.load`` for TorchScript), runs it on random images and compares with the original
PyTorch model in eval mode. Only when the largest difference is within tolerance is the file
renamed to the output path; otherwise nothing is written and :class:`ExportMismatchError` says by
how much it missed.

ONNX uses PyTorch's TorchScript-based exporter (``dynamo=False``), which needs only ``onnx``; the
newer exporter needs ``onnxscript``. ONNX and ONNX Runtime are the optional extra
``pip install 'tresnet[export]'``.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from tresnet.deploy.fusion import fuse
from tresnet.errors import ConfigError, FileWriteError, MissingDependencyError, TResNetError
from tresnet.files import atomic_write

FORMATS = ("onnx", "torchscript")
DEFAULT_OPSET = 17
MIN_OPSET = 9  # ONNX Runtime lacks kernels for some of our ops below this


def max_opset() -> int:
    """The newest opset PyTorch's exporter writes."""
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET
    except ImportError:  # a private module: fall back to a version every supported torch writes
        return 20
    return int(ONNX_MAX_OPSET)

DEFAULT_IMG_SIZE = 224
# Largest difference allowed, relative to the largest magnitude of the PyTorch output.
FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2
# Batch sizes the exported file is checked at: the traced one, and another when the batch is dynamic.
TRACE_BATCH = 1
DYNAMIC_CHECK_BATCH = 3


class ExportError(TResNetError):
    """An export that cannot be written where asked."""


class ExportMismatchError(ExportError):
    """An exported model whose outputs differ from PyTorch's by more than the tolerance."""


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_model` wrote and how closely it matches PyTorch."""

    path: Path
    format: str
    img_size: tuple[int, int]
    fused: bool
    fp16: bool
    dynamic_batch: bool
    opset: int | None
    batch_sizes: tuple[int, ...]
    max_abs_diff: float
    max_rel_diff: float
    tolerance: float

    def summary(self) -> str:
        """One line for the command line."""
        details = [self.format + (f" (opset {self.opset})" if self.opset else ""),
                   "fused" if self.fused else "not fused", "fp16" if self.fp16 else "fp32",
                   f"{self.img_size[0]}x{self.img_size[1]}",
                   "dynamic batch" if self.dynamic_batch else f"batch {TRACE_BATCH}"]
        batches = ", ".join(str(b) for b in self.batch_sizes)
        return (f"wrote {self.path} ({', '.join(details)}); largest difference from PyTorch at batch "
                f"{batches}: {self.max_abs_diff:.3g} ({self.max_rel_diff:.3g} of the largest output, "
                f"tolerance {self.tolerance:g})")


def require_onnx() -> tuple[ModuleType, ModuleType]:
    """``(onnx, onnxruntime)``; :class:`~tresnet.errors.MissingDependencyError` saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise MissingDependencyError(
            f"ONNX export needs the packages onnx and onnxruntime ({e.name or e} is missing): "
            f"pip install 'tresnet[export]'"
        ) from e
    return onnx, onnxruntime


def check_export_args(format: str, output: str | os.PathLike, opset: int = DEFAULT_OPSET) -> Path:
    """Validate the format, the opset and the output path before any work; return the output path.

    Raises :class:`~tresnet.errors.ConfigError` for an unknown format or an opset outside what we
    can write and run, :class:`ExportError` for an output that is a folder, and
    :class:`~tresnet.errors.MissingDependencyError` when ONNX is asked for without its packages.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if format == "onnx" and not MIN_OPSET <= opset <= max_opset():
        raise ConfigError(f"ONNX opset {opset} is not supported; choose one from {MIN_OPSET} to {max_opset()} "
                          f"(default {DEFAULT_OPSET})")
    path = Path(output).expanduser()
    if path.is_dir():
        suffix = ".onnx" if format == "onnx" else ".pt"
        raise ExportError(f"output {path} is a folder; give a file path such as {path / ('model' + suffix)}")
    if format == "onnx":
        require_onnx()
    return path


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
    return size  # type: ignore[return-value]


def _as_list(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _output_names(count: int, listed: bool) -> list[str]:
    return [f"features_{i}" for i in range(count)] if listed else ["logits"]


def prepare_for_export(model: nn.Module, *, fused: bool = True, fp16: bool = False) -> nn.Module:
    """The CPU eval-mode copy of ``model`` that gets exported: folded (:func:`fuse`) unless ``fused=False``.

    The copy is fp16 with ``fp16`` (an unfolded model's BatchNorms stay fp32) and fp32 otherwise;
    ``model`` is left untouched.
    """
    prepared = fuse(model) if fused else copy.deepcopy(model).eval().requires_grad_(False)
    prepared = prepared.to("cpu")
    if not fp16:
        return prepared.float()
    prepared.half()
    for module in prepared.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.float()  # norms of an unfolded model stay fp32 on fp16 inputs, as under autocast
    return prepared


def _reference_outputs(model: nn.Module, inputs: list[torch.Tensor]) -> tuple[list[list[torch.Tensor]], bool]:
    """``model``'s eval-mode outputs (fp32, on CPU) for each input, and whether it returns a list.

    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    model.eval()
    try:
        with torch.no_grad():
            raw = [model(x.to(device=device, dtype=dtype)) for x in inputs]
    finally:
        model.train(was_training)
    listed = isinstance(raw[0], (list, tuple))
    return [[o.float().cpu() for o in _as_list(out)] for out in raw], listed


def _compare(got: list[list[torch.Tensor]], want: list[list[torch.Tensor]]) -> tuple[float, float]:
    """Largest absolute difference, and the largest difference relative to each output's largest magnitude."""
    max_abs = max_rel = 0.0
    for outs, refs in zip(got, want, strict=True):
        for out, ref in zip(outs, refs, strict=True):
            if tuple(out.shape) != tuple(ref.shape):
                raise ExportMismatchError(f"exported output has shape {tuple(out.shape)}, "
                                          f"PyTorch's {tuple(ref.shape)}")
            diff = (out.double() - ref.double()).abs().max().item()
            scale = ref.double().abs().max().item()
            max_abs = max(max_abs, diff)
            max_rel = max(max_rel, diff / scale if scale > 0 else diff)
    return max_abs, max_rel


def _write_onnx(prepared: nn.Module, example: torch.Tensor, path: str, *, opset: int, dynamic_batch: bool,
                output_names: list[str]) -> None:
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: "batch"} for name in ["input", *output_names]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice and tracer warnings
        with torch.no_grad():
            torch.onnx.export(prepared, (example,), path, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=output_names, dynamic_axes=dynamic_axes,
                              do_constant_folding=True)


def _run_onnx(path: str, inputs: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    onnx, ort = require_onnx()
    onnx.checker.check_model(path)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [[torch.from_numpy(o).float() for o in session.run(None, {name: x.numpy()})] for x in inputs]


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
        return [[o.float() for o in _as_list(loaded(x))] for x in inputs]


def _random_images(batch_sizes: tuple[int, ...], channels: int, size: tuple[int, int], seed: int) -> list[torch.Tensor]:
    """One batch of uniform [0, 1] images per batch size, the same for the same ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(b, channels, *size, generator=gen) for b in batch_sizes]


def _write_and_run(prepared: nn.Module, inputs: list[torch.Tensor], tmp: str, *, format: str, opset: int,
                   dynamic_batch: bool, output_names: list[str], listed: bool,
                   model_name: str) -> list[list[torch.Tensor]]:
    """Write ``prepared`` to ``tmp`` as ``format``, load it back and run it on ``inputs``.

    Raises :class:`ExportError` in one line when the exporter or the runtime refuses the model.
    """
    try:
        if format == "onnx":
            _write_onnx(prepared, inputs[0], tmp, opset=opset, dynamic_batch=dynamic_batch,
                        output_names=output_names)
            return _run_onnx(tmp, inputs)
        _write_torchscript(prepared, inputs[0], tmp, listed=listed)
        return _run_torchscript(tmp, inputs)
    except (TResNetError, OSError):
        raise
    except Exception as e:  # noqa: BLE001 - the exporter's or runtime's refusal, as one line
        summary = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ExportError(f"{format} export of {model_name} failed: {summary}") from e


def _check_match(got: list[list[torch.Tensor]], reference: list[list[torch.Tensor]], tolerance: float,
                 format: str, path: Path) -> tuple[float, float]:
    """``(max_abs, max_rel)`` of the exported outputs against PyTorch's; :class:`ExportMismatchError` beyond ``tolerance``."""
    max_abs, max_rel = _compare(got, reference)
    if not max_rel <= tolerance:
        raise ExportMismatchError(
            f"the exported {format} model differs from PyTorch by {max_abs:.3g} ({max_rel:.3g} of the "
            f"largest output, tolerance {tolerance:g}); nothing was written to {path}"
        )
    return max_abs, max_rel


def _write_atomically(path: Path, write_and_check: Callable[[str], None]) -> None:
    """:func:`tresnet.files.atomic_write`, with a failure to write as one :class:`ExportError` that says what to do."""
    try:
        atomic_write(path, write_and_check)
    except FileWriteError as e:  # the folder cannot be created or written to
        raise ExportError(str(e)) from e
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e.strerror or e}; choose an output path in a writable "
                          f"folder with free space") from e


def export_model(model: nn.Module, output: str | os.PathLike, *, format: str,
                 img_size: int | tuple[int, int] | None = None, dynamic_batch: bool = False,
                 fp16: bool = False, fused: bool = True, opset: int = DEFAULT_OPSET,
                 tolerance: float | None = None, seed: int = 0) -> ExportReport:
    """Export ``model`` to ``output`` as ONNX or TorchScript, checked against PyTorch; return the report.

    The export is traced on CPU at batch 1 and ``img_size`` (default: the model's configured input
    size); with ``dynamic_batch`` the batch axis is free and the check also runs at batch 3. The
    check feeds random images in [0, 1] to the loaded file and to ``model`` in eval mode (fp32) and
    requires the largest difference to be within ``tolerance`` (default 1e-4, 1e-2 with ``fp16``)
    of the largest output magnitude. The file is written under a temporary name and renamed to
    ``output`` only when the check passes, so ``output`` never holds a wrong or partial file.

    Raises :class:`~tresnet.errors.ConfigError` (unknown format, bad size argument),
    :class:`~tresnet.errors.InputSizeError` (a size the model cannot take),
    :class:`~tresnet.errors.MissingDependencyError` (ONNX without its packages),
    :class:`ExportError` (an output that cannot be written, or a file the exporter or the runtime
    refuses) and :class:`ExportMismatchError`.
    """
    path = check_export_args(format, output, opset)
    size = _img_size(model, img_size)
    if tolerance is None:
        tolerance = FP16_TOLERANCE if fp16 else FP32_TOLERANCE
    prepared = prepare_for_export(model, fused=fused, fp16=fp16)
    batch_sizes = (TRACE_BATCH, DYNAMIC_CHECK_BATCH) if dynamic_batch else (TRACE_BATCH,)
    images = _random_images(batch_sizes, getattr(model, "in_chans", 3), size, seed)
    reference, listed = _reference_outputs(model, images)
    inputs = [x.to(torch.float16 if fp16 else torch.float32) for x in images]
    output_names = _output_names(len(reference[0]), listed)
    diffs: list[tuple[float, float]] = []

    def write_and_check(tmp: str) -> None:
        got = _write_and_run(prepared, inputs, tmp, format=format, opset=opset, dynamic_batch=dynamic_batch,
                             output_names=output_names, listed=listed, model_name=type(model).__name__)
        diffs.append(_check_match(got, reference, tolerance, format, path))

    _write_atomically(path, write_and_check)
    max_abs, max_rel = diffs[0]
    return ExportReport(path=path, format=format, img_size=size, fused=fused, fp16=fp16,
                        dynamic_batch=dynamic_batch, opset=opset if format == "onnx" else None,
                        batch_sizes=batch_sizes, max_abs_diff=max_abs, max_rel_diff=max_rel,
                        tolerance=tolerance)


def onnx_session(path: str | os.PathLike, *, threads: int | None = None):
    """An ONNX Runtime CPU session for ``path`` (all graph optimisations; ``threads`` intra-op threads)."""
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


__all__ = ["DEFAULT_OPSET", "FORMATS", "MIN_OPSET", "ExportError", "ExportMismatchError", "ExportReport",
           "check_export_args", "export_model", "max_opset", "onnx_session", "prepare_for_export", "require_onnx"]
