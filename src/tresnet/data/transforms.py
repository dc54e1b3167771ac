"""Evaluation preprocessing, built from a model's ``pretrained_cfg`` so weights and transform always match.

TResNet takes RGB in [0, 1] with no mean/std normalisation (the official release's validation code,
Alibaba-MIIL/TResNet ``validate.py``, and timm's ``tresnet`` configs: mean 0, std 1). At 224 the short
side is resized bilinearly to ``int(224 / 0.875) = 256`` and the centre 224x224 is cropped; the 448
models squash the whole image to 448x448, as the official 448 evaluation does. GENet normalises with
ImageNet's mean/std and rounds the resize up (192 -> 220), as its official evaluation does
(idstcv/GPU-Efficient-Networks). Mean/std are applied only when they are not 0/1 (:func:`normalisation`),
the one rule that training (:mod:`tresnet.data.train_transforms`) follows too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import cast

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode, v2

from tresnet.data.images import to_rgb
from tresnet.errors import ConfigError

# The interpolation names a configuration or recipe may use, and the crop modes of evaluation.
INTERPOLATIONS = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
    "lanczos": InterpolationMode.LANCZOS,
}
CROP_MODES = ("center", "squash")
RESIZE_ROUNDINGS = {"floor": math.floor, "ceil": math.ceil}


class ToRGB:
    """Convert a PIL image of any mode to 8-bit RGB (see :mod:`tresnet.data.images`)."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return to_rgb(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def resolve_eval_config(pretrained_cfg: dict, img_size: int | None = None) -> dict:
    """The evaluation preprocessing of a model as a dict: ``img_size``, ``resize_size``, ``crop_mode``,
    ``interpolation``, ``mean``, ``std`` (:meth:`Preprocessing.of`, which raises for bad values).

    ``img_size`` (a square side) overrides the configuration's ``input_size``; the resize keeps the
    configuration's ``crop_pct`` and ``resize_rounding`` (``"floor"``, the default, or ``"ceil"``).
    """
    p = Preprocessing.of(pretrained_cfg, img_size=img_size)
    return dict(img_size=p.img_size, resize_size=p.resize_size, crop_mode=p.crop_mode,
                interpolation=p.interpolation, mean=p.mean, std=p.std)


def to_float_steps(mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> list:
    """An ``uint8`` image (tensor or PIL) to float in [0, 1], then ``(x - mean) / std`` when given: the one
    conversion training, evaluation and the bundled sets share, so the same pixels give the same tensor."""
    if (mean is None) != (std is None):
        raise ConfigError("give both mean and std, or neither")
    steps: list = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if mean is not None and std is not None:  # both or neither, checked above
        steps.append(v2.Normalize(list(mean), list(std)))
    return steps


def describe_eval_transform(pretrained_cfg: dict, img_size: int | None = None) -> str:
    """One line for logs, e.g. ``resize 256 bilinear, centre crop 224x224, RGB in [0, 1]``."""
    return Preprocessing.of(pretrained_cfg, img_size=img_size).describe()


def _is_identity_normalisation(mean: tuple[float, ...], std: tuple[float, ...]) -> bool:
    return all(m == 0.0 for m in mean) and all(s == 1.0 for s in std)


def normalisation(pretrained_cfg: dict) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The ``(mean, std)`` a model's inputs are normalised with (GENet: ImageNet's), or None for a model
    that takes RGB in [0, 1] as it is (TResNet: mean 0, std 1). Training and evaluation both read it."""
    mean = tuple(float(m) for m in pretrained_cfg.get("mean", (0.0, 0.0, 0.0)))
    std = tuple(float(s) for s in pretrained_cfg.get("std", (1.0, 1.0, 1.0)))
    return None if _is_identity_normalisation(mean, std) else (mean, std)


def describe_normalisation(pretrained_cfg: dict) -> str:
    """``RGB in [0, 1]``, or ``normalised with mean (...) std (...)``."""
    norm = normalisation(pretrained_cfg)
    return "RGB in [0, 1]" if norm is None else f"normalised with mean {norm[0]} std {norm[1]}"


def create_eval_transform(pretrained_cfg: dict, img_size: int | None = None) -> T.Compose:
    """The evaluation transform of a model: PIL image (any mode) -> float tensor ``(3, H, W)``.

    From ``pretrained_cfg`` (``model.pretrained_cfg`` or :func:`tresnet.get_pretrained_cfg`):
    ``crop_mode="center"``: resize the short side to ``int(img_size / crop_pct)`` (antialiased, as
    torchvision's ``Resize``), then centre-crop ``img_size``; ``crop_mode="squash"``: resize the whole
    image to ``img_size x img_size``. Then RGB in [0, 1], normalised only when mean/std are not 0/1.
    ``img_size`` defaults to the configuration's input size.
    """
    return Preprocessing.of(pretrained_cfg, img_size=img_size).transform()


@dataclass(frozen=True)
class Preprocessing:
    """How images are prepared for a model at evaluation: what ``validate``, ``predict``, ``export`` and the
    benchmark apply, resolved once from the model's configuration (``model.pretrained_cfg``: the
    published one, or the one its checkpoint recorded) and the caller's overrides.

    ``crop_mode="center"`` resizes the short side to ``resize_size`` then centre-crops ``img_size``;
    ``"squash"`` resizes the whole image to ``img_size``. ``source`` says where the configuration came
    from (``"model"``: the registered model's, ``"checkpoint"``: recorded by ``tresnet train``).
    """

    img_size: tuple[int, int]
    crop_mode: str = "center"
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    resize_rounding: str = "floor"
    source: str = "model"

    @classmethod
    def of(cls, model_or_cfg, *, img_size: int | None = None, crop_pct: float | None = None,
           crop_mode: str | None = None, interpolation: str | None = None) -> Preprocessing:
        """The preprocessing of a model (or of its ``pretrained_cfg``), with the overrides given.

        ``crop_pct`` alone means a centre crop of that fraction (timm's ``--crop-pct``). Raises
        :class:`ConfigError` for a size under 1, a crop fraction outside (0, 1], ``crop_pct`` with
        ``crop_mode="squash"``, or an unknown crop mode or interpolation.
        """
        cfg = dict(getattr(model_or_cfg, "pretrained_cfg", model_or_cfg) or {})
        if crop_pct is not None:
            if not 0.0 < crop_pct <= 1.0:
                raise ConfigError(f"--crop-pct must be in (0, 1], got {crop_pct}")
            if crop_mode == "squash":
                raise ConfigError("--crop-pct is the fraction of a centre crop: it does not apply with "
                                  "--crop-mode squash (drop one of them)")
            cfg.update(crop_pct=float(crop_pct), crop_mode="center")
        for key, value in (("crop_mode", crop_mode), ("interpolation", interpolation)):
            if value is not None:
                cfg[key] = value
        height, width = cfg.get("input_size", (3, 224, 224))[-2:]
        size = (img_size, img_size) if img_size is not None else (int(height), int(width))
        if min(size) <= 0:
            raise ConfigError(f"image size must be positive, got {img_size}")
        mode, interp = cfg.get("crop_mode", "center"), cfg.get("interpolation", "bilinear")
        rounding = cfg.get("resize_rounding", "floor")
        for value, choices, what in ((mode, CROP_MODES, "crop_mode"), (interp, INTERPOLATIONS, "interpolation"),
                                     (rounding, RESIZE_ROUNDINGS, "resize_rounding")):
            if value not in choices:
                raise ConfigError(f"unknown {what} {value!r}; use one of {', '.join(choices)}")
        return cls(img_size=size, crop_mode=mode,
                   crop_pct=1.0 if mode == "squash" else float(cfg.get("crop_pct", 0.875)), interpolation=interp,
                   mean=tuple(float(m) for m in cfg.get("mean", (0.0, 0.0, 0.0))),
                   std=tuple(float(v) for v in cfg.get("std", (1.0, 1.0, 1.0))), resize_rounding=rounding,
                   source=cfg.get("preprocessing_source", "model"))

    @property
    def resize_size(self) -> int | tuple[int, int]:
        """The short side before the centre crop (an int; a pair for a non-square crop), or the squashed
        ``(height, width)``: crop / crop_pct, rounded down as TResNet's and timm's evaluation do (224 -> 256)
        or up as GENet's official evaluation does (192 -> 220)."""
        if self.crop_mode == "squash":
            return self.img_size
        round_ = RESIZE_ROUNDINGS[self.resize_rounding]
        sides = cast(tuple[int, int], tuple(round_(side / self.crop_pct) for side in self.img_size))
        return sides[0] if self.img_size[0] == self.img_size[1] else sides

    def to_config(self) -> dict:
        """The ``pretrained_cfg`` keys it stands for (``tresnet.models.registry.PREPROCESSING_KEYS``), JSON-ready."""
        return {"input_size": [3, *self.img_size], "crop_mode": self.crop_mode, "crop_pct": self.crop_pct,
                "interpolation": self.interpolation, "mean": list(self.mean), "std": list(self.std),
                "resize_rounding": self.resize_rounding}

    def to_dict(self) -> dict:
        """Every field, the resize side and the one-line description, JSON-ready (for reports)."""
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        resize = self.resize_size
        return {**out, "resize_size": list(resize) if isinstance(resize, tuple) else resize,
                "description": self.describe()}

    def describe(self) -> str:
        """One line for logs, e.g. ``resize 256 bilinear, centre crop 224x224, RGB in [0, 1]``."""
        height, width = self.img_size
        if self.crop_mode == "squash":
            text = f"squash to {height}x{width} {self.interpolation}"
        else:
            text = f"resize {self.resize_size} {self.interpolation}, centre crop {height}x{width}"
        text = f"{text}, {describe_normalisation(self.to_config())}"
        return text + (" (recorded in the checkpoint)" if self.source == "checkpoint" else "")

    def transform(self) -> T.Compose:
        """PIL image (any mode) -> float tensor ``(3, H, W)``: resize (and crop), RGB in [0, 1] (converted as
        the training transform converts, so a file and the same pixels in memory give equal tensors),
        normalised only when mean/std are not 0/1."""
        mode = INTERPOLATIONS[self.interpolation]
        steps: list = [ToRGB()]
        if self.crop_mode == "squash":
            steps.append(T.Resize(self.img_size, interpolation=mode, antialias=True))
        else:
            steps += [T.Resize(self.resize_size, interpolation=mode, antialias=True), T.CenterCrop(self.img_size)]
        norm = normalisation(self.to_config())
        steps += to_float_steps(*(norm or (None, None)))
        return T.Compose([*steps, v2.ToPureTensor()])


__all__ = ["CROP_MODES", "INTERPOLATIONS", "Preprocessing", "ToRGB", "create_eval_transform", "describe_eval_transform",
           "describe_normalisation", "normalisation", "resolve_eval_config", "to_float_steps"]
