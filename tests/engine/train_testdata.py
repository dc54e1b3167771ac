"""Tiny image folders and fast settings for the training tests (import as `engine.train_testdata`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Fast settings shared by the training tests: TResNet-M at 32 px, a few steps, a few val images.
FAST = dict(model="tresnet_m", img_size=32, batch_size=4, epochs=1, max_steps_per_epoch=2, max_val_images=8,
            progress=False, workers=0, deterministic=True, seed=0)

COLOURS = ((220, 40, 40), (40, 200, 60), (50, 60, 230))


def make_image_folder(root: Path, classes: int = 3, per_class: int = 8, size: int = 40) -> Path:
    """``root/<class>/<i>.png``: noisy images whose mean colour gives the class."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-40, 40, (size, size, 3))
            pixels = np.clip(np.array(COLOURS[c % len(COLOURS)]) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def make_train_val(root: Path, classes: int = 3, train_per_class: int = 8, val_per_class: int = 2) -> Path:
    make_image_folder(root / "train", classes, train_per_class)
    make_image_folder(root / "val", classes, val_per_class)
    return root


class Killed(Exception):
    """Raised by :func:`kill_mid_second_epoch` to interrupt a run as a kill would."""


def kill_mid_second_epoch(event: str, data: dict) -> None:
    """A ``train`` callback that stops the run at the first step of its second epoch."""
    if event == "step" and data["epoch"] == 1 and data["index"] == 0:
        raise Killed
