"""Small copies of the published fine-tuning sets, written in each set's own on-disk format (CIFAR's python
pickles, Flowers' and Cars' MATLAB files written with scipy, the split lists, json and folder layouts), with what
reading them must give: the classes, the size of each split and its first labels."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass
class Written:
    """What a written set holds: its class names, each split's labels in the set's order, and the files one can
    delete to break it (the first a metadata file, the second an image)."""

    classes: list[str]
    labels: dict[str, list[int]]
    a_metadata_file: Path
    an_image: Path | None


def _jpeg(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=80)


def _pickle(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(value, f, protocol=2)  # the sets were pickled by Python 2, protocol 2


def _labels(count: int, classes: int, shift: int) -> list[int]:
    return [(i * 7 + shift) % classes for i in range(count)]


def write_cifar10(root: Path) -> Written:
    """``cifar-10-batches-py/``: five training batches, the test batch and ``batches.meta``."""
    folder, classes = root / "cifar-10-batches-py", ["airplane", "automobile", "bird"]
    labels = {"train": _labels(10, 3, 0), "test": _labels(4, 3, 1)}
    rng = np.random.default_rng(0)
    for i in range(5):
        part = labels["train"][2 * i:2 * i + 2]
        _pickle(folder / f"data_batch_{i + 1}", {"batch_label": f"training batch {i + 1} of 5", "labels": part,
                                                 "data": rng.integers(0, 256, (2, 3072), dtype=np.uint8),
                                                 "filenames": [f"img_{i}_{j}.png" for j in range(2)]})
    _pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": labels["test"],
                                    "data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                                    "filenames": [f"test_{j}.png" for j in range(4)]})
    _pickle(folder / "batches.meta", {"num_cases_per_batch": 2, "label_names": classes, "num_vis": 3072})
    return Written(classes, labels, folder / "batches.meta", None)


def write_cifar100(root: Path) -> Written:
    """``cifar-100-python/``: ``train``, ``test`` and ``meta``, fine and coarse labels."""
    folder, classes = root / "cifar-100-python", ["apple", "aquarium_fish", "baby", "bear"]
    labels = {"train": _labels(8, 4, 0), "test": _labels(4, 4, 3)}
    rng = np.random.default_rng(1)
    for split, fine in labels.items():
        _pickle(folder / split, {"filenames": [f"{split}_{j}.png" for j in range(len(fine))], "batch_label": split,
                                 "fine_labels": fine, "coarse_labels": [f // 2 for f in fine],
                                 "data": rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8)})
    _pickle(folder / "meta", {"fine_label_names": classes, "coarse_label_names": ["fruit", "people"]})
    return Written(classes, labels, folder / "meta", None)


def write_flowers102(root: Path) -> Written:
    """``flowers-102/``: ``jpg/image_NNNNN.jpg``, ``imagelabels.mat`` (1-based labels of all images) and
    ``setid.mat`` (``trnid``, ``valid``, ``tstid``: 1-based image ids)."""
    from scipy.io import savemat

    folder = root / "flowers-102"
    all_labels = [1, 2, 3, 1, 2, 3, 3, 2, 1, 1, 2, 3]  # 1-based, of images 1..12
    ids = {"trnid": [1, 2, 3, 4], "valid": [5, 6, 7], "tstid": [12, 8, 9, 10, 11]}
    for image_id in range(1, len(all_labels) + 1):
        _jpeg(folder / "jpg" / f"image_{image_id:05d}.jpg", image_id)
    savemat(folder / "imagelabels.mat", {"labels": np.array([all_labels], dtype=np.uint8)})
    savemat(folder / "setid.mat", {key: np.array([value], dtype=np.uint16) for key, value in ids.items()})
    split_ids = {"train": ids["trnid"], "val": ids["valid"], "test": ids["tstid"]}
    labels = {split: [all_labels[i - 1] - 1 for i in image_ids] for split, image_ids in split_ids.items()}
    from torchvision.datasets import Flowers102
    return Written(list(Flowers102.classes), labels, folder / "setid.mat", folder / "jpg" / "image_00012.jpg")


def _cars_annotations(fnames: list[str], classes: list[int]) -> np.ndarray:
    fields = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    rows = np.zeros((1, len(fnames)), dtype=fields)
    for i, (fname, label) in enumerate(zip(fnames, classes, strict=True)):
        rows[0, i] = (np.uint8(1), np.uint8(2), np.uint16(30), np.uint16(20), np.uint8(label), fname)
    return rows


def write_stanford_cars(root: Path) -> Written:
    """``stanford_cars/``: ``devkit/cars_meta.mat`` (``class_names``), ``devkit/cars_train_annos.mat`` and
    ``cars_test_annos_withlabels.mat`` (``annotations``: bbox, 1-based ``class``, ``fname``), ``cars_train/``,
    ``cars_test/``."""
    from scipy.io import savemat

    folder = root / "stanford_cars"
    classes = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]
    labels = {"train": [2, 0, 1, 0, 1, 2], "test": [1, 2, 0]}
    (folder / "devkit").mkdir(parents=True)
    savemat(folder / "devkit" / "cars_meta.mat", {"class_names": np.array([classes], dtype=object)})
    for split, annos in (("train", folder / "devkit" / "cars_train_annos.mat"),
                         ("test", folder / "cars_test_annos_withlabels.mat")):
        fnames = [f"{i + 1:05d}.jpg" for i in range(len(labels[split]))]
        for i, fname in enumerate(fnames):
            _jpeg(folder / f"cars_{split}" / fname, 100 + i + 10 * (split == "test"))
        savemat(annos, {"annotations": _cars_annotations(fnames, [label + 1 for label in labels[split]])})
    return Written(classes, labels, folder / "devkit" / "cars_meta.mat", folder / "cars_test" / "00002.jpg")


def write_oxford_pets(root: Path) -> Written:
    """``oxford-iiit-pet/``: ``images/Breed_N.jpg``, ``annotations/trainval.txt`` and ``test.txt`` (``image class-id
    species-id breed-id``, 1-based; cats capitalised, dogs not)."""
    folder = root / "oxford-iiit-pet"
    breeds = [("Abyssinian", 1), ("american_bulldog", 2), ("Bengal", 1)]
    lists = {"trainval": [(0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (2, 2)], "test": [(2, 3), (0, 3), (1, 3)]}
    for split, items in lists.items():
        lines = []
        for breed, number in items:
            name, species = breeds[breed]
            _jpeg(folder / "images" / f"{name}_{number}.jpg", 200 + 10 * breed + number)
            lines.append(f"{name}_{number} {breed + 1} {species} {number}")
        (folder / "annotations").mkdir(parents=True, exist_ok=True)
        (folder / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    classes = ["Abyssinian", "American Bulldog", "Bengal"]
    labels = {split: [breed for breed, _ in items] for split, items in lists.items()}
    return Written(classes, labels, folder / "annotations" / "test.txt", folder / "images" / "Bengal_3.jpg")


def write_fgvc_aircraft(root: Path) -> Written:
    """``fgvc-aircraft-2013b/data/``: ``variants.txt``, ``images_variant_{train,val,test}.txt`` (``id variant``,
    variants with spaces) and ``images/ID.jpg``."""
    data = root / "fgvc-aircraft-2013b" / "data"
    classes = ["707-320", "A300B4", "Cessna 172"]
    labels = {"train": [0, 1, 2, 2], "val": [1, 0, 2], "test": [2, 1, 0]}
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(classes) + "\n")
    number = 1000000
    for split, split_labels in labels.items():
        lines = []
        for label in split_labels:
            number += 1
            _jpeg(data / "images" / f"{number}.jpg", number)
            lines.append(f"{number} {classes[label]}")
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    return Written(classes, labels, data / "variants.txt", data / "images" / f"{number}.jpg")


def write_food101(root: Path) -> Written:
    """``food-101/``: ``meta/{train,test}.json`` (class -> ``class/id`` list), ``meta/classes.txt`` and
    ``images/class/id.jpg``."""
    folder = root / "food-101"
    classes = ["apple_pie", "baby_back_ribs", "baklava"]
    meta = {"train": {"apple_pie": ["apple_pie/101", "apple_pie/102"], "baby_back_ribs": ["baby_back_ribs/201"],
                      "baklava": ["baklava/301", "baklava/302"]},
            "test": {"apple_pie": ["apple_pie/103"], "baby_back_ribs": ["baby_back_ribs/202"],
                     "baklava": ["baklava/303"]}}
    (folder / "meta").mkdir(parents=True)
    for split, by_class in meta.items():
        (folder / "meta" / f"{split}.json").write_text(json.dumps(by_class))
        for names in by_class.values():
            for name in names:
                _jpeg(folder / "images" / f"{name}.jpg", int(name.rsplit("/", 1)[1]))
    (folder / "meta" / "classes.txt").write_text("\n".join(classes) + "\n")
    labels = {split: [classes.index(name) for name, items in by_class.items() for _ in items]
              for split, by_class in meta.items()}
    return Written(classes, labels, folder / "meta" / "train.json", folder / "images" / "baklava" / "303.jpg")


def write_dtd(root: Path) -> Written:
    """``dtd/dtd/``: ``images/class/class_NNNN.jpg`` and ``labels/{train,val,test}1.txt`` (``class/file``)."""
    folder = root / "dtd" / "dtd"
    classes = ["banded", "blotchy", "braided"]
    lists = {"train": [0, 1, 2, 0], "val": [2, 1, 0], "test": [1, 0, 2]}
    (folder / "labels").mkdir(parents=True)
    number = 0
    for split, split_labels in lists.items():
        lines = []
        for label in split_labels:
            number += 1
            name = f"{classes[label]}/{classes[label]}_{number:04d}.jpg"
            _jpeg(folder / "images" / name, 400 + number)
            lines.append(name)
        (folder / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")
    return Written(classes, lists, folder / "labels" / "val1.txt",
                   folder / "images" / "braided" / f"braided_{number:04d}.jpg")


WRITERS: dict[str, Callable[[Path], Written]] = {
    "cifar10": write_cifar10, "cifar100": write_cifar100, "flowers102": write_flowers102,
    "stanford-cars": write_stanford_cars, "oxford-pets": write_oxford_pets, "fgvc-aircraft": write_fgvc_aircraft,
    "food101": write_food101, "dtd": write_dtd,
}
