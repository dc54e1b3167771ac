"""What a public fine-tuning set costs before the model sees it: opening it (``--data NAME:ROOT``), and feeding its
images through a transfer recipe's transforms, per loader process.

    python benchmarks/transfer_data.py --json benchmarks/results/transfer_data_cpu.json

Copies are written in the sets' own formats in a temporary folder (nothing is downloaded):

- CIFAR-10 at its full size (50,000 + 10,000 images of random pixels in its python pickles): opening both splits,
  beside torchvision's md5 check of the same six files, the one check this package relaxes;
- Food-101's split lists at full size (75,750 + 25,250 images, the longest listing of the eight sets), with empty
  image files: reading the lists and checking that every listed image exists;
- feeding: CIFAR-10's 32 px images through ``transfer-224``'s training and validation transforms at 224, and JPEGs
  of 512x384 (Food-101's longest side is 512) through ``transfer-368``'s at 368, in one process with one thread:
  the images per second one loader worker delivers. A GPU run needs its training speed divided by this many
  workers (``tresnet benchmark`` measures that speed).
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.datasets.utils as tv_dataset_utils
from PIL import Image

import tresnet
from tresnet.bench.machine import cpu_flags, cpu_line
from tresnet.data.published import PUBLISHED_SETS, open_published
from tresnet.data.sources import find_source
from tresnet.files import write_text
from tresnet.tasks import get_task
from tresnet.training.config import build_config

CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000
FOOD_CLASSES, FOOD_TRAIN_PER_CLASS, FOOD_TEST_PER_CLASS = 101, 750, 250


def write_cifar10(root: Path) -> Path:
    """CIFAR-10's six pickles and its meta file at full size, random pixels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = [(f"data_batch_{i}", CIFAR_TRAIN // 5) for i in range(1, 6)] + [("test_batch", CIFAR_TEST)]
    for name, count in batches:
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": rng.integers(0, 10, count).tolist(),
                         "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                         "filenames": [f"{name}_{i}.png" for i in range(count)]}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"num_cases_per_batch": CIFAR_TRAIN // 5, "label_names": [f"class{i}" for i in range(10)],
                     "num_vis": 3072}, f, protocol=2)
    return folder


def write_food101(root: Path, jpegs: int = 0, size: tuple[int, int] = (512, 384)) -> Path:
    """Food-101's ``meta/{train,test}.json`` at full size and an empty file per listed image; with ``jpegs``, a
    one-class copy of that many photo-like JPEGs of ``size`` instead."""
    folder = root / "food-101"
    rng = np.random.default_rng(1)
    per_class = (FOOD_TRAIN_PER_CLASS, FOOD_TEST_PER_CLASS) if not jpegs else (jpegs, 1)
    classes = [f"food{c:03d}" for c in range(FOOD_CLASSES if not jpegs else 1)]
    meta = {"train": {}, "test": {}}
    number = 0
    for name in classes:
        (folder / "images" / name).mkdir(parents=True)
        for split, count in zip(("train", "test"), per_class, strict=True):
            meta[split][name] = [f"{name}/{number + i}" for i in range(count)]
            number += count
    for by_class in meta.values():
        for names in by_class.values():
            for item in names:
                path = folder / "images" / f"{item}.jpg"
                if jpegs:
                    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize(size)
                    noise = rng.normal(0, 8, (size[1], size[0], 3))
                    pixels = np.clip(np.asarray(coarse, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
                    Image.fromarray(pixels).save(path, quality=90)
                else:
                    path.touch()
    (folder / "meta").mkdir()
    for split, by_class in meta.items():
        (folder / "meta" / f"{split}.json").write_text(json.dumps(by_class))
    return folder


def seconds(run: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        out.append(time.perf_counter() - start)
    return out


def opening_rows(root: Path, repeats: int) -> list[dict]:
    """Opening CIFAR-10 and Food-101 at full size, and torchvision's md5 check of CIFAR-10's files."""
    cifar = write_cifar10(root / "cifar")
    write_food101(root / "food")
    spec = PUBLISHED_SETS["cifar10"]
    batches = [name for name, _ in torchvision.datasets.CIFAR10.train_list + torchvision.datasets.CIFAR10.test_list]
    rows = [
        dict(what="cifar10: open train + test (ours)", images=CIFAR_TRAIN + CIFAR_TEST,
             s=seconds(lambda: open_published(f"cifar10:{root / 'cifar'}", spec.splits), repeats)),
        dict(what="cifar10: md5 of its 6 batches (torchvision's check, skipped here)", images=CIFAR_TRAIN + CIFAR_TEST,
             s=seconds(lambda: [tv_dataset_utils.calculate_md5(cifar / name) for name in batches], repeats)),
        dict(what="food101: open train + test (lists + every file exists)",
             images=FOOD_CLASSES * (FOOD_TRAIN_PER_CLASS + FOOD_TEST_PER_CLASS),
             s=seconds(lambda: open_published(f"food101:{root / 'food'}", ("train", "test")), repeats)),
    ]
    for row in rows:
        row["median_s"] = statistics.median(row["s"])
        print(f"{row['what']:<62} {row['images']:>7} images  {row['median_s']:7.2f} s", flush=True)
    return rows


def transforms_of(recipe: str, data: str) -> tuple[int, Callable, Callable]:
    """The input side, the training transform and the validation transform a run of ``recipe`` on ``data`` uses."""
    cfg = build_config(recipe, {"data": data, "output": "unused"})
    pretrained_cfg = tresnet.get_pretrained_cfg(cfg.model.name)
    img_size = cfg.model.img_size
    train = get_task("multiclass").train_transform(cfg.augmentation, pretrained_cfg, img_size)
    evaluation = find_source(data, "multiclass").preprocessing(cfg.data, pretrained_cfg, img_size).transform()
    return img_size, train, evaluation


def feeding_rows(root: Path, images: int, repeats: int) -> list[dict]:
    """Images per second of one process through each recipe's transforms (decode included)."""
    write_food101(root / "jpegs", jpegs=images)
    cases = (("transfer-224", f"cifar10:{root / 'cifar'}", "CIFAR-10 32x32"),
             ("transfer-368", f"food101:{root / 'jpegs'}", "JPEG 512x384"))
    rows = []
    for recipe, data, images_of in cases:
        img_size, train, evaluation = transforms_of(recipe, data)
        for stage, transform in (("train", train), ("val", evaluation)):
            dataset = open_published(data, ["train"], transform=transform)
            count = min(images, len(dataset))
            dataset[0]  # warm-up
            runs = seconds(lambda dataset=dataset, count=count: [dataset[i] for i in range(count)], repeats)
            row = dict(recipe=recipe, images_of=images_of, img_size=img_size, stage=stage, images=count, s=runs,
                       img_per_s=count / statistics.median(runs))
            rows.append(row)
            print(f"{recipe:<13} {images_of:<15} -> {img_size} px  {stage:<5}  {row['img_per_s']:8.1f} img/s per worker",
                  flush=True)
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=128, help="images fed per measurement (default 128)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats, the median is kept (default 3)")
    parser.add_argument("--json", metavar="PATH", help="write the measurements as JSON (and a .md table beside it)")
    return parser.parse_args(argv)


def table(opening: list[dict], feeding: list[dict]) -> str:
    lines = [cpu_line(), f"torch {torch.__version__}, torchvision {torchvision.__version__}, 1 thread", "",
             "| opening | images | median s |", "|---|---|---|"]
    lines += [f"| {row['what']} | {row['images']} | {row['median_s']:.2f} |" for row in opening]
    lines += ["", "| recipe | images | input | transform | img/s per worker |", "|---|---|---|---|---|"]
    lines += [f"| {row['recipe']} | {row['images_of']} | {row['img_size']} | {row['stage']} | {row['img_per_s']:.1f} |"
              for row in feeding]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    print(cpu_line(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        opening = opening_rows(Path(tmp), args.repeats)
        feeding = feeding_rows(Path(tmp), args.images, args.repeats)
    text = table(opening, feeding)
    print(text)
    if args.json:
        report = dict(cpu=cpu_line(), cpu_flags=list(cpu_flags()), torch=torch.__version__,
                      torchvision=torchvision.__version__, threads=1, repeats=args.repeats, opening=opening,
                      feeding=feeding)
        write_text(args.json, json.dumps(report, indent=2) + "\n")
        write_text(Path(args.json).with_suffix(".md"), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
