"""Plumbing shared by the subcommands: the model, device, precision and number format options, warnings, JSON
output."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn
from tqdm import tqdm

from tresnet.data.datasets import UnreadableImageWarning
from tresnet.data.transforms import CROP_MODES, INTERPOLATIONS, Preprocessing
from tresnet.deploy.inference import INFERENCE_NUMBER_FORMAT_HELP, INT8_BACKENDS, resolve_int8_backend
from tresnet.deploy.int8 import DEFAULT_CALIBRATION_IMAGES
from tresnet.errors import ConfigError
from tresnet.factory import load_network
from tresnet.files import write_text
from tresnet.inference.runner import RunOptions
from tresnet.runtime import DEVICE_HELP, PRECISION_HELP, EmulatedBf16Warning
from tresnet.tasks import DEFAULT_THRESHOLD, list_tasks

DEFAULT_WORKERS = min(8, os.cpu_count() or 1)


def say(command: str, kind: str, message: str) -> None:
    """Print ``tresnet <command>: <kind>: <message>`` on stderr (kind: error, warning, note)."""
    print(f"tresnet {command}: {kind}: {message}", file=sys.stderr, flush=True)


def add_model_arguments(parser: argparse.ArgumentParser, *, pretrained: bool = True) -> None:
    """--model (optional with a checkpoint that names its model), --checkpoint, --pretrained, --img-size."""
    parser.add_argument("--model", help="model name, e.g. tresnet_m or genet_light (see `tresnet info`); optional "
                                        "with a checkpoint saved by `tresnet train`, which names its model")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", metavar="PATH",
                         help="weights file: the official release's (.pth), timm's, or one saved by tresnet")
    if pretrained:
        weights.add_argument("--pretrained", action="store_true",
                             help="load the model's published weights from this machine, never downloaded: our "
                                  "cache ($TRESNET_HOME), the Hugging Face cache where timm leaves them, or the "
                                  "torch.hub folder (`tresnet info --weights` lists what is there)")
        parser.add_argument("--pretrained-tag", metavar="TAG",
                            help="with --pretrained: which published weights, as timm tags them, e.g. "
                                 "miil_in21k_ft_in1k or in21k_ft_in1k (default: the model's first; also "
                                 "--model NAME.TAG)")
    parser.add_argument("--img-size", type=int, metavar="N",
                        help="square input side (default: the model's: 224 or 448 for TResNet, 192 or 256 for GENet)")


def add_preprocessing_arguments(parser: argparse.ArgumentParser) -> None:
    """--crop-pct, --crop-mode and --interpolation: overrides of the model's preprocessing (with --img-size)."""
    parser.add_argument("--crop-pct", type=float, metavar="F",
                        help="centre-crop this fraction instead of the model's preprocessing (resize the short side "
                             "to size / F); e.g. 0.875 to compare with timm's 448-pixel TResNet figures")
    parser.add_argument("--crop-mode", choices=CROP_MODES,
                        help="center: resize the short side, then crop the centre; squash: resize the whole image "
                             "to the square (default: the model's, or what its checkpoint recorded)")
    parser.add_argument("--interpolation", choices=tuple(INTERPOLATIONS),
                        help="resize interpolation (default: the model's)")


def resolve_preprocessing(args: argparse.Namespace, model: nn.Module) -> Preprocessing:
    """The model's preprocessing (what its checkpoint recorded, else the registered model's) with the
    options given on the command line."""
    return Preprocessing.of(model, img_size=args.img_size, crop_pct=getattr(args, "crop_pct", None),
                            crop_mode=getattr(args, "crop_mode", None),
                            interpolation=getattr(args, "interpolation", None))


def add_device_argument(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    parser.add_argument("--device", default=default, help=DEVICE_HELP)


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """--precision: autocast, one vocabulary for every subcommand (:data:`tresnet.runtime.PRECISIONS`)."""
    parser.add_argument("--precision", default="fp32", metavar="P", help=PRECISION_HELP)


def add_number_format_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """--number-format: the number format of the deployed model or the exported file (not an autocast)."""
    parser.add_argument("--number-format", default="fp32", metavar="F", help=help_text)


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, device, precision and number format options of the commands that run a model on images (with
    int8's calibration images)."""
    add_model_arguments(parser)
    add_preprocessing_arguments(parser)
    add_device_argument(parser)
    add_precision_argument(parser)
    add_number_format_argument(parser, INFERENCE_NUMBER_FORMAT_HELP)
    add_calibration_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    """--calibration, --calibration-images and --int8-backend, for int8."""
    parser.add_argument("--calibration", metavar="DIR",
                        help="int8: a folder of images like the ones the model will see (searched recursively; a "
                             "few hundred training images, not the validation set) to calibrate the quantization on")
    parser.add_argument("--calibration-images", type=int, metavar="N",
                        help=f"int8: how many images of --calibration to use, evenly spaced over its sorted files "
                             f"(default {DEFAULT_CALIBRATION_IMAGES})")
    parser.add_argument("--int8-backend", metavar="BACKEND",
                        help=f"int8: {', '.join(INT8_BACKENDS)} (default auto: the faster on this CPU, pt2e where it "
                             f"has AMX, onnx elsewhere; see docs/deploy.md). pt2e: PyTorch's quantization compiled by "
                             f"torch.compile (pip install 'tresnet[int8]'); onnx: ONNX Runtime's (pip install "
                             f"'tresnet[export]')")


def run_options(args: argparse.Namespace, device) -> RunOptions:
    """How the model runs, from the options (checked: a precision or number format that cannot run on
    ``device``, a number format given as ``--precision``, or calibration options that do not fit, fail before
    any work)."""
    return RunOptions(precision=args.precision, number_format=args.number_format,
                      channels_last=getattr(args, "channels_last", False), calibration=args.calibration,
                      calibration_images=args.calibration_images,
                      int8_backend=getattr(args, "int8_backend", None)).check(device)


def announce_deployment(args: argparse.Namespace, number_format: str, command: str) -> None:
    """For int8, say on stderr which backend runs and that it calibrates and compiles (or exports) first, so a
    pause is expected."""
    if number_format != "int8":
        return
    count = args.calibration_images or DEFAULT_CALIBRATION_IMAGES
    given = getattr(args, "int8_backend", None)
    backend = resolve_int8_backend(given)
    how = ("compiling the quantized model (a minute or more)" if backend == "pt2e" else
           "exporting the model to ONNX and quantizing it (half a minute or more)")
    chosen = "--int8-backend" if given not in (None, "auto") else "the faster on this CPU, --int8-backend auto"
    say(command, "note", f"int8 by {backend} ({chosen}): calibrating on up to {count} images of "
                         f"{args.calibration} and {how}")


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    """--task (default: the checkpoint's) and --threshold, for the commands that read a model's answers."""
    parser.add_argument("--task", choices=list_tasks(), default=None,
                        help="multiclass (one class per image: softmax, top-k), multilabel (any set of classes: "
                             "a sigmoid per class) or detection (boxes); default: the checkpoint's task, else "
                             "multiclass")
    parser.add_argument("--threshold", type=float, default=None, metavar="T",
                        help=f"multilabel: a label is predicted when its probability exceeds T; detection: a box is "
                             f"shown when its score exceeds T (default: the "
                             f"checkpoint's, else {DEFAULT_THRESHOLD})")


def load_model(args: argparse.Namespace, command: str) -> nn.Module:
    """The model of ``--model`` / ``--checkpoint`` / ``--pretrained``, its classes (and task) from the checkpoint.

    Without weights a warning says that the model is randomly initialised.
    """
    if args.model is None and args.checkpoint is None:
        raise ConfigError("no model: pass --model NAME (see `tresnet info`), or a --checkpoint saved by "
                          "`tresnet train`")
    model = load_network(_tagged(args), checkpoint_path=args.checkpoint, pretrained=getattr(args, "pretrained", False))
    if model.checkpoint_info is None and command in ("validate", "predict"):
        say(command, "warning", f"no --checkpoint or --pretrained: {model.pretrained_cfg['model']} has random "
                                f"weights, its answers mean nothing")
    return model


def _tagged(args: argparse.Namespace) -> str | None:
    """``--model``, with ``--pretrained-tag`` appended (``NAME.TAG``); :class:`ConfigError` for a tag without
    ``--pretrained`` or a model."""
    tag = getattr(args, "pretrained_tag", None)
    if tag is None:
        return args.model
    if not args.pretrained or args.model is None:
        raise ConfigError("--pretrained-tag names published weights: use it with --model NAME --pretrained")
    return f"{args.model}.{tag}"


def weights_description(model: nn.Module) -> str:
    """``weights PATH (FORMAT format)``, or ``random weights``."""
    info = getattr(model, "checkpoint_info", None)
    if info is None:
        return "random weights"
    tag = (getattr(model, "pretrained_cfg", None) or {}).get("tag")
    return f"{model.pretrained_cfg['model']}.{tag} {info.describe()}" if tag else info.describe()


@contextmanager
def warnings_above_progress_bar(command: str) -> Iterator[None]:
    """Print unreadable-file and emulated-bfloat16 warnings as one line each, without breaking a progress bar."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, (UnreadableImageWarning, EmulatedBf16Warning)):
            tqdm.write(f"tresnet {command}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", UnreadableImageWarning)  # the dataset already warns once per file
        warnings.showwarning = show
        yield


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return write_text(path, json.dumps(obj, indent=2) + "\n")
