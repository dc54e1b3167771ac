"""The training loop on tiny data: every shipped recipe runs, resume is exact, bad input fails clearly."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from safetensors.torch import load_file

import tresnet
from helpers import max_rel_diff, requires_sklearn
from training.train_testdata import FAST, Killed, kill_mid_second_epoch, make_image_folder, make_train_val
from tresnet.checkpoint import read_checkpoint_metadata
from tresnet.errors import CheckpointError, ConfigError, DataError
from tresnet.tasks import get_task
from tresnet.training.config import build_config, load_recipe
from tresnet.training.run_files import metric_columns
from tresnet.training.trainer import TrainingDivergedError, train

RECIPES = ["imagenet-paper", "imagenet-timm", "finetune", "highres-448",
           pytest.param("digits-demo", marks=requires_sklearn)]


pytestmark = pytest.mark.usefixtures("one_math_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_train_val(tmp_path_factory.mktemp("data"))


def _config(recipe=None, **options):
    return build_config(recipe, {**FAST, **options})


def _weights(path):
    return load_file(str(path))


@pytest.mark.parametrize("recipe", RECIPES)
def test_each_recipe_runs_a_few_steps(recipe, folder, tmp_path):
    data = "digits" if recipe == "digits-demo" else str(folder)
    cfg = _config(recipe, data=data, output=str(tmp_path / "run"))
    summary = train(cfg)
    out = tmp_path / "run"
    for name in ("config.yaml", "last.safetensors", "best.safetensors", "resume.pt", "metrics.csv",
                 "summary.json", "metrics.png"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    saved = json.loads((out / "summary.json").read_text())
    assert saved["epochs"] == 1 and 0.0 <= saved["best_top1"] <= 1.0 and saved["best_epoch"] == 1
    assert saved["images_per_s"] > 0 and saved["seconds"] > 0 and summary["best_top1"] == saved["best_top1"]
    meta = read_checkpoint_metadata(out / "best.safetensors")
    classes = [str(d) for d in range(10)] if recipe == "digits-demo" else ["class_0", "class_1", "class_2"]
    assert meta["class_names"] == classes and meta["arch"] == "tresnet_m" and meta["model"] == "tresnet_m"
    precision = load_recipe(recipe).get("precision", "fp32")
    assert meta["precision"] == precision and saved["precision"] == precision
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == 1 and math.isfinite(float(rows[0]["train_loss"]))
    assert list(rows[0]) == list(metric_columns(get_task("multiclass")))  # no empty multilabel columns
    assert rows[0]["val_top1"] and "val_map" not in rows[0]


def test_resume_after_a_kill_ends_with_the_same_weights(folder, tmp_path):
    # Drop path, mixup and EMA use randomness: they must replay identically after the resume.
    options = dict(data=str(folder), epochs=2, drop_path=0.1, mixup=0.2, ema_decay=0.9, lr=1e-3)
    straight = train(_config(output=str(tmp_path / "straight"), **options))

    with pytest.raises(Killed):
        train(_config(output=str(tmp_path / "killed"), **options), callback=kill_mid_second_epoch)
    # resumed with a worker process: augmentation is tied to (seed, epoch, sample), not to who loads it
    resumed = train(_config(output=str(tmp_path / "killed"), resume=True, **{**options, "workers": 1}))
    for name in ("last.safetensors", "best.safetensors"):
        a, b = _weights(tmp_path / "straight" / name), _weights(tmp_path / "killed" / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    ema_a = torch.load(tmp_path / "straight" / "resume.pt", weights_only=True)["ema"]["module"]
    ema_b = torch.load(tmp_path / "killed" / "resume.pt", weights_only=True)["ema"]["module"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert resumed["best_top1"] == straight["best_top1"] and resumed["epochs"] == 2
    rows = list(csv.DictReader((tmp_path / "killed" / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]


@pytest.mark.filterwarnings("ignore::tresnet.runtime.EmulatedBf16Warning")  # an AVX2-only CPU: slow, still exact
def test_resume_under_bf16_autocast_ends_with_the_same_weights(folder, tmp_path):
    # GENet-light: the smallest network; bf16 is emulated (slow) on many CI CPUs
    options = dict(data=str(folder), epochs=2, precision="bf16", drop_path=0.1, lr=1e-3, model="genet_light")
    train(_config(output=str(tmp_path / "straight"), **options))
    with pytest.raises(Killed):
        train(_config(output=str(tmp_path / "killed"), **options), callback=kill_mid_second_epoch)
    train(_config(output=str(tmp_path / "killed"), resume=True, **options))
    a, b = _weights(tmp_path / "straight" / "last.safetensors"), _weights(tmp_path / "killed" / "last.safetensors")
    assert all(t.dtype == torch.float32 for t in a.values() if t.is_floating_point())  # autocast: fp32 weights
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_checkpoint_metadata(tmp_path / "killed" / "last.safetensors")["precision"] == "bf16"


def test_memory_efficient_training_follows_the_plain_run_and_is_refused_where_it_does_not_apply(folder, tmp_path):
    options = dict(data=str(folder), lr=0.1, optimizer="sgd")  # AdamW would turn rounding-sized gradients into lr steps
    train(_config(output=str(tmp_path / "plain"), **options))
    train(_config(output=str(tmp_path / "lean"), memory_efficient=True, **options))
    a, b = _weights(tmp_path / "plain" / "last.safetensors"), _weights(tmp_path / "lean" / "last.safetensors")
    assert a.keys() == b.keys()
    floats = [name for name, value in a.items() if value.is_floating_point()]
    # the same steps to fp32 rounding; not bit-identical, as the lean tails sum in another order (so they ran)
    assert all(max_rel_diff(b[name], a[name]) < 2e-4 for name in floats)
    assert not all(torch.equal(b[name], a[name]) for name in floats)
    assert "memory_efficient: true" in (tmp_path / "lean" / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="memory_efficient"):
        train(_config(output=str(tmp_path / "genet"), model="genet_light", memory_efficient=True, **options))
    with pytest.raises(ConfigError, match="memory_efficient needs the in-place ABN norms"):
        train(_config(output=str(tmp_path / "bn"), norm="bn", memory_efficient=True, **options))


def test_resume_killed_before_the_first_epoch_ended(folder, tmp_path):
    options = dict(data=str(folder), output=str(tmp_path / "run"))

    def kill(event, data):
        if event == "step":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_config(**options), callback=kill)
    assert not (tmp_path / "run" / "resume.pt").exists()
    train(_config(resume=True, **options))
    assert (tmp_path / "run" / "resume.pt").is_file()
    with pytest.raises(ConfigError, match="already holds a run"):
        train(_config(**options))
    changed = _config(resume=True, **options)
    changed.optimisation.lr = 0.5  # a configuration built without build_config is checked against the saved one too
    with pytest.raises(ConfigError, match=r"settings differ: lr \(saved 0.001, given 0.5\)"):
        train(changed)


def test_nan_loss_stops_and_keeps_the_last_good_epoch(folder, tmp_path):
    def poison(event, data):
        if event == "step" and data["epoch"] == 1:
            with torch.no_grad():
                data["model"].head.fc.weight.fill_(float("nan"))

    cfg = _config(data=str(folder), output=str(tmp_path / "run"), epochs=2, log_interval=1)
    with pytest.raises(TrainingDivergedError, match="loss became nan in epoch 2.*epoch 1"):
        train(cfg, callback=poison)
    kept = _weights(tmp_path / "run" / "last.safetensors")
    assert all(torch.isfinite(v).all() for v in kept.values() if v.is_floating_point())
    assert torch.load(tmp_path / "run" / "resume.pt", weights_only=True)["epoch"] == 1


def test_transfer_from_a_checkpoint_gets_a_new_head(folder, tmp_path):
    source = tresnet.create_model("tresnet_m", num_classes=7)
    tresnet.save_checkpoint(source, tmp_path / "src.safetensors")
    cfg = _config(data=str(folder), output=str(tmp_path / "run"), init_checkpoint=str(tmp_path / "src.safetensors"),
                  lr=1e-12, optimizer="sgd", schedule="constant", max_steps_per_epoch=1)
    train(cfg)
    trained = _weights(tmp_path / "run" / "last.safetensors")
    assert trained["head.fc.weight"].shape == (3, source.num_features)
    original = source.state_dict()
    torch.testing.assert_close(trained["body.conv1.conv.weight"], original["body.conv1.conv.weight"])


def test_bad_inputs_fail_with_our_errors(folder, tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "a.png").write_bytes((folder / "train" / "class_0" / "0.png").read_bytes())
    with pytest.raises(DataError, match="no class sub-folders"):
        train(_config(data=str(loose), output=str(tmp_path / "a")))
    with pytest.raises(DataError, match="does not exist"):
        train(_config(data=str(tmp_path / "missing"), output=str(tmp_path / "b")))
    other = tresnet.create_model("tresnet_v2_l", num_classes=3)
    tresnet.save_checkpoint(other, tmp_path / "v2.safetensors")
    with pytest.raises(CheckpointError, match="tresnet_v2_l"):
        train(_config(data=str(folder), output=str(tmp_path / "c"), init_checkpoint=str(tmp_path / "v2.safetensors")))
    with pytest.raises(ConfigError, match="larger than"):
        train(_config(data=str(folder), output=str(tmp_path / "d"), batch_size=64))
    mismatch = make_image_folder(tmp_path / "mismatch" / "train", classes=2)
    make_image_folder(mismatch.parent / "val", classes=3)
    with pytest.raises(DataError, match="different classes"):
        train(_config(data=str(mismatch.parent), output=str(tmp_path / "e")))


def test_carved_val_split_channels_last_and_clipping(tmp_path):
    data = make_image_folder(tmp_path / "flat", classes=2, per_class=6)
    summary = train(_config(data=str(data), output=str(tmp_path / "run"), val_split=0.34, max_val_images=None,
                            channels_last=True, clip_grad=1.0))
    assert summary["num_classes"] == 2
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert len(rows) == 1
