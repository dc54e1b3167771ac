"""Detector export: torchvision's FCOS and RetinaNet on our backbones as TorchScript or ONNX, each file the whole
detector (resize, normalisation, network, box decoding and NMS), checked in two parts before it appears.

torchvision makes both detectors scriptable and traceable for ONNX (its post-processing takes its top-k sizes
with ``_topk_min`` so that they stay dynamic). What each file is:

- **TorchScript**: ``torch.jit.script`` of the detector, whose backbone (our network and the feature pyramid) is
  first traced, since In-Place ABN's autograd function and our blocks are not scriptable. It takes a list of
  ``(3, H, W)`` images in [0, 1] of any sizes and returns ``(losses, detections)`` as scripted torchvision
  detectors do; its ``score_thresh`` and the other post-processing attributes can be set on the loaded module.
- **ONNX**: the detector traced on one image, with inputs ``image`` ``(3, H, W)`` of any size and
  ``score_threshold`` (a float32 scalar: the detector's is recorded in the file), and outputs ``boxes``
  (``x1, y1, x2, y2`` in the image's pixels), ``scores`` and ``labels``.

The check, on seeded random images at the detector's own size (so that its resize is the identity):

1. **the network** (backbone, pyramid and head, as :class:`DetectorNetwork`: a normalised batch in, the head's
   outputs per anchor out) is compared with the detector's run in float64, within the fp32 bound of
   :mod:`tresnet.deploy.exactness`, as a classifier's export is; for ONNX this is the same network exported alone
   by the same exporter;
2. **the rest of the file** (transform and post-processing): its detections, with the score threshold at 0 so that
   there are boxes to compare, must be those of torchvision's own code (:func:`detect_with`) run on the file's
   network outputs: the same boxes, labels and scores, to rounding.

Not supported, and why: PT2 and AOTInductor files (our ``torch.export`` path is written for classifiers only so
far); fp16, bf16 and int8 files (their bounds are measured on classifiers' logits, and a box decoded in fp16 loses
whole pixels on large images); ``--dynamic-batch`` (a TorchScript detector takes a list of any length already, an
ONNX one an image per call); an export size (the detector resizes every image itself).
torchvision computes the resize scale in float32 in a scripted or traced detector and in float64 in eager PyTorch,
so an image whose resized side falls within rounding of a whole pixel can come out a pixel shorter in the file;
an image already at the detector's size is not resized at all, except at the ``min_size`` values where even
``min_size / min_size`` rounds below 1 there (:func:`resize_rounds`), which the export refuses.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import torch
from torch import nn
from torch.onnx.operators import shape_as_tensor
from torchvision.models.detection import FCOS, RetinaNet

from tresnet.deploy.exactness import Agreement, exact_outputs, fp32_outputs, run_outputs
from tresnet.deploy.export_files import (
    DEFAULT_OPSET,
    ExportMismatchError,
    ExportReport,
    check_export_args,
    judge,
    record_metadata,
    refusal_as_error,
    write_atomically,
    write_onnx,
)
from tresnet.deploy.fusion import fuse
from tresnet.deploy.onnx_runtime import require_onnx
from tresnet.deploy.pt2 import PROGRAM_FORMATS
from tresnet.errors import ConfigError
from tresnet.models.detection import Detector

DETECTOR_TYPES = (FCOS, RetinaNet)
DETECTOR_METADATA = "tresnet_detector"  # the key (ONNX metadata_props) or extra file (TorchScript, .json)
MIN_DETECTOR_OPSET = 11  # NMS and a top-k of dynamic size
CHECK_SEED = 0
WIDER_BY = 64  # the second check image is this much wider than the detector's size (within its longest side)
# The file's post-processing against torchvision's on the same network outputs: scores within SCORE_TOLERANCE, boxes
# within BOX_TOLERANCE of the largest coordinate (both paths round differently only in their last bits).
SCORE_TOLERANCE = 1e-5
BOX_TOLERANCE = 1e-4
Detections = list[dict[str, torch.Tensor]]
# How each file is called: in a few words (the export's report) and in full (the file's metadata).
CALLED = {
    "onnx": ("one image of any size", "one (3, H, W) image in [0, 1] and a score_threshold; gives boxes (x1, y1, x2, "
                                      "y2), scores, labels"),
    "torchscript": ("a list of images of any sizes", "a list of (3, H, W) images in [0, 1]; gives (losses, "
                                                     "detections); import torchvision before torch.jit.load"),
}


def is_detector(model: nn.Module) -> bool:
    """Whether ``model`` is one of torchvision's detectors that :func:`export_detector` writes."""
    return isinstance(model, DETECTOR_TYPES)


def head_output_names(detector: Detector) -> tuple[str, ...]:
    """The names of the head's outputs, in the order it gives them: FCOS adds its centre-ness."""
    return ("cls_logits", "bbox_regression") + (("bbox_ctrness",) if isinstance(detector, FCOS) else ())


class DetectorNetwork(nn.Module):
    """A detector's network alone: a normalised, padded batch in; out, each head output (``(N, anchors, K)``, all
    levels in a row) and the levels' map sizes (``(levels, 2)``: what the anchors are laid out on)."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.backbone = detector.backbone
        self.head = detector.head

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = list(self.backbone(images).values())
        outputs = self.head(features)
        sizes = torch.stack([shape_as_tensor(feature)[-2:] for feature in features])
        return (*outputs.values(), sizes)


def detect_with(detector: Detector, run_network: Callable, images: Sequence[torch.Tensor]) -> Detections:
    """``detector``'s detections on ``images`` (``(3, H, W)`` each) with its network's outputs from ``run_network``
    (a batch in, :class:`DetectorNetwork`'s outputs out): torchvision's transform, anchors and post-processing,
    as the detector's own forward runs them in eval mode."""
    original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
    batch, _ = detector.transform(list(images))
    *outputs, level_sizes = run_network(batch.tensors)
    heads = dict(zip(head_output_names(detector), outputs, strict=True))
    # the anchors need only each level's map size
    sizes = [(int(h), int(w)) for h, w in level_sizes.tolist()]
    features = [batch.tensors.new_empty((1, 0, h, w)) for h, w in sizes]
    anchors = detector.anchor_generator(batch, features)
    locations = [h * w for h, w in sizes]
    per_location = heads["cls_logits"].shape[1] // sum(locations)  # RetinaNet: 9 anchors; FCOS: 1
    counts = [n * per_location for n in locations]
    split_heads = {name: list(output.split(counts, dim=1)) for name, output in heads.items()}
    split_anchors = [list(a.split(counts)) for a in anchors]
    detections = detector.postprocess_detections(split_heads, split_anchors, batch.image_sizes)
    return detector.transform.postprocess(detections, batch.image_sizes, original_sizes)


class _OnnxDetector(nn.Module):
    """What the ONNX file holds: the detector on one image, its score threshold an input."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor, score_threshold: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.detector.score_thresh = score_threshold  # traced: the post-processing compares with the input
        found = self.detector([image])[0]
        return found["boxes"], found["scores"], found["labels"]


def _with_threshold(detector: Detector, score_threshold: float) -> Detector:
    """A shallow copy of ``detector`` keeping boxes above ``score_threshold`` (its modules shared)."""
    copied = copy.copy(detector)
    copied.score_thresh = score_threshold
    return copied


def _check_size(detector: Detector) -> None:
    """:class:`ConfigError` for a ``min_size`` that torchvision's exported resize shrinks (:func:`resize_rounds`)."""
    side = detector.transform.min_size[-1]
    if resize_rounds(side):
        raise ConfigError(f"min_size {side}: torchvision's scripted and traced resize computes {side} / {side} as "
                          f"{side} * float32(1 / {side}), just below 1, so the file would shrink every image of that "
                          f"size by a pixel where PyTorch keeps it; a min_size that is a multiple of 32 exports exactly")


def _check_options(number_format: str, dynamic_batch: bool, img_size, opset: int, format: str) -> None:
    if format in PROGRAM_FORMATS:
        raise ConfigError(f"a detector exports as --format onnx or torchscript: {format} (torch.export) is written "
                          f"for classification and multi-label networks only")
    if number_format != "fp32":
        raise ConfigError(f"a detector exports in fp32 only, not {number_format}: the reduced number formats are "
                          f"checked against bounds measured on classifiers, and a box decoded in fp16 loses whole "
                          f"pixels on large images")
    if dynamic_batch:
        raise ConfigError("a detector's file takes images of any size and number already (TorchScript: a list; "
                          "ONNX: one image per call): leave --dynamic-batch out")
    if img_size is not None:
        raise ConfigError("a detector resizes each image itself (its min_size and max_size): leave --img-size out; "
                          "the file takes images of any size")
    if format == "onnx" and opset < MIN_DETECTOR_OPSET:
        raise ConfigError(f"a detector's ONNX needs opset {MIN_DETECTOR_OPSET} or newer (NMS, a top-k of dynamic "
                          f"size), got {opset}")


def resize_rounds(side: int) -> bool:
    """Whether torchvision's scripted or traced resize shrinks an image whose side is ``side`` already: it computes
    the scale ``side / side`` as ``side * float32(1 / side)``, which falls below 1 for some sides (107, 214, ...;
    never a multiple of 32), and the image loses a pixel. Eager PyTorch divides in float64 and keeps it."""
    return float(torch.tensor(float(side)).reciprocal() * float(side)) < 1.0


def check_images(detector: Detector) -> list[torch.Tensor]:
    """Two seeded random images in [0, 1] that the detector does not resize: its shorter side square, and one wider
    by up to :data:`WIDER_BY` in steps of 32, short of its longest side (a scale computed from the longest side can
    round as :func:`resize_rounds` says)."""
    side, longest = detector.transform.min_size[-1], detector.transform.max_size
    wider = max(side, side + (min(WIDER_BY, longest - 1 - side) // 32) * 32)
    gen = torch.Generator().manual_seed(CHECK_SEED)
    return [torch.rand(3, side, side, generator=gen), torch.rand(3, side, wider, generator=gen)]


def _network_batches(detector: Detector, images: list[torch.Tensor]) -> list[torch.Tensor]:
    """The network's inputs the check compares: the first image alone, then both in one padded batch."""
    with torch.no_grad():
        return [detector.transform(images[:1])[0].tensors, detector.transform(images)[0].tensors]


def _script(prepared: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """``prepared`` scripted, its backbone traced first (our networks are traceable, not scriptable)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic
        with torch.no_grad():
            prepared.backbone = torch.jit.trace(prepared.backbone, example, strict=False, check_trace=False)
        return torch.jit.script(prepared)


def _write_torchscript(prepared: nn.Module, example: torch.Tensor, tmp: str) -> tuple[Callable, Callable]:
    """Write the file; return its network and its detections (score threshold 0) as functions of the loaded file."""
    scripted = _script(prepared, example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is what was asked for
        torch.jit.save(scripted, tmp)
        loaded = torch.jit.load(tmp, map_location="cpu").eval()
    loaded.score_thresh = 0.0  # the loaded copy only: the file keeps the detector's

    def detect(images: list[torch.Tensor]) -> Detections:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", UserWarning)  # scripted detectors always return (losses, detections)
            return loaded(images)[1]

    return DetectorNetwork(loaded), detect


def _write_onnx(prepared: nn.Module, example: torch.Tensor, tmp: str, *, opset: int,
                folder: str) -> tuple[Callable, Callable]:
    """Write the file (the whole detector) and, in ``folder``, its network alone; return the network's outputs and
    the file's detections (score threshold 0) as functions of ONNX Runtime sessions."""
    network_path = str(Path(folder) / "network.onnx")
    outputs = [*head_output_names(prepared), "level_sizes"]
    write_onnx(DetectorNetwork(prepared), (example,), network_path, opset=opset, input_names=["images"],
               output_names=outputs, dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                                   **{name: {0: "batch", 1: "anchors"} for name in outputs[:-1]}})
    write_onnx(_OnnxDetector(prepared), (example[0], torch.tensor(0.0)), tmp, opset=opset,
               input_names=["image", "score_threshold"], output_names=["boxes", "scores", "labels"],
               dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "boxes"}, "scores": {0: "boxes"},
                             "labels": {0: "boxes"}})
    onnx, ort = require_onnx()
    for file in (network_path, tmp):
        onnx.checker.check_model(file)
    network_session = ort.InferenceSession(network_path, providers=["CPUExecutionProvider"])
    session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])

    def network(batch: torch.Tensor) -> list[torch.Tensor]:
        *heads, sizes = network_session.run(None, {"images": batch.numpy()})
        return [*(torch.from_numpy(h) for h in heads), torch.from_numpy(sizes).long()]

    def detect(images: list[torch.Tensor]) -> Detections:
        zero = torch.tensor(0.0).numpy()
        found = [session.run(None, {"image": image.numpy(), "score_threshold": zero}) for image in images]
        return [{"boxes": torch.from_numpy(b), "scores": torch.from_numpy(s), "labels": torch.from_numpy(lab)}
                for b, s, lab in found]

    return network, detect


def _distinct(scores: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """Which of ``scores`` lie further than :data:`SCORE_TOLERANCE` from every other of ``scores`` and from every one
    of ``others`` (the same number of scores, in the same order) but the one at the same place."""
    near_own = (scores[:, None] - scores[None, :]).abs() <= SCORE_TOLERANCE
    near_others = (scores[:, None] - others[None, :]).abs() <= SCORE_TOLERANCE
    return (near_own.sum(1) == 1) & (near_others.sum(1) <= 1)


def _same_boxes(mine: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> tuple[bool, int]:
    """Whether two score-sorted detection lists agree, and how many boxes were compared whole.

    Their scores must agree one by one; a box whose score ties no other (within :data:`SCORE_TOLERANCE`) must also
    have the same label and box (within :data:`BOX_TOLERANCE` of the largest coordinate). Tied boxes may be ordered,
    suppressed or cut either way by rounding, so only their scores are compared."""
    count = len(theirs["scores"])
    if len(mine["scores"]) != count:
        return False, 0
    if not count:
        return True, 0
    if float((mine["scores"] - theirs["scores"]).abs().max()) > SCORE_TOLERANCE:
        return False, 0
    distinct = _distinct(theirs["scores"], mine["scores"])
    scale = max(float(theirs["boxes"].abs().max()), 1.0)
    same = (torch.equal(mine["labels"][distinct].long(), theirs["labels"][distinct].long())
            and bool(((mine["boxes"] - theirs["boxes"])[distinct].abs() <= BOX_TOLERANCE * scale).all()))
    return same, int(distinct.sum())


def compare_detections(got: Detections, expected: Detections, format: str, path: Path) -> int:
    """The number of boxes compared whole (:func:`_same_boxes`); :class:`ExportMismatchError` unless each image's
    detections in ``got`` are those of ``expected``."""
    compared = 0
    for index, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
        same, boxes = _same_boxes(mine, theirs)
        if not same:
            raise ExportMismatchError(f"the exported {format} detector's post-processing gives other boxes than "
                                      f"torchvision's on check image {index} ({len(mine['scores'])} boxes against "
                                      f"{len(theirs['scores'])}, or other scores, labels or places); nothing was "
                                      f"written to {path}")
        compared += boxes
    return compared


def _metadata(model: nn.Module, format: str) -> dict:
    """What the file records of the detector: its backbone, its configuration, its classes and how it is called."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    info = getattr(model, "checkpoint_info", None)
    return {"model": cfg.get("model"), "head": cfg.get("head"), "network": cfg.get("network"),
            "class_names": info.metadata.get("class_names") if info is not None else None, "takes": CALLED[format][1]}


def _write_and_check(model: nn.Module, prepared: nn.Module, tmp: str, path: Path, format: str, opset: int,
                     images: list[torch.Tensor], batches: list[torch.Tensor]) -> tuple[list, int]:
    """Write the file to ``tmp`` and run it: its network's outputs on the check ``batches``, and the number of boxes
    whose post-processing was compared on ``images``."""
    with tempfile.TemporaryDirectory(prefix="tresnet-export-", dir=Path(tmp).parent) as folder:
        with refusal_as_error(format, f"the {type(model).__name__} detector"):
            if format == "onnx":
                network, detect = _write_onnx(prepared, batches[0], tmp, opset=opset, folder=folder)
            else:
                network, detect = _write_torchscript(prepared, batches[0], tmp)
            got = run_outputs(network, batches)
            # an ONNX file takes one image per call, so each is padded alone; TorchScript pads the list together
            groups = [[image] for image in images] if format == "onnx" else [images]
            found = [box for group in groups for box in detect(group)]
            with torch.no_grad():
                low = _with_threshold(model, 0.0)
                expected = [box for group in groups for box in detect_with(low, network, group)]
    return got, compare_detections(found, expected, format, path)


def export_detector(model: nn.Module, output: str | os.PathLike, *, format: str, opset: int = DEFAULT_OPSET,
                    fused: bool = True, number_format: str = "fp32", dynamic_batch: bool = False, img_size=None,
                    tolerance: float | None = None) -> ExportReport:
    """Export torchvision detector ``model`` (FCOS or RetinaNet, :func:`tresnet.create_detector`) to ``output`` as
    TorchScript or ONNX: the whole detector, checked as this module says, renamed into place only when it passes.

    ``fused``: our backbone's norms folded into its convs (:func:`tresnet.deploy.fuse`); ``tolerance``: the network
    check's limit in place of the fp32 bound. ``number_format``, ``dynamic_batch`` and ``img_size`` exist to be
    refused in one line (see the module's docstring). The file records the detector
    (:data:`DETECTOR_METADATA`: backbone, head, configuration, classes, how it is called).

    Raises :class:`~tresnet.errors.ConfigError` (an option a detector's file does not take, a bad format or
    opset), :class:`~tresnet.errors.MissingDependencyError` (ONNX without its packages), :class:`ExportError` (an
    output that cannot be written, a file the exporter or runtime refuses) and :class:`ExportMismatchError`.
    """
    path = check_export_args(format, output, opset, number_format)
    _check_options(number_format, dynamic_batch, img_size, opset, format)
    _check_size(model)
    was_training = model.training
    try:
        return _export(model.eval(), path, format, opset, fused, tolerance)
    finally:
        model.train(was_training)


def _export(model: nn.Module, path: Path, format: str, opset: int, fused: bool,
            tolerance: float | None) -> ExportReport:
    prepared = fuse(model) if fused else copy.deepcopy(model).requires_grad_(False)
    prepared = prepared.float().cpu()
    images = check_images(model)
    batches = _network_batches(model, images)
    reference = DetectorNetwork(model)
    exact = exact_outputs(reference, batches)
    fp32, _ = fp32_outputs(reference, batches)
    results: list[tuple[Agreement, int]] = []

    def write_and_check(tmp: str) -> None:
        got, boxes = _write_and_check(model, prepared, tmp, path, format, opset, images, batches)
        results.append((judge(got, exact, fp32, "fp32", tolerance, format, path), boxes))
        record_metadata(tmp, format, {DETECTOR_METADATA: _metadata(model, format)})

    write_atomically(path, write_and_check)
    found, boxes = results[0]
    img_size = cast(tuple[int, int], tuple(images[0].shape[-2:]))
    return ExportReport(path=path, format=format, img_size=img_size, fused=fused,
                        number_format="fp32", dynamic_batch=False, opset=opset if format == "onnx" else None,
                        batch_sizes=tuple(len(batch) for batch in batches), max_abs_diff=found.abs_error,
                        max_rel_diff=found.error, fp32_error=found.fp32_error, limit=found.limit, takes=CALLED[format][0],
                        boxes_checked=boxes)


__all__ = ["DETECTOR_METADATA", "DetectorNetwork", "check_images", "compare_detections", "detect_with",
           "export_detector", "head_output_names", "is_detector"]
