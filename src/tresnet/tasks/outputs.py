"""The forms every task's results share: the facts of a validation run that any report states
(:class:`RunFacts`), and one image's answer (:class:`Prediction` of :class:`ClassScore`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def percent(fraction: float | None) -> float | None:
    """``fraction`` in percent (None stays None)."""
    return None if fraction is None else 100.0 * fraction


def throughput(images: int, seconds: float) -> float:
    """Images per second of an evaluation (infinite for one that took no measurable time)."""
    return images / seconds if seconds > 0 else float("inf")


@dataclass(frozen=True)
class RunFacts:
    """What every validation report says besides its task's figures: the model and its weights, the data,
    the preprocessing, the counts and timing, the device and settings."""

    model: str
    checkpoint: str | None
    checkpoint_format: str | None
    task: str
    data: str
    num_classes: int
    img_size: int
    preprocessing: dict
    loss: float
    images: int
    skipped: int
    skipped_files: list[str]
    seconds: float
    img_per_s: float
    device: str
    precision: str
    channels_last: bool
    settings: dict = field(default_factory=dict)

    @classmethod
    def of(cls, run: Any, scores: Any) -> RunFacts:
        """The facts of ``run`` (a :class:`tresnet.inference.validate.Validation`) and its ``scores``."""
        info = getattr(run.model, "checkpoint_info", None)
        return cls(model=run.model.pretrained_cfg["model"], checkpoint=str(info.path) if info is not None else None,
                   checkpoint_format=info.format if info is not None else None, task=run.task.name,
                   data=str(run.dataset.root), num_classes=run.model.num_classes, img_size=run.img_size,
                   preprocessing=run.preprocessing.to_dict(), loss=scores.loss, images=scores.images,
                   skipped=run.dataset.skipped, skipped_files=sorted(run.dataset.skipped_files),
                   seconds=scores.seconds, img_per_s=scores.img_per_s, device=str(run.device),
                   precision=run.precision, channels_last=run.channels_last, settings=dict(run.settings))

    def head(self) -> dict:
        """The keys a report starts with."""
        return {key: getattr(self, key) for key in ("model", "checkpoint", "checkpoint_format", "task", "data",
                                                    "num_classes", "img_size", "preprocessing")}

    def tail(self) -> dict:
        """The keys a report ends with (the settings last)."""
        keys = ("loss", "images", "skipped", "skipped_files", "seconds", "img_per_s", "device", "precision",
                "channels_last")
        return {**{key: getattr(self, key) for key in keys}, **self.settings}

    def counts(self) -> str:
        """``(N images, K skipped, S s, R img/s)`` for the report's figure line."""
        return (f"({self.images} images, {self.skipped} skipped, {self.seconds:.1f} s, "
                f"{self.img_per_s:.1f} img/s)")


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

    def line(self, indent: str) -> str:
        """``indent``, the probability in percent, then the label, the index (and synset)."""
        where = f"{self.index}, {self.synset}" if self.synset else f"{self.index}"
        return f"{indent}{100.0 * self.prob:6.2f}%  {self.label} ({where})"


@dataclass(frozen=True)
class Prediction:
    """The answer for one input: its top-k classes, best first, or the error that stopped it. A
    multilabel model also gives ``labels``: every class whose probability exceeds ``threshold``, best
    first (None for a multiclass model)."""

    file: str
    topk: list[ClassScore] = field(default_factory=list)
    error: str | None = None
    labels: list[ClassScore] | None = None
    threshold: float | None = None

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

    def lines(self) -> list[str]:
        """What ``tresnet predict`` prints for a readable input: the file, the labels above the threshold
        (multilabel) and the top-k."""
        out, indent = [self.file], "  "
        if self.labels is not None:  # multilabel: the answer, then the top-k for context
            out.append(f"  labels (probability > {self.threshold:g}):" + ("" if self.labels else " none"))
            out += [score.line("    ") for score in self.labels]
            out.append(f"  top-{len(self.topk)}:")
            indent = "    "
        return out + [score.line(indent) for score in self.topk]


__all__ = ["ClassScore", "Prediction", "RunFacts", "percent", "throughput"]
