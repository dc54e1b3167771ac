"""Reading image files: any format Pillow decodes, any mode, always returned as 8-bit RGB.

Conversion rules (one place for all of them):

- RGB is kept; L, P, 1, CMYK, YCbCr, RGBX... go through Pillow's own conversion.
- Anything with transparency (RGBA, LA, PA, P with a transparent colour, premultiplied RGBa/La) is
  composited over a **white** background, as an image viewer shows it, rather than exposing whatever
  colour hides under transparent pixels.
- 16-bit greyscale (I;16, I;16B, I;16L) and 32-bit integer (I) images are read as 16-bit intensities and
  scaled ``v / 257`` to 0..255 (Pillow's own conversion clips them, turning most of the image white).
- Float (F) images are taken as intensities in [0, 1] when every value lies there, else in [0, 255]; values
  outside the range are clipped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS

from tresnet.errors import DataError

# torchvision's list (what ImageFolder reads) plus GIF, which Pillow decodes too.
IMAGE_EXTENSIONS: tuple[str, ...] = tuple(IMG_EXTENSIONS) + (".gif",)

_BACKGROUND = (255, 255, 255)  # what transparent pixels become
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def is_image_file(path: str | os.PathLike) -> bool:
    """True when ``path``'s extension (any case) is one of :data:`IMAGE_EXTENSIONS`."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)


def _to_uint8_grey(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float single-channel image as 8-bit greyscale, scaled (not clipped)."""
    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        finite = values[np.isfinite(values)]
        scale = 255.0 if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0 else 1.0
        values = np.nan_to_num(values, nan=0.0) * scale
    else:
        values = values / 257.0  # 65535 -> 255
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as an 8-bit RGB image, following the module's conversion rules.

    Raises :class:`DataError` for a mode Pillow cannot convert to RGB.
    """
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "F":
        return _to_uint8_grey(img).convert("RGB")
    if _has_alpha(img):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise DataError(f"cannot convert a {img.mode} image to RGB: {e}") from e


def _reason(error: BaseException) -> str:
    """One short line saying why Pillow could not read a file."""
    if isinstance(error, UnidentifiedImageError):
        return "not an image, or a format Pillow cannot read"
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "truncated" in text.lower():
        return "truncated file (the download or copy was cut short)"
    return f"corrupt image ({text[:160]})"


def load_image(path: str | os.PathLike, *, exif_transpose: bool = False) -> Image.Image:
    """Read and fully decode the image at ``path``; return it as RGB (see :func:`to_rgb`).

    The whole file is decoded here, so a truncated or corrupt file fails now rather than later.
    ``exif_transpose`` turns the picture upright by its EXIF orientation (what a viewer shows);
    validation leaves it off, like the reference pipelines.

    Raises :class:`DataError` with a one-line message for a missing, empty, unreadable, truncated or
    corrupt file.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"cannot read image {path}: no such file")
    if path.is_dir():
        raise DataError(f"cannot read image {path}: it is a folder")
    if path.stat().st_size == 0:
        raise DataError(f"cannot read image {path}: empty file")
    try:
        with Image.open(path) as opened:
            opened.load()
            img: Image.Image = ImageOps.exif_transpose(opened) if exif_transpose else opened
            return to_rgb(img)
    except DataError as e:
        raise DataError(f"cannot read image {path}: {e}") from e
    except PermissionError as e:
        raise DataError(f"cannot read image {path}: permission denied") from e
    except Exception as e:  # noqa: BLE001 - Pillow raises many types (OSError, SyntaxError, ValueError...)
        raise DataError(f"cannot read image {path}: {_reason(e)}") from e


def _images_in_folder(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p.name)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def find_images(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The image files that ``inputs`` name, and ``(input, error)`` for those that name none.

    A file is taken whatever its extension (it was named explicitly); a folder gives the image files
    inside it, recursively, sorted, hidden entries left out. A missing path, or a folder without
    images, gives an error line instead.
    """
    files: list[Path] = []
    errors: list[tuple[str, str]] = []
    for entry in inputs:
        name = str(entry)
        path = Path(entry).expanduser()
        if path.is_dir():
            found = _images_in_folder(path)
            if not found:
                errors.append((name, f"no image files in folder {name}"))
            files += found
        elif path.exists():
            files.append(path)
        else:
            errors.append((name, f"cannot read image {name}: no such file or folder"))
    return files, errors


__all__ = ["IMAGE_EXTENSIONS", "find_images", "is_image_file", "load_image", "to_rgb"]
