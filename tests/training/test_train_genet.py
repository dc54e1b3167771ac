"""Training a GENet: the family's norm, the model's input normalisation in training and validation,
recipes in the family's form, and the options written for TResNet (EMA, mixup, drop path, channels-last,
bf16, resume, transfer) on a GENet."""

from __future__ import annotations

import csv

import pytest
import torch
import yaml
from safetensors.torch import load_file

import tresnet
from helpers import requires_sklearn
from training.train_testdata import FAST, Killed, kill_mid_second_epoch, make_train_val
from tresnet.checkpoint import read_checkpoint_metadata
from tresnet.data.transforms import Preprocessing
from tresnet.inference.validate import validate
from tresnet.training.config import build_config, load_recipe
from tresnet.training.trainer import train

GENET = {**FAST, "model": "genet_light"}
IMAGENET_MEAN = torch.tensor((0.485, 0.456, 0.406))[:, None, None]
IMAGENET_STD = torch.tensor((0.229, 0.224, 0.225))[:, None, None]


pytestmark = pytest.mark.usefixtures("one_math_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_train_val(tmp_path_factory.mktemp("data"))


def _config(recipe=None, **options):
    return build_config(recipe, {**GENET, **options})


def _metrics_row(run) -> dict:
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 1
    return rows[0]


class _InputRecorder:
    """From the first step on, the smallest and largest input the model sees, in training and in eval."""

    def __init__(self) -> None:
        self.seen = {True: [], False: []}
        self.hooked = False

    def __call__(self, event, data) -> None:
        if event == "step" and not self.hooked:
            data["model"].register_forward_pre_hook(self._record)
            self.hooked = True

    def _record(self, module, args) -> None:
        x = args[0].float()
        self.seen[module.training].append((x.min().item(), x.max().item()))


def test_the_training_and_validation_inputs_are_normalised_as_the_model_says(folder, tmp_path):
    recorders = {}
    for model in ("genet_light", "tresnet_m"):
        recorders[model] = _InputRecorder()
        train(_config(model=model, data=str(folder), output=str(tmp_path / model)), callback=recorders[model])
    genet, tres = recorders["genet_light"].seen, recorders["tresnet_m"].seen
    assert genet[True] and genet[False] and tres[True] and tres[False]
    # saturated colours normalised with ImageNet's mean/std reach below 0 and above 1; TResNet's stay in [0, 1]
    for training in (True, False):
        assert min(lo for lo, _ in genet[training]) < -1.0 and max(hi for _, hi in genet[training]) > 1.5
        assert all(0.0 <= lo and hi <= 1.0 for lo, hi in tres[training])
    saved = yaml.safe_load((tmp_path / "genet_light" / "config.yaml").read_text())["model"]
    assert saved["norm"] == "bn" and saved["name"] == "genet_light"
    assert yaml.safe_load((tmp_path / "tresnet_m" / "config.yaml").read_text())["model"]["norm"] == "inplace_abn"


def test_validation_during_training_agrees_with_validate_afterwards(folder, tmp_path):
    summary = train(_config(data=str(folder), output=str(tmp_path / "run"), max_val_images=None, epochs=1))
    checkpoint = tmp_path / "run" / "last.safetensors"
    meta = read_checkpoint_metadata(checkpoint)
    assert meta["model"] == "genet_light" and meta["family"] == "genet" and meta["norm"] == "bn"
    model = tresnet.create_model(checkpoint_path=checkpoint)  # no model name needed
    report = validate(model, folder / "val", preprocessing=Preprocessing.of(model, img_size=32), device="cpu", progress=False)
    row = _metrics_row(tmp_path / "run")
    assert report.facts.images == 6 and report.top1 / 100 == pytest.approx(float(row["val_top1"]))
    assert report.facts.loss == pytest.approx(float(row["val_loss"]), rel=1e-5)
    assert report.to_dict()["top1"] == report.top1 and report.to_dict()["images"] == 6
    assert summary["best_weights"] in ("model", "ema")


@requires_sklearn
def test_digits_are_normalised_for_genet_and_left_in_0_1_for_tresnet():
    from tresnet.data.digits import DigitsDataset
    from tresnet.training.distributed import SeededSamples
    from tresnet.training.run_data import build_train_data

    data = {}
    for model in ("genet_light", "tresnet_m"):
        cfg = build_config(None, {"data": "digits", "output": "o", "model": model})
        data[model] = build_train_data(cfg.data, cfg.task.name, cfg.augmentation, tresnet.get_pretrained_cfg(model), 32)
    genet, tres = data["genet_light"], data["tresnet_m"]
    raw = DigitsDataset("val", 32, None, val_fraction=0.2)
    for i in (0, 17):
        torch.testing.assert_close(tres.val[i][0].as_subclass(torch.Tensor), raw[i][0])  # TResNet: as they are
        torch.testing.assert_close(genet.val[i][0], (raw[i][0] - IMAGENET_MEAN) / IMAGENET_STD)
        seeded = SeededSamples(genet.train)[(i, 42)][0], SeededSamples(tres.train)[(i, 42)][0]
        torch.testing.assert_close(seeded[0], (seeded[1] - IMAGENET_MEAN) / IMAGENET_STD)


def test_ema_mixup_drop_path_and_channels_last_resume_bit_exactly(folder, tmp_path):
    options = dict(data=str(folder), epochs=2, drop_path=0.1, mixup=0.2, ema_decay=0.9, lr=1e-3,
                   channels_last=True, random_erase=0.5)
    train(_config(output=str(tmp_path / "straight"), **options))

    with pytest.raises(Killed):
        train(_config(output=str(tmp_path / "killed"), **options), callback=kill_mid_second_epoch)
    train(_config(output=str(tmp_path / "killed"), resume=True, **options))
    for name in ("last.safetensors", "best.safetensors"):
        a, b = load_file(str(tmp_path / "straight" / name)), load_file(str(tmp_path / "killed" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_bf16_and_transfer_from_a_timm_layout_file(folder, tmp_path):
    source = tresnet.create_model("genet_light", num_classes=7)
    torch.save(source.state_dict(), tmp_path / "gernet_s.pth")  # our names are timm's: a timm-layout file
    summary = train(_config(data=str(folder), output=str(tmp_path / "run"), precision="bf16", clip_grad=1.0,
                            init_checkpoint=str(tmp_path / "gernet_s.pth"), lr=1e-12, optimizer="sgd",
                            schedule="constant", max_steps_per_epoch=1))
    assert summary["precision"] == "bf16" and summary["num_classes"] == 3
    trained = load_file(str(tmp_path / "run" / "last.safetensors"))
    assert trained["head.fc.weight"].shape == (3, source.num_features)
    torch.testing.assert_close(trained["stem.conv.weight"], source.state_dict()["stem.conv.weight"])


def test_finetune_names_the_genet_form_of_the_recipe(folder, tmp_path):
    cfg = _config("finetune", data=str(folder), output=str(tmp_path / "run"))
    assert cfg == _config("finetune-genet", data=str(folder), output=str(tmp_path / "run"))
    assert cfg.model.img_size == FAST["img_size"] and "img_size" not in load_recipe("finetune-genet")
    tresnet_cfg = build_config("finetune", {**FAST, "data": str(folder), "output": "o"})
    assert tresnet_cfg.optimisation.lr == load_recipe("finetune")["lr"]
    summary = train(cfg)
    assert summary["model"] == "genet_light" and summary["epochs"] == 1
