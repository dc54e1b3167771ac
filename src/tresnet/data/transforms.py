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

from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

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
    """The evaluation preprocessing of a model: ``img_size``, ``resize_size``, ``crop_mode``,
    ``interpolation``, ``mean``, ``std``.

    ``img_size`` (a square side) overrides the configuration's ``input_size``; the resize keeps the
    configuration's ``crop_pct`` and ``resize_rounding`` (``"floor"``, the default, or ``"ceil"``). Raises :class:`ConfigError` for an unknown crop mode or interpolation.
    """
    height, width = pretrained_cfg.get("input_size", (3, 224, 224))[-2:]
    size = (img_size, img_size) if img_size is not None else (int(height), int(width))
    if min(size) <= 0:
        raise ConfigError(f"image size must be positive, got {img_size}")
    crop_mode = pretrained_cfg.get("crop_mode", "center")
    if crop_mode not in CROP_MODES:
        raise ConfigError(f"unknown crop_mode {crop_mode!r} in the model configuration; use one of {CROP_MODES}")
    interpolation = pretrained_cfg.get("interpolation", "bilinear")
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(f"unknown interpolation {interpolation!r}; use one of {', '.join(INTERPOLATIONS)}")
    crop_pct = float(pretrained_cfg.get("crop_pct", 0.875 if crop_mode == "center" else 1.0))
    rounding = pretrained_cfg.get("resize_rounding", "floor")
    if rounding not in RESIZE_ROUNDINGS:
        raise ConfigError(f"unknown resize_rounding {rounding!r}; use one of {', '.join(RESIZE_ROUNDINGS)}")
    if crop_mode == "squash":
        resize_size = size
    else:
        # The short side goes to crop / crop_pct, rounded down as TResNet's and timm's evaluation do
        # (224 -> 256), or up as GENet's official evaluation does (192 -> 220).
        round_ = RESIZE_ROUNDINGS[rounding]
        resize_size = round_(size[0] / crop_pct) if size[0] == size[1] else tuple(round_(s / crop_pct) for s in size)
    return dict(
        img_size=size,
        resize_size=resize_size,
        crop_mode=crop_mode,
        interpolation=interpolation,
        mean=tuple(float(m) for m in pretrained_cfg.get("mean", (0.0, 0.0, 0.0))),
        std=tuple(float(s) for s in pretrained_cfg.get("std", (1.0, 1.0, 1.0))),
    )


def describe_eval_transform(pretrained_cfg: dict, img_size: int | None = None) -> str:
    """One line for logs, e.g. ``resize 256 bilinear, centre crop 224x224, RGB in [0, 1]``."""
    cfg = resolve_eval_config(pretrained_cfg, img_size)
    height, width = cfg["img_size"]
    if cfg["crop_mode"] == "squash":
        text = f"squash to {height}x{width} {cfg['interpolation']}"
    else:
        text = f"resize {cfg['resize_size']} {cfg['interpolation']}, centre crop {height}x{width}"
    return f"{text}, {describe_normalisation(cfg)}"


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
    cfg = resolve_eval_config(pretrained_cfg, img_size)
    interpolation = INTERPOLATIONS[cfg["interpolation"]]
    steps: list = [ToRGB()]
    if cfg["crop_mode"] == "squash":
        steps.append(T.Resize(cfg["img_size"], interpolation=interpolation, antialias=True))
    else:
        steps += [T.Resize(cfg["resize_size"], interpolation=interpolation, antialias=True),
                  T.CenterCrop(cfg["img_size"])]
    steps.append(T.ToTensor())
    norm = normalisation(cfg)
    if norm is not None:
        steps.append(T.Normalize(*norm))
    return T.Compose(steps)


__all__ = ["CROP_MODES", "INTERPOLATIONS", "ToRGB", "create_eval_transform", "describe_eval_transform",
           "describe_normalisation", "normalisation", "resolve_eval_config"]
