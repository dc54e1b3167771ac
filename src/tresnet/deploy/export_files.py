"""What every export shares: its formats and number formats, the checks of its arguments, its errors and report,
writing the file atomically, running an ONNX file, and the metadata a file carries.

The formats (:data:`FORMATS`): ``onnx`` (run by ONNX Runtime), ``pt2`` (a ``torch.export`` ExportedProgram,
:mod:`tresnet.deploy.pt2`), ``aoti`` (that program compiled ahead of time by AOTInductor) and ``torchscript``
(``torch.jit.trace``; PyTorch 2.14 deprecates ``torch.jit``, and ``pt2`` replaces it for running a model without our
Python code)."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from tresnet.deploy.exactness import Agreement, agreement
from tresnet.deploy.onnx_runtime import require_onnx
from tresnet.errors import ConfigError, FileWriteError, TResNetError
from tresnet.files import atomic_write

FORMATS = ("onnx", "pt2", "aoti", "torchscript")
# The number format of the file (``--number-format``): its weights and activations, not an autocast.
EXPORT_NUMBER_FORMATS = ("fp32", "fp16", "bf16", "int8")
DEFAULT_OPSET = 17
MIN_OPSET = 9  # ONNX Runtime lacks kernels for some of our ops below this


def max_opset() -> int:
    """The newest opset PyTorch's exporter writes."""
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET
    except ImportError:  # a private module: fall back to a version every supported torch writes
        return 20
    return int(ONNX_MAX_OPSET)

TRACE_BATCH = 1  # the batch size an export is traced at
# the key (ONNX metadata_props, an AOTInductor package's metadata) or extra file (TorchScript and pt2, .json)
PREPROCESSING_METADATA = "tresnet_preprocessing"
SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "aoti": ".pt2", "torchscript": ".pt"}


class ExportError(TResNetError):
    """An export that cannot be written where asked."""


class ExportMismatchError(ExportError):
    """An exported model whose outputs are further from the float64 result than its number format allows."""


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_model` wrote and how close it is to the exact (float64) result.

    ``max_abs_diff`` / ``max_rel_diff``: the file's largest difference from the float64 outputs, absolute
    and as a fraction of the largest float64 output; ``fp32_error``: the latter for the fp32 PyTorch
    model on the same images; ``limit``: the largest ``max_rel_diff`` accepted.
    """

    path: Path
    format: str
    img_size: tuple[int, int]
    fused: bool
    number_format: str
    dynamic_batch: bool
    opset: int | None
    batch_sizes: tuple[int, ...]
    max_abs_diff: float
    max_rel_diff: float
    fp32_error: float
    limit: float
    calibration_images: int | None = None
    preprocessing: dict | None = None  # what the file's inputs must be (Preprocessing.to_dict), also in the file
    takes: str | None = None  # what a detector's file is called with, in place of the batch size
    boxes_checked: int | None = None  # a detector's: the boxes its post-processing was compared on

    def summary(self) -> str:
        """One line for the command line."""
        details = [self.format + (f" (opset {self.opset})" if self.opset else ""),
                   "fused" if self.fused else "not fused", self.number_format,
                   f"{self.img_size[0]}x{self.img_size[1]}",
                   self.takes or ("dynamic batch" if self.dynamic_batch else f"batch {TRACE_BATCH}")]
        if self.calibration_images:
            details.append(f"calibrated on {self.calibration_images} images")
        batches = ", ".join(str(b) for b in self.batch_sizes)
        what = "network's outputs" if self.boxes_checked is not None else "outputs"
        checked = (f"; its post-processing gives torchvision's detections ({self.boxes_checked} boxes untied in "
                   f"score compared whole)" if self.boxes_checked is not None else "")
        return (f"wrote {self.path} ({', '.join(details)}); at batch {batches} its {what} are "
                f"{self.max_rel_diff:.2g} of the largest output from the float64 result (PyTorch fp32: "
                f"{self.fp32_error:.2g}; limit {self.limit:.2g}){checked}")


def check_export_args(format: str, output: str | os.PathLike, opset: int = DEFAULT_OPSET,
                      number_format: str = "fp32") -> Path:
    """Validate the format, the number format, the opset and the output path before any work; return the path.

    Raises :class:`~tresnet.errors.ConfigError` for an unknown format or number format, a number format the
    format cannot hold (bfloat16 ONNX, int8 other than ONNX) and an opset outside what we can write and run,
    :class:`ExportError` for an output that is a folder, and
    :class:`~tresnet.errors.MissingDependencyError` when ONNX is asked for without its packages.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if number_format not in EXPORT_NUMBER_FORMATS:
        raise ConfigError(f"bad --number-format {number_format!r} for export: choose one of "
                          f"{', '.join(EXPORT_NUMBER_FORMATS)} (the number format of the exported file)")
    if format == "onnx" and number_format == "bf16":
        raise ConfigError("ONNX Runtime has no bfloat16 convolution on the CPU, so a bf16 ONNX file could not be "
                          "checked or run there: export bf16 as --format pt2 (or torchscript), or fp32 / int8 as ONNX")
    if format != "onnx" and number_format == "int8":
        raise ConfigError(f"int8 export writes ONNX (ONNX Runtime's static quantization): use --format onnx, or export "
                          f"{format} in fp32, fp16 or bf16; from Python, tresnet.deploy.quantize gives the (faster) "
                          f"PyTorch int8 model")
    if format == "onnx" and not MIN_OPSET <= opset <= max_opset():
        raise ConfigError(f"ONNX opset {opset} is not supported; choose one from {MIN_OPSET} to {max_opset()} "
                          f"(default {DEFAULT_OPSET})")
    if number_format == "int8" and opset < 13:
        raise ConfigError(f"int8 ONNX needs opset 13 or newer (per-channel QuantizeLinear), got {opset}")
    path = Path(output).expanduser()
    if path.is_dir():
        raise ExportError(f"output {path} is a folder; give a file path such as {path / ('model' + SUFFIXES[format])}")
    if format == "onnx":
        require_onnx()
    return path


def write_onnx(module: torch.nn.Module, args: tuple, path: str, *, opset: int, input_names: list[str],
               output_names: list[str], dynamic_axes: dict | None = None) -> None:
    """``module`` traced on ``args`` and written to ``path`` by PyTorch's TorchScript-based exporter (``dynamo=False``:
    it needs only ``onnx``), constants folded, the exporter's warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice and tracer warnings
        with torch.no_grad():
            torch.onnx.export(module, args, path, dynamo=False, opset_version=opset, input_names=input_names,
                              output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=True)


@contextmanager
def refusal_as_error(format: str, what: str) -> Iterator[None]:
    """Turn the exporter's, quantizer's or runtime's refusal (any exception but ours and the file system's) into one
    :class:`ExportError` line: ``<format> export of <what> failed: <its last line>``."""
    try:
        yield
    except (TResNetError, OSError):
        raise
    except Exception as e:  # noqa: BLE001 - the exporter's or runtime's refusal, as one line
        summary = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ExportError(f"{format} export of {what} failed: {summary}") from e


def run_onnx(path: str, inputs: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """The ONNX file at ``path`` (checked by ``onnx.checker``) run by ONNX Runtime on each input: fp32 outputs."""
    onnx, ort = require_onnx()
    onnx.checker.check_model(path)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [[torch.from_numpy(o).float() for o in session.run(None, {name: x.numpy()})] for x in inputs]



def record_metadata(path: str, format: str, entries: dict[str, dict | None]) -> None:
    """Write each entry (skipping None) into the exported file as JSON: ONNX ``metadata_props`` under its key, or a
    TorchScript extra file ``<key>.json`` (PT2 files are written with theirs: :func:`tresnet.deploy.pt2.write_program`)."""
    texts = {key: json.dumps(value) for key, value in entries.items() if value is not None}
    if not texts:
        return
    if format == "onnx":
        onnx, _ = require_onnx()
        proto = onnx.load(path)
        for key, text in texts.items():
            entry = next((p for p in proto.metadata_props if p.key == key), None)
            entry = entry or proto.metadata_props.add(key=key)
            entry.value = text
        onnx.save(proto, path)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.load(path, map_location="cpu"), path,
                       _extra_files={f"{key}.json": text for key, text in texts.items()})


def judge(got, exact, fp32, number_format: str, tolerance: float | None, format: str, path: Path) -> Agreement:
    """The file's :class:`Agreement` with the float64 result (``tolerance``, when given, as its limit);
    :class:`ExportMismatchError` when its outputs do not fit or it is beyond its limit."""
    try:
        found = agreement(got, exact, fp32, number_format)
    except ValueError as e:
        raise ExportMismatchError(f"the exported {format} model gives an {e}; nothing was written to {path}") from e
    if tolerance is not None:
        found = Agreement(**{**found.__dict__, "limit": tolerance})
    check_agreement(found, format, path)
    return found


def check_agreement(found: Agreement, format: str, path: Path) -> None:
    """:class:`ExportMismatchError` when ``found`` is beyond its limit."""
    if not found.ok:
        raise ExportMismatchError(
            f"the exported {format} model ({found.number_format}) is {found.describe()}: too far to be rounding; "
            f"nothing was written to {path}"
        )


def write_atomically(path: Path, write_and_check: Callable[[str], None]) -> None:
    """:func:`tresnet.files.atomic_write`, with a failure to write as one :class:`ExportError` that says what to do."""
    try:
        atomic_write(path, write_and_check)
    except FileWriteError as e:  # the folder cannot be created or written to
        raise ExportError(str(e)) from e
    except OSError as e:
        raise ExportError(f"cannot write {path}: {e.strerror or e}; choose an output path in a writable "
                          f"folder with free space") from e




__all__ = ["DEFAULT_OPSET", "EXPORT_NUMBER_FORMATS", "FORMATS", "MIN_OPSET", "PREPROCESSING_METADATA", "SUFFIXES",
           "TRACE_BATCH",
           "ExportError", "ExportMismatchError", "ExportReport", "check_agreement", "check_export_args", "judge", "max_opset",
           "record_metadata",
           "refusal_as_error", "run_onnx", "write_atomically", "write_onnx"]
