"""Classify image files: the top-k classes of each, with probabilities (what ``tresnet predict`` prints);
for a multi-label model also every label whose probability exceeds a threshold.

    import tresnet
    from tresnet.engine.predict import predict

    model = tresnet.create_model(checkpoint_path="runs/digits/best.safetensors")
    for answer in predict(model, ["photos/"], topk=3):
        print(answer.file, answer.error or [(s.label, round(s.prob, 3)) for s in answer.topk])

    model = tresnet.create_model(checkpoint_path="tresnet_l_448_coco.pth")  # a multi-label checkpoint
    for answer in predict(model, ["photos/"], threshold=0.7):
        print(answer.file, answer.error or [s.label for s in answer.labels])
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from tresnet.data import class_labels, create_eval_transform, find_images, load_image
from tresnet.data.class_mapping import read_class_map
from tresnet.data.class_names import IMAGENET_NUM_CLASSES
from tresnet.data.imagenet import imagenet_synsets
from tresnet.deploy.inference import check_inference_options, inference_model
from tresnet.engine.evaluate import resolve_task
from tresnet.errors import ConfigError, DataError
from tresnet.runtime import autocast
from tresnet.tasks import DEFAULT_THRESHOLD, MULTILABEL, check_threshold


@dataclass(frozen=True)
class ClassScore:
    """One of an image's classes: its index, label and probability (softmax for a multiclass model,
    the class's own sigmoid for a multilabel one); for an ImageNet-1k model also its synset."""

    index: int
    label: str
    prob: float
    synset: str | None = None

    def to_dict(self) -> dict:
        """``{"index", "label", "prob"}``, with ``"synset"`` when there is one."""
        return {key: value for key, value in vars(self).items() if key != "synset" or value is not None}


@dataclass(frozen=True)
class Prediction:
    """The answer for one input: its top-k classes, best first, or the error that stopped it. A
    multilabel model also gives ``labels``: every class whose probability exceeds the threshold, best
    first (None for a multiclass model)."""

    file: str
    topk: list[ClassScore] = field(default_factory=list)
    error: str | None = None
    labels: list[ClassScore] | None = None

    def to_dict(self) -> dict:
        """``{"file", "topk": [{"index", "label", "prob"}]}`` (ImageNet-1k models: with ``"synset"``),
        with ``"labels"`` (same form) before ``"topk"`` for a multilabel model, plus ``"error"`` for a
        failed input."""
        out: dict = {"file": self.file}
        if self.labels is not None:
            out["labels"] = [score.to_dict() for score in self.labels]
        out["topk"] = [score.to_dict() for score in self.topk]
        if self.error is not None:
            out["error"] = self.error
        return out


def _labels(model: nn.Module, class_names: Sequence[str] | None, task: str,
            class_map: str | os.PathLike | None) -> tuple[list[str], Sequence[str] | None]:
    """A label per output and, for an ImageNet-1k model labelled by ImageNet's names, the synsets."""
    info = getattr(model, "checkpoint_info", None)
    if class_names is None and info is not None:
        class_names = info.metadata.get("class_names")
    imagenet = task != MULTILABEL and model.num_classes == IMAGENET_NUM_CLASSES and (
        class_names is None or len(class_names) != model.num_classes or list(class_names) == list(imagenet_synsets()))
    if imagenet:  # a checkpoint trained on ImageNet's synset folders records synsets: show the names too
        class_names = None
    labels = class_labels(model.num_classes, class_names, task=task)
    if class_map is not None:
        for name, index in read_class_map(class_map, model.num_classes).items():
            labels[index] = name
    return labels, imagenet_synsets() if imagenet else None


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _failure(name: str, message: str, task: str) -> Prediction:
    return Prediction(name, error=message, labels=[] if task == MULTILABEL else None)


def _decode(paths: Sequence[Path], transform, task: str) -> tuple[list[str], list[torch.Tensor], list[Prediction]]:
    """Decoded images of ``paths`` (upright by their EXIF orientation) and an error for each unreadable one."""
    names, tensors, failed = [], [], []
    for path in paths:
        try:
            tensors.append(transform(load_image(path, exif_transpose=True)))  # phones store rotation in EXIF
            names.append(str(path))
        except DataError as e:
            failed.append(_failure(str(path), str(e), task))
    return names, tensors, failed


def predict(model: nn.Module, inputs: Sequence[str | os.PathLike], *, topk: int = 5, batch_size: int = 32,
            img_size: int | None = None, device: str | torch.device | None = None, precision: str = "fp32",
            class_names: Sequence[str] | None = None, task: str | None = None,
            threshold: float = DEFAULT_THRESHOLD, class_map: str | os.PathLike | None = None,
            calibration: str | os.PathLike | torch.Tensor | None = None,
            calibration_images: int | None = None) -> Iterator[Prediction]:
    """Yield a :class:`Prediction` for every image that ``inputs`` name (files, or folders searched
    recursively: :func:`tresnet.data.find_images`), with the model's own preprocessing.

    Inputs that name no image come first, as errors; then the images in order, batch by batch, an
    unreadable file giving an error rather than stopping the others. Labels are ``class_names``, else
    the checkpoint's (``model.checkpoint_info``), else ImageNet's for 1000 classes (COCO's for 80 with a
    multilabel task), else indices; a ``class_map`` file (as ``tresnet validate --class-map``) renames the
    outputs it lists. An ImageNet-1k model's answers also carry each class's synset. ``task`` None is the model's (``pretrained_cfg["task"]``, else
    multiclass): a multiclass answer gives softmax probabilities; a multilabel one each class's sigmoid
    and ``labels``, the classes whose probability exceeds ``threshold``. ``device`` None keeps the model
    where it is. ``precision`` is one of :data:`tresnet.deploy.inference.INFERENCE_PRECISIONS` (``bf16``:
    the folded bfloat16 model; ``int8``: the model quantized on the ``calibration`` images, on the CPU).
    The model runs in eval mode; its mode comes back when the iteration ends. Raises
    :class:`ConfigError` for a bad ``topk``, ``batch_size``, precision, task or threshold,
    :class:`DataError` for a class map that cannot be read, and
    :class:`~tresnet.errors.InputSizeError` for a size the model cannot take.
    """
    if topk < 1 or batch_size < 1:
        raise ConfigError(f"topk and batch size must be at least 1, got {topk} and {batch_size}")
    task = resolve_task(model, task)
    threshold = check_threshold(threshold)
    size = img_size or int(model.pretrained_cfg["input_size"][-1])
    model.check_input_size(size, size)
    device = torch.device(device) if device is not None else _model_device(model)
    check_inference_options(precision, device, calibration, calibration_images)
    transform = create_eval_transform(model.pretrained_cfg, size)
    labels, synsets = _labels(model, class_names, task, class_map)
    files, errors = find_images(inputs)
    yield from (_failure(name, message, task) for name, message in errors)
    was_training = model.training
    model.to(device).eval()
    runner, run_precision = inference_model(model, precision, device, calibration=calibration,
                                            calibration_images=calibration_images, img_size=size)
    try:
        for start in range(0, len(files), batch_size):
            names, tensors, failed = _decode(files[start:start + batch_size], transform, task)
            yield from failed
            if tensors:
                probs = _probabilities(runner, torch.stack(tensors), task, device, run_precision)
                yield from _answers(names, probs, labels, synsets, topk, threshold if task == MULTILABEL else None)
    finally:
        model.train(was_training)


def _probabilities(model: nn.Module, images: torch.Tensor, task: str, device: torch.device,
                   precision: str) -> torch.Tensor:
    with torch.no_grad(), autocast(precision, device):
        logits = model(images.to(device)).float()
    return logits.sigmoid() if task == MULTILABEL else logits.softmax(dim=1)


def _answers(names: list[str], probs: torch.Tensor, labels: list[str], synsets: Sequence[str] | None, topk: int,
             threshold: float | None) -> list[Prediction]:
    """Top-k of each row of ``probs``; with a ``threshold`` also every class above it, best first."""
    def score(index: int, prob: float) -> ClassScore:
        return ClassScore(index, labels[index], prob, synsets[index] if synsets is not None else None)

    top_probs, top_indices = probs.topk(min(topk, probs.shape[1]), dim=1)
    answers = []
    for row, name, p_row, i_row in zip(probs, names, top_probs.tolist(), top_indices.tolist(), strict=True):
        top = [score(i, p) for p, i in zip(p_row, i_row, strict=True)]
        above = None
        if threshold is not None:
            kept = (row > threshold).nonzero().flatten()
            order = kept[row[kept].argsort(descending=True, stable=True)].tolist()
            above = [score(i, float(row[i])) for i in order]
        answers.append(Prediction(name, top, labels=above))
    return answers


__all__ = ["ClassScore", "Prediction", "predict"]
