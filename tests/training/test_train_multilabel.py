"""Multi-label training: the configuration rules, the squash / Cutout / multi-hot mixing augmentation, and
runs on the digit mosaics, a labels CSV and a COCO file (mAP chosen as the best score, resume exact)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import tresnet
from helpers import requires_sklearn
from training.train_testdata import FAST, Killed, kill_mid_second_epoch, make_colour_mosaics
from tresnet.checkpoint import read_checkpoint_metadata
from tresnet.data.sources import random_split
from tresnet.data.train_transforms import Augmentation, BatchMix, Cutout, create_train_transform
from tresnet.errors import ConfigError, DataError
from tresnet.tasks import get_task
from tresnet.training.config import build_config, run_recipe
from tresnet.training.run_files import metric_columns
from tresnet.training.trainer import train

MULTILABEL_FAST = {**FAST, "task": "multilabel"}


pytestmark = pytest.mark.usefixtures("one_math_thread")


# --- configuration -----------------------------------------------------------------------------------


def test_the_task_decides_the_loss_and_the_data_it_takes():
    base = {"data": "d", "output": "o"}
    labels = {**base, "data": "labels.csv", "task": "multilabel"}  # a multilabel source: the labels CSV
    assert build_config(None, labels).loss.name is None  # the task's default: asl
    coco = build_config(None, {**base, "task": "multilabel", "annotations": "instances.json"})
    assert coco.loss.name is None and coco.data.annotations == "instances.json"
    with pytest.raises(DataError, match="multilabel data d needs its labels: .*--annotations FILE"):
        build_config(None, {**base, "task": "multilabel"})  # a plain folder names no labels
    with pytest.raises(ConfigError, match="loss 'ce' does not fit task 'multilabel': use one of asl, bce, focal"):
        build_config(None, {**labels, "loss": "ce"})
    with pytest.raises(ConfigError, match="loss 'asl' does not fit task 'multiclass': use one of ce"):
        build_config(None, {**base, "loss": "asl"})
    with pytest.raises(ConfigError, match=r"--data d with --annotations is multilabel data \(coco\), but the task is multiclass: "
                                          r"pass --task multilabel"):
        build_config(None, {**base, "annotations": "instances.json"})
    for name in ("classes", "val_annotations"):
        with pytest.raises(ConfigError, match=f"{name} describe multilabel data: pass --task multilabel"):
            build_config(None, {**base, name: "x.txt"})
    with pytest.raises(ConfigError, match="digits-multilabel is multilabel data.*pass --task multilabel"):
        build_config("digits-demo", {**base, "data": "digits-multilabel"})
    with pytest.raises(ConfigError, match="digits is multiclass data .* the task is multilabel: pass --task multiclass"):
        build_config(None, {**base, "data": "digits", "task": "multilabel"})
    with pytest.raises(ConfigError, match="val-annotations describes --val-data"):
        build_config(None, {**labels, "val_annotations": "v.json"})
    with pytest.raises(ConfigError, match="schedule_epochs .* at least epochs"):
        build_config(None, {**base, "epochs": 10, "schedule_epochs": 5})
    for bad in (0.0, 1.0):
        with pytest.raises(ConfigError, match="threshold must lie in"):
            build_config(None, {**base, "threshold": bad})
    with pytest.raises(ConfigError, match="asl_clip must lie in"):
        build_config(None, {**base, "asl_clip": 1.0})


def test_the_embedded_mosaics_pick_their_demo_recipe_and_the_coco_recipes_load():
    assert run_recipe(None, {"data": "digits-multilabel"}) == "digits-multilabel-demo"
    demo = build_config(None, {"data": "digits-multilabel", "output": "o"})
    assert demo.task.name == "multilabel" and demo.augmentation.train_crop_mode == "squash"
    for name in ("coco-asl", "coco-ml-decoder"):
        cfg = build_config(name, {"data": "coco/train2014", "annotations": "a.json", "output": "o"})
        assert cfg.task.name == "multilabel" and cfg.loss.name == "asl"
        assert cfg.loss.asl_gamma_neg == 4 and cfg.loss.asl_gamma_pos == 0
        assert cfg.model.img_size == 448 and cfg.augmentation.train_crop_mode == "squash"
        assert cfg.data.crop_mode == "squash" and cfg.augmentation.cutout == 0.5
        assert cfg.optimisation.optimizer == "adam" and cfg.optimisation.lr == 1e-4
        assert cfg.optimisation.ema_decay == 0.9997
    assert build_config("coco-ml-decoder", {"data": "d", "annotations": "a.json", "output": "o"}).model.head == "ml_decoder"


# --- augmentation ------------------------------------------------------------------------------------


def test_squash_keeps_the_whole_image_and_cutout_paints_one_box_of_one_colour():
    image = Image.fromarray(np.full((30, 90, 3), 200, dtype=np.uint8))
    out = create_train_transform(24, Augmentation(crop_mode="squash", hflip=0.0))(image)
    assert out.shape == (3, 24, 24) and torch.allclose(out, torch.full_like(out, 200 / 255))
    torch.manual_seed(0)
    painted = Cutout(0.5)(torch.zeros(3, 40, 40, dtype=torch.uint8))
    box = (painted != 0).any(dim=0)
    rows, cols = box.any(dim=1).nonzero().flatten(), box.any(dim=0).nonzero().flatten()
    assert 1 <= len(rows) <= 20 and 1 <= len(cols) <= 20  # half the side, clipped at the border
    assert box[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one rectangle
    colours = painted[:, box].unique(dim=1)
    assert colours.shape[1] == 1
    with pytest.raises(ConfigError, match="cutout must lie in"):
        Cutout(1.0)
    with pytest.raises(ConfigError, match="unknown training crop mode"):
        create_train_transform(24, Augmentation(crop_mode="centre"))


@pytest.mark.parametrize("mixup, cutmix", [(1.0, 0.0), (0.0, 1.0)])
def test_multi_hot_targets_are_mixed_in_the_images_proportion(mixup, cutmix):
    torch.manual_seed(0)
    images = torch.stack([torch.zeros(3, 16, 16), torch.ones(3, 16, 16)])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    mixed, soft = BatchMix(3, mixup, cutmix)(images, targets)
    share_of_second = mixed[0].mean()  # image 0 is zeros, image 1 ones: its mean is image 1's share
    assert torch.allclose(soft[0], targets[0] * (1 - share_of_second) + targets[1] * share_of_second, atol=1e-6)
    unmixed_images, unmixed = BatchMix(3, mixup, cutmix, prob=0.0)(images, targets)
    assert torch.equal(unmixed, targets) and torch.equal(unmixed_images, images)


def test_random_split_is_seeded_disjoint_and_complete():
    train_idx, val_idx = random_split(10, 0.3, seed=4)
    assert len(val_idx) == 3 and sorted(train_idx + val_idx) == list(range(10))
    assert (train_idx, val_idx) == random_split(10, 0.3, seed=4) != random_split(10, 0.3, seed=5)


# --- runs --------------------------------------------------------------------------------------------


@requires_sklearn
def test_a_run_on_the_digit_mosaics_scores_map_and_resumes_exactly(tmp_path):
    options = {**MULTILABEL_FAST, "data": "digits-multilabel", "epochs": 2, "ema_decay": 0.9, "head": "ml_decoder",
               "mixup": 0.2, "lr": 1e-3}
    straight = train(build_config(None, {**options, "output": str(tmp_path / "straight")}))
    assert 0.0 <= straight["best_map"] <= 1.0 and straight["task"] == "multilabel" and "best_top1" not in straight
    reader = csv.DictReader((tmp_path / "straight" / "metrics.csv").open())
    rows = list(reader)
    assert len(rows) == 2 and all(row["val_map"] and row["ema_map"] and row["val_cf1"] for row in rows)
    assert reader.fieldnames == list(metric_columns(get_task("multilabel")))  # the run's task's columns only
    assert "val_top1" not in reader.fieldnames and "ema_top5" not in reader.fieldnames
    meta = read_checkpoint_metadata(tmp_path / "straight" / "best.safetensors")
    assert meta["task"] == "multilabel" and meta["head"] == "ml_decoder" and meta["class_names"] == list("0123456789")
    model = tresnet.create_model(checkpoint_path=tmp_path / "straight" / "best.safetensors")
    assert model.pretrained_cfg["task"] == "multilabel" and model.pretrained_cfg["head"] == "ml_decoder"
    plot = tmp_path / "straight" / "metrics.png"  # three panels: the training ASL and the val BCE apart, then mAP
    assert not plot.exists() or Image.open(plot).size == (1400, 400)

    with pytest.raises(Killed):
        train(build_config(None, {**options, "output": str(tmp_path / "resumed")}), callback=kill_mid_second_epoch)
    resumed = train(build_config(None, {**options, "output": str(tmp_path / "resumed"), "resume": True}))
    assert resumed["best_map"] == straight["best_map"]
    for name in ("last.safetensors", "best.safetensors"):
        a, b = load_file(str(tmp_path / "straight" / name)), load_file(str(tmp_path / "resumed" / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_runs_on_a_labels_csv_and_a_coco_file_carve_a_val_split(tmp_path):
    root = make_colour_mosaics(tmp_path / "data")
    by_csv = train(build_config(None, {**MULTILABEL_FAST, "data": str(root / "labels.csv"),
                                       "output": str(tmp_path / "csv"), "loss": "focal", "val_split": 0.25}))
    by_coco = train(build_config(None, {**MULTILABEL_FAST, "data": str(root / "img"),
                                        "annotations": str(root / "instances.json"), "output": str(tmp_path / "coco"),
                                        "loss": "bce", "val_split": 0.25, "val_data": None}))
    for summary, folder in ((by_csv, "csv"), (by_coco, "coco")):
        assert summary["num_classes"] == 3 and 0.0 <= summary["best_map"] <= 1.0
        meta = read_checkpoint_metadata(tmp_path / folder / "best.safetensors")
        assert meta["class_names"] == ["red", "green", "blue"] if folder == "coco" else sorted(meta["class_names"])
    with pytest.raises(DataError, match="annotations"):
        train(build_config(None, {**MULTILABEL_FAST, "data": str(root / "img"), "output": str(tmp_path / "none")}))
