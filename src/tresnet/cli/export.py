"""`tresnet export`: write a model as ONNX, PT2 (torch.export) or TorchScript in a number format (fp32, fp16, bf16,
int8), checked against the exact (float64) result before it appears."""

from __future__ import annotations

import argparse

from tresnet.cli import _common as common
from tresnet.deploy.detection_export import DETECTOR_METADATA
from tresnet.deploy.exactness import BOUNDS
from tresnet.deploy.export import export_model
from tresnet.deploy.export_files import (
    DEFAULT_OPSET,
    EXPORT_NUMBER_FORMATS,
    FORMATS,
    MIN_OPSET,
    PREPROCESSING_METADATA,
    check_export_args,
)
from tresnet.deploy.inference import check_calibration_options, check_int8_backend
from tresnet.deploy.int8 import Calibration
from tresnet.errors import ConfigError
from tresnet.inference.evaluate import resolve_task
from tresnet.tasks import list_tasks

NUMBER_FORMAT_HELP = (f"the number format of the file's weights and activations: {', '.join(EXPORT_NUMBER_FORMATS)} "
                      f"(default fp32); bf16 writes pt2 or TorchScript, int8 ONNX")
FORMAT_HELP = ("onnx (run by ONNX Runtime); pt2 (a torch.export ExportedProgram: torch.export.load(path).module(), "
               "what replaces TorchScript); aoti (that program compiled ahead of time by AOTInductor, a .pt2 "
               "package: torch._inductor.aoti_load_package(path); needs a C++ compiler, takes minutes); "
               "torchscript (deprecated by PyTorch 2.14: torch.jit warns; use pt2)")
# Where a file records a metadata entry, by format.
RECORDED_IN = {"onnx": "its metadata_props '{}'", "pt2": "its extra file '{}.json'",
               "aoti": "its AOTInductor metadata '{}' (get_metadata() of the loaded package)",
               "torchscript": "its extra file '{}.json'"}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a model to ONNX, PT2 or TorchScript, checked against the exact result",
        description="Fold BatchNorm into the convs, export, load the file back (ONNX Runtime for ONNX, torch.export.load for pt2) and run "
                    "it on check images beside the PyTorch model in fp32 and in float64. The output appears only "
                    "if the file's largest difference from the float64 result is within the bound of its "
                    f"number format: {BOUNDS['fp32'].multiple:g} times PyTorch fp32's own error, and at least "
                    f"{BOUNDS['fp32'].floor:g} of the largest output (fp16 {BOUNDS['fp16'].floor:g}, bf16 "
                    f"{BOUNDS['bf16'].floor:g}, int8 {BOUNDS['int8'].floor:g}). --number-format bf16 writes "
                    "pt2 or TorchScript (ONNX Runtime has no bfloat16 convolution); --number-format int8 writes ONNX "
                    "quantized by ONNX Runtime (the onnx int8 backend; pt2e has no file form), calibrated on "
                    "--calibration images. A detector (a checkpoint of train --task detection) exports whole and in fp32: "
                    "resize, network and post-processing; its network is checked against float64 and its "
                    "post-processing against torchvision's (docs/detection.md), as ONNX or TorchScript.")
    common.add_model_arguments(p)
    p.add_argument("--task", choices=list_tasks(), default=None,
                   help="what the exported network does: multiclass, multilabel or detection (default: the "
                        "checkpoint's; a detection checkpoint exports the whole detector, see docs/detection.md)")
    p.add_argument("--format", required=True, metavar="FORMAT", help=f"one of {', '.join(FORMATS)}: {FORMAT_HELP}")
    p.add_argument("--output", required=True, help="file to write, e.g. tresnet_m.onnx, tresnet_m.pt2 or tresnet_m.pt")
    p.add_argument("--dynamic-batch", action="store_true",
                   help="leave the batch size free (checked at 1 and 3; pt2 is traced at 3 and takes any batch from 1)")
    common.add_number_format_argument(p, NUMBER_FORMAT_HELP)
    common.add_calibration_arguments(p)
    p.add_argument("--no-fuse", action="store_true", help="export the model as it is, BatchNorm not folded")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset (default {DEFAULT_OPSET}; from {MIN_OPSET} to the newest torch writes)")
    p.set_defaults(func=run)


def _number_format(args: argparse.Namespace) -> str:
    """``--number-format`` (fp32 by default), with the calibration options checked against it."""
    number_format = args.number_format
    if number_format not in EXPORT_NUMBER_FORMATS:
        raise ConfigError(f"bad --number-format {number_format!r} for export: choose one of "
                          f"{', '.join(EXPORT_NUMBER_FORMATS)} (the number format of the exported file)")
    check_calibration_options(number_format, args.calibration, args.calibration_images)
    _check_int8_backend(number_format, args.int8_backend)
    return number_format


def _check_int8_backend(number_format: str, backend: str | None) -> None:
    """An int8 file is ONNX quantized by ONNX Runtime: ``--int8-backend`` may be left out, auto or onnx."""
    if number_format == "int8" and backend == "pt2e":
        raise ConfigError("--int8-backend pt2e has no file form: export writes int8 as ONNX quantized by ONNX "
                          "Runtime (--int8-backend onnx, the default here); from Python, tresnet.deploy.quantize "
                          "gives the PT2E model")
    check_int8_backend(number_format, "onnx" if backend == "auto" else backend)


def check_task(model, task: str | None) -> None:
    """:class:`ConfigError` when ``--task`` is not the task of the network ``--model`` / ``--checkpoint`` give."""
    chosen = resolve_task(model, task)
    head = model.pretrained_cfg.get("head")
    if head is not None and head not in chosen.heads:
        raise ConfigError(f"{model.pretrained_cfg.get('model')} with a {head} head is not a {chosen.name} network: "
                          f"export a checkpoint saved by `tresnet train --task {chosen.name}`, or leave --task out")


def run(args: argparse.Namespace) -> int:
    number_format = _number_format(args)
    check_export_args(args.format, args.output, args.opset, number_format)  # fail before building the model
    model = common.load_model(args, "export")
    check_task(model, args.task)
    report = export_model(model, args.output, format=args.format, img_size=args.img_size,
                          dynamic_batch=args.dynamic_batch, number_format=number_format, fused=not args.no_fuse,
                          opset=args.opset,
                          calibration=Calibration(args.calibration, args.calibration_images)
                          if args.calibration is not None else None)
    print(report.summary())
    if report.takes is not None:
        where = RECORDED_IN[report.format].format(DETECTOR_METADATA)
        if report.format == "torchscript":
            where += " (import torchvision before torch.jit.load: its NMS is torchvision's)"
        print(f"the file takes {report.takes}; it records its detector in {where}")
    if report.preprocessing is not None:
        where = RECORDED_IN[report.format].format(PREPROCESSING_METADATA)
        print(f"preprocessing: {report.preprocessing['description']}; the file records it in {where}")
    return 0
