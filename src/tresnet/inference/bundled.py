"""The bundled data sets as a training run used them: the validation split (``val_split``, ``split_seed``) and
image size that a checkpoint of ours records, else those of the set's demo recipe; and writing a split to disk.

    from tresnet.inference.bundled import write_bundled_set

    written = write_bundled_set("digits", "digits_val", checkpoint="runs/digits/best.safetensors")
    print(written.summary())   # then: tresnet validate --data digits_val --checkpoint runs/digits/best.safetensors
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from tresnet.checkpoint import read_checkpoint_metadata
from tresnet.data.bundled import BUNDLED_SETS, bundled_set, write_bundled
from tresnet.errors import DataError
from tresnet.recipes import read_recipe


def _demo_value(name: str, section: str, key: str):
    """``key`` of ``section`` (``data.val_split``, ``data.split_seed``, ``model.img_size``) in bundled set ``name``'s
    demo recipe, which states each of them."""
    spec = bundled_set(name)
    assert spec is not None  # called for bundled sets only
    return read_recipe(spec.recipe)[section][key]


def _metadata(model_or_metadata: nn.Module | Mapping) -> Mapping:
    if isinstance(model_or_metadata, nn.Module):
        info = getattr(model_or_metadata, "checkpoint_info", None)
        return info.metadata if info is not None else {}
    return model_or_metadata


def bundled_split(model_or_metadata: nn.Module | Mapping, name: str) -> tuple[float, int]:
    """``(val_split, split_seed)`` of bundled set ``name`` for a model (or its checkpoint's metadata): those
    its checkpoint records when it was trained on that set, else those of the set's demo recipe."""
    meta = _metadata(model_or_metadata)
    if meta.get("trained_on") == name and meta.get("val_split") is not None:
        return float(meta["val_split"]), int(meta.get("split_seed") or 0)
    return float(_demo_value(name, "data", "val_split")), int(_demo_value(name, "data", "split_seed"))


def bundled_img_size(metadata: Mapping, name: str) -> int:
    """The image side a checkpoint's run validated at (recorded), else bundled set ``name``'s demo recipe's."""
    size = (metadata.get("preprocessing") or {}).get("input_size")
    if size:
        return int(size[-1])
    if str(metadata.get("img_size", "")).isdigit():
        return int(metadata["img_size"])
    return int(_demo_value(name, "model", "img_size"))


@dataclass(frozen=True)
class WrittenSet:
    """What :func:`write_bundled_set` wrote: the folder, the files, and the split and size they hold."""

    name: str
    output: Path
    files: list[Path]
    split: str
    img_size: int
    val_split: float
    split_seed: int

    def summary(self) -> str:
        images = sum(1 for f in self.files if f.suffix == ".png")
        return (f"wrote {images} {self.split} images of {self.name} at {self.img_size}x{self.img_size} to "
                f"{self.output} (validation split {self.val_split:g}, seed {self.split_seed})")


def write_bundled_set(name: str, output: str | os.PathLike, *, split: str = "val",
                      checkpoint: str | os.PathLike | None = None, img_size: int | None = None) -> WrittenSet:
    """Write ``split`` of bundled set ``name`` to ``output`` (:func:`tresnet.data.bundled.write_bundled`), at
    the split and size ``checkpoint``'s run used (else the demo recipe's); ``img_size`` overrides the size.

    Raises :class:`DataError` for an unknown set, :class:`~tresnet.errors.CheckpointError` for a bad
    checkpoint, and :class:`~tresnet.errors.ConfigError` for a bad split or size.
    """
    if bundled_set(name) is None:
        raise DataError(f"no bundled data set called {name!r}: use one of {', '.join(BUNDLED_SETS)}")
    meta = read_checkpoint_metadata(checkpoint) if checkpoint is not None else {}
    val_split, split_seed = bundled_split(meta, name)
    size = img_size or bundled_img_size(meta, name)
    files = write_bundled(name, output, split=split, img_size=size, val_split=val_split, split_seed=split_seed)
    return WrittenSet(name, Path(output).expanduser(), files, split, size, val_split, split_seed)


__all__ = ["WrittenSet", "bundled_img_size", "bundled_split", "write_bundled_set"]
