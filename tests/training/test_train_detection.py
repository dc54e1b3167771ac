"""Training a detector: the demo recipe's run, COCO folders, an exact resume, and the options detection refuses."""

from __future__ import annotations

import csv

import pytest
import torch
from safetensors.torch import load_file

import tresnet
from helpers import requires_sklearn
from training.train_testdata import Killed, kill_mid_second_epoch, make_coco_boxes, torchrun_train
from tresnet.checkpoint import read_checkpoint_metadata
from tresnet.data.sources import ValidationOptions
from tresnet.errors import ConfigError, MissingDependencyError
from tresnet.inference.validate import validate
from tresnet.training.config import build_config
from tresnet.training.trainer import train

pytestmark = [pytest.mark.usefixtures("one_math_thread"), requires_sklearn]

# A small detector on small canvases: seconds per run on one thread.
TINY = dict(task="detection", model="genet_light", img_size=64, fpn_channels=64, batch_size=4, epochs=1,
            max_steps_per_epoch=2, max_val_images=8, progress=False, workers=0, deterministic=True, seed=0)


def _config(**options):
    return build_config(None, {**TINY, **options})


def test_a_run_on_the_bundled_canvases_writes_a_detector(tmp_path):
    summary = train(_config(data="digits-detection", output=str(tmp_path / "run")))
    out = tmp_path / "run"
    meta = read_checkpoint_metadata(out / "best.safetensors")
    assert meta["task"] == "detection" and meta["head"] == "fcos" and meta["model"] == "genet_light"
    assert meta["network"]["fpn_channels"] == 64 and meta["network"]["min_size"] == 64
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


@pytest.mark.filterwarnings("ignore::tresnet.runtime.EmulatedBf16Warning")
def test_a_bf16_run_trains_and_saves_fp32_weights(tmp_path):
    summary = train(_config(data="digits-detection", precision="bf16", output=str(tmp_path / "run")))
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert torch.isfinite(torch.tensor(float(rows[0]["train_loss"]))) and 0.0 <= summary["best_ap"] <= 1.0
    weights = load_file(str(tmp_path / "run" / "best.safetensors"))
    assert all(t.dtype == torch.float32 for t in weights.values() if t.is_floating_point())
    assert read_checkpoint_metadata(tmp_path / "run" / "best.safetensors")["precision"] == "bf16"


def test_a_run_on_a_coco_folder(tmp_path):
    images, annotations = make_coco_boxes(tmp_path / "coco")
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
    (dict(model="tresnet_m", memory_efficient=True), "--memory-efficient is for classifiers"),
])
def test_what_detection_refuses_fails_in_one_line(tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        train(_config(**{"data": "digits-detection", "output": str(tmp_path / "run"), **options}))


@pytest.mark.slow
def test_two_gloo_processes_train_a_detector_and_score_it_over_both(tmp_path):
    images, annotations = make_coco_boxes(tmp_path / "coco")
    init = tmp_path / "init.safetensors"
    tresnet.save_checkpoint(tresnet.create_model("genet_light", num_classes=2), init)  # frozen norms: from weights
    options = {**{k: v for k, v in TINY.items() if k != "deterministic"}, "data": str(images),
               "annotations": str(annotations), "val_data": str(images), "val_annotations": str(annotations),
               "batch_size": 2, "init_checkpoint": str(init), "output": str(tmp_path / "two")}
    done = torchrun_train(options)
    assert "x 2 processes" in done.stdout
    rows = list(csv.DictReader((tmp_path / "two" / "metrics.csv").open()))
    # the six validation images were scored over both processes' shares; one process scores the saved weights alike
    report = validate(
        tresnet.load_network(checkpoint_path=tmp_path / "two" / "last.safetensors"), images,
        data_options=ValidationOptions(annotations=str(annotations)), progress=False)
    assert report.facts.images == 6
    assert 100 * float(rows[-1]["val_ap"]) == pytest.approx(report.stats["ap"], abs=1.0)


def test_without_pycocotools_a_detection_run_fails_before_it_trains(tmp_path, monkeypatch):
    import tresnet.tasks.detection_metrics as metrics

    def missing():
        raise MissingDependencyError("scoring detections needs pycocotools: pip install 'tresnet[detection]'")

    monkeypatch.setattr(metrics, "_pycocotools", missing)
    with pytest.raises(MissingDependencyError, match="pycocotools"):
        train(_config(data="digits-detection", output=str(tmp_path / "run")))
    assert not (tmp_path / "run" / "resume.pt").exists()
