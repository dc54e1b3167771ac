"""Classify image files: the top-k classes of each, with probabilities (what ``tresnet predict`` prints).

    import tresnet
    from tresnet.engine.predict import predict

    model = tresnet.create_model(checkpoint_path="runs/digits/best.safetensors")
    for answer in predict(model, ["photos/"], topk=3):
        print(answer.file, answer.error or [(s.label, round(s.prob, 3)) for s in answer.topk])
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from tresnet.data import class_labels, create_eval_transform, find_images, load_image
from tresnet.errors import ConfigError, DataError
from tresnet.runtime import autocast, check_precision


@dataclass(frozen=True)
class ClassScore:
    """One of an image's top-k classes: its index, label and softmax probability."""

    index: int
    label: str
    prob: float


@dataclass(frozen=True)
class Prediction:
    """The answer for one input: its top-k classes, best first, or the error that stopped it."""

    file: str
    topk: list[ClassScore] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        """``{"file", "topk": [{"index", "label", "prob"}]}``, plus ``"error"`` for a failed input."""
        out: dict = {"file": self.file, "topk": [vars(score) for score in self.topk]}
        if self.error is not None:
            out["error"] = self.error
        return out


def _labels(model: nn.Module, class_names: Sequence[str] | None) -> list[str]:
    info = getattr(model, "checkpoint_info", None)
    if class_names is None and info is not None:
        class_names = info.metadata.get("class_names")
    return class_labels(model.num_classes, class_names)


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _decode(paths: Sequence[Path], transform) -> tuple[list[str], list[torch.Tensor], list[Prediction]]:
    """Decoded images of ``paths`` (upright by their EXIF orientation) and an error for each unreadable one."""
    names, tensors, failed = [], [], []
    for path in paths:
        try:
            tensors.append(transform(load_image(path, exif_transpose=True)))  # phones store rotation in EXIF
            names.append(str(path))
        except DataError as e:
            failed.append(Prediction(str(path), error=str(e)))
    return names, tensors, failed


def predict(model: nn.Module, inputs: Sequence[str | os.PathLike], *, topk: int = 5, batch_size: int = 32,
            img_size: int | None = None, device: str | torch.device | None = None, precision: str = "fp32",
            class_names: Sequence[str] | None = None) -> Iterator[Prediction]:
    """Yield a :class:`Prediction` for every image that ``inputs`` name (files, or folders searched
    recursively: :func:`tresnet.data.find_images`), with the model's own preprocessing.

    Inputs that name no image come first, as errors; then the images in order, batch by batch, an
    unreadable file giving an error rather than stopping the others. Labels are ``class_names``, else
    the checkpoint's (``model.checkpoint_info``), else ImageNet's for 1000 classes, else indices.
    ``device`` None keeps the model where it is. The model runs in eval mode; its mode comes back
    when the iteration ends. Raises :class:`ConfigError` for a bad ``topk``, ``batch_size`` or
    precision and :class:`~tresnet.errors.InputSizeError` for a size the model cannot take.
    """
    if topk < 1 or batch_size < 1:
        raise ConfigError(f"topk and batch size must be at least 1, got {topk} and {batch_size}")
    size = img_size or int(model.pretrained_cfg["input_size"][-1])
    model.check_input_size(size, size)
    device = torch.device(device) if device is not None else _model_device(model)
    check_precision(precision, device)
    transform = create_eval_transform(model.pretrained_cfg, size)
    labels = _labels(model, class_names)
    files, errors = find_images(inputs)
    yield from (Prediction(name, error=message) for name, message in errors)
    was_training = model.training
    model.to(device).eval()
    try:
        for start in range(0, len(files), batch_size):
            names, tensors, failed = _decode(files[start:start + batch_size], transform)
            yield from failed
            if tensors:
                yield from _classify(model, names, torch.stack(tensors), labels, topk, device, precision)
    finally:
        model.train(was_training)


def _classify(model: nn.Module, names: list[str], images: torch.Tensor, labels: list[str], topk: int,
              device: torch.device, precision: str) -> list[Prediction]:
    with torch.no_grad(), autocast(precision, device):
        probs = model(images.to(device)).float().softmax(dim=1)
    top_probs, top_indices = probs.topk(min(topk, probs.shape[1]), dim=1)
    return [Prediction(name, [ClassScore(i, labels[i], p) for p, i in zip(p_row, i_row, strict=True)])
            for name, p_row, i_row in zip(names, top_probs.tolist(), top_indices.tolist(), strict=True)]


__all__ = ["ClassScore", "Prediction", "predict"]
