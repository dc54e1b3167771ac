"""Tiny image folders and fast settings for the training tests (import as `engine.train_testdata`)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
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


def make_colour_mosaics(root: Path, count: int = 12) -> Path:
    """Multilabel data in ``root``: ``img/<i>.png`` with 1-2 coloured squares, labelled with the colours they
    show, as a labels CSV (``labels.csv``) and a COCO json (``instances.json``)."""
    rng = np.random.default_rng(0)
    colours = {"red": (230, 30, 30), "green": (30, 200, 40), "blue": (40, 50, 230)}
    rows, images, annotations = [], [], []
    (root / "img").mkdir(parents=True)
    for i in range(count):
        present = sorted(rng.choice(list(colours), size=1 + i % 2, replace=False).tolist())
        pixels = np.zeros((40, 40, 3), dtype=np.uint8)
        for j, name in enumerate(present):
            pixels[5:20, 5 + 18 * j:20 + 18 * j] = colours[name]
        Image.fromarray(pixels).save(root / "img" / f"{i}.png")
        rows.append((f"img/{i}.png", " ".join(present)))
        images.append({"id": 100 + i, "file_name": f"{i}.png"})
        annotations += [{"id": len(annotations), "image_id": 100 + i, "category_id": 7 + list(colours).index(n)}
                        for n in present]
    with (root / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("file", "labels"), *rows])
    categories = [{"id": 7 + i, "name": name} for i, name in enumerate(colours)]
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                     "categories": categories}))
    return root


def torchrun_train(options: dict, processes: int = 2) -> subprocess.CompletedProcess:
    """``tresnet train`` under ``torchrun --standalone`` with ``options`` as flags (True: ``--x``, False:
    ``--no-x``), one math thread per process; the finished process, after asserting that it succeeded."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            "-m", "tresnet", "train"]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [f"--no-{flag[2:]}"] if value is False else [flag, str(value)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def make_coco_boxes(root: Path) -> tuple[Path, Path]:
    """Detection data in ``root``: six 64x64 images of coloured squares with their boxes in a COCO json (category
    ids 3 and 7: gapped), the last image without boxes; the images folder and the json."""
    rng = np.random.default_rng(0)
    images, annotations = [], []
    (root / "img").mkdir(parents=True)
    for index in range(6):
        pixels = rng.integers(0, 60, (64, 64, 3), dtype=np.uint8)
        for k in range(0 if index == 5 else 2):
            x, y, side = 4 + 28 * k, int(rng.integers(4, 30)), 20
            pixels[y:y + side, x:x + side] = (230, 40, 40) if k == 0 else (40, 230, 40)
            annotations.append({"id": len(annotations) + 1, "image_id": 100 + index, "category_id": 3 if k == 0 else 7,
                                "bbox": [x, y, side, side], "area": side * side, "iscrowd": 0})
        Image.fromarray(pixels).save(root / "img" / f"{index}.png")
        images.append({"id": 100 + index, "file_name": f"{index}.png", "width": 64, "height": 64})
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 3, "name": "red"}, {"id": 7, "name": "green"}]}))
    return root / "img", path


def weight_distance(a: dict, b: dict, keys: list[str]) -> float:
    """The Euclidean distance between the tensors ``keys`` of two state dicts, taken as one vector."""
    return sum(((a[k].double() - b[k].double()) ** 2).sum() for k in keys).sqrt().item()
