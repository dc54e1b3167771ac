"""Training a detector: the demo recipe's run, COCO folders, an exact resume, and the options detection refuses."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import tresnet
from helpers import requires_sklearn
from training.train_testdata import Killed, kill_mid_second_epoch
from tresnet.checkpoint import read_checkpoint_metadata
from tresnet.errors import ConfigError
from tresnet.training.config import build_config
from tresnet.training.trainer import train

pytestmark = [pytest.mark.usefixtures("one_math_thread"), requires_sklearn]

# A small detector on small canvases: seconds per run on one thread.
TINY = dict(task="detection", model="genet_light", img_size=64, fpn_channels=32, batch_size=4, epochs=1,
            max_steps_per_epoch=2, max_val_images=8, progress=False, workers=0, deterministic=True, seed=0)


def _config(**options):
    return build_config(None, {**TINY, **options})


def test_a_run_on_the_bundled_canvases_writes_a_detector(tmp_path):
    summary = train(_config(data="digits-detection", output=str(tmp_path / "run")))
    out = tmp_path / "run"
    meta = read_checkpoint_metadata(out / "best.safetensors")
    assert meta["task"] == "detection" and meta["head"] == "fcos" and meta["model"] == "genet_light"
    assert meta["network"]["fpn_channels"] == 32 and meta["network"]["min_size"] == 64
    assert meta["class_names"] == [str(d) for d in range(10)]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert "val_ap" in rows[0] and "val_ap50" in rows[0] and "val_top1" not in rows[0]
    assert rows[0]["val_loss"] in ("", "nan")  # torchvision's detectors give no loss in eval mode
    assert 0.0 <= summary["best_ap"] <= 1.0 and (out / "metrics.png").is_file()
    detector = tresnet.load_network(checkpoint_path=out / "best.safetensors")
    assert type(detector).__name__ == "FCOS" and detector.num_classes == 10


def test_resume_after_a_kill_ends_with_the_same_weights(tmp_path):
    options = dict(data="digits-detection", epochs=2, ema_decay=0.9, scale_jitter=(0.8, 1.2))
    straight = train(_config(output=str(tmp_path / "straight"), **options))
    with pytest.raises(Killed):
        train(_config(output=str(tmp_path / "killed"), **options), callback=kill_mid_second_epoch)
    resumed = train(_config(output=str(tmp_path / "killed"), resume=True, **options))
    for name in ("last.safetensors", "best.safetensors"):
        a, b = load_file(str(tmp_path / "straight" / name)), load_file(str(tmp_path / "killed" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert resumed["best_ap"] == straight["best_ap"] and resumed["epochs"] == 2


def _coco_folder(root: Path) -> tuple[Path, Path]:
    """Six 64x64 images of coloured squares with their boxes, category ids 3 and 7 (gapped), one without boxes."""
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


def test_a_run_on_a_coco_folder(tmp_path):
    images, annotations = _coco_folder(tmp_path / "coco")
    train(_config(data=str(images), annotations=str(annotations), val_split=0.34, batch_size=2,
                  output=str(tmp_path / "run")))
    meta = read_checkpoint_metadata(tmp_path / "run" / "best.safetensors")
    assert meta["class_names"] == ["red", "green"] and meta["num_classes"] == 2


@pytest.mark.parametrize(("options", "message"), [
    (dict(distill="kd", teacher="tresnet_m"), "--distill does not apply to --task detection"),
    (dict(mixup=0.2), "mixup and cutmix mix class targets"),
    (dict(head="ml_decoder"), "does not fit task 'detection'"),
    (dict(auto_augment="randaugment"), "augmentation of classification"),
    (dict(task="multiclass", data="digits"), "applies to --task detection, not multiclass"),
    (dict(task="multiclass", data="digits", fpn_channels=256, scale_jitter=(0.5, 1.5)), "moves boxes"),
    (dict(data="digits"), "is multiclass data"),
])
def test_what_detection_refuses_fails_in_one_line(tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        train(_config(**{"data": "digits-detection", "output": str(tmp_path / "run"), **options}))
