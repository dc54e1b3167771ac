"""The published fine-tuning sets (``--data NAME:ROOT``) read from small copies written in each set's own on-disk
format: the splits' sizes, class names and labels, the md5 check relaxed (and only that), a one-line error for a
folder with a file missing, validation's ``--split``, and one training epoch through ``tresnet train`` on each."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torchvision.datasets as tv_datasets
import torchvision.datasets.utils as tv_dataset_utils
import yaml

from published_files import WRITERS
from tresnet.checkpoint import read_checkpoint_metadata
from tresnet.cli.main import main
from tresnet.data.published import PUBLISHED_SETS, open_published
from tresnet.data.sources import ValidationOptions, find_source, list_sources
from tresnet.errors import ConfigError, DataError
from tresnet.inference.validate import open_validation_data
from tresnet.training.config import TrainConfig, load_recipe
from tresnet.training.sections import DataSection

NAMES = sorted(WRITERS)
TRANSFER_PAGE = Path(__file__).resolve().parents[2] / "docs" / "transfer.md"


def test_every_published_set_has_a_writer_and_a_registered_source():
    assert sorted(PUBLISHED_SETS) == NAMES
    registered = {source.name for source in list_sources()}
    assert set(NAMES) <= registered


@pytest.mark.parametrize("name", NAMES)
def test_each_split_reads_its_counts_classes_and_labels(tmp_path, name):
    written = WRITERS[name](tmp_path)
    for split, labels in written.labels.items():
        dataset = open_published(f"{name}:{tmp_path}", [split])
        assert len(dataset) == len(labels), split
        assert dataset.targets == labels, split
        assert dataset.classes == written.classes
        image, target = dataset[0]
        assert image.mode == "RGB" and target == labels[0]


@pytest.mark.parametrize("name", NAMES)
def test_the_set_folder_itself_is_a_root_too(tmp_path, name):
    written = WRITERS[name](tmp_path)
    spec = PUBLISHED_SETS[name]
    dataset = open_published(f"{name}:{tmp_path / spec.folder.split('/')[0]}")
    assert dataset.targets == written.labels[spec.test_split]


@pytest.mark.parametrize("name", NAMES)
def test_a_missing_metadata_file_is_one_line_naming_it_and_where_the_set_is_published(tmp_path, name):
    written = WRITERS[name](tmp_path)
    written.a_metadata_file.unlink()
    spec = PUBLISHED_SETS[name]
    with pytest.raises(DataError) as info:
        open_published(f"{name}:{tmp_path}", spec.splits)
    message = str(info.value)
    assert str(written.a_metadata_file) in message and spec.url.split()[0] in message and "\n" not in message


@pytest.mark.parametrize("name", [name for name in NAMES if not name.startswith("cifar")])
def test_a_missing_image_is_one_line_naming_it(tmp_path, name):
    written = WRITERS[name](tmp_path)
    written.an_image.unlink()
    with pytest.raises(DataError) as info:
        open_published(f"{name}:{tmp_path}", PUBLISHED_SETS[name].splits)
    message = str(info.value)
    assert f"image {written.an_image} is missing (1 of the" in message and "\n" not in message


def test_an_empty_root_names_the_first_file_expected(tmp_path):
    with pytest.raises(DataError, match=r"CIFAR-10: file .*cifar-10-batches-py/data_batch_1 is missing; the set is "
                                        r"published at https://www.cs.toronto.edu/~kriz/cifar.html"):
        open_published(f"cifar10:{tmp_path}")
    with pytest.raises(DataError, match=r"folder .*flowers-102/jpg is missing"):
        open_published(f"flowers102:{tmp_path}")


def test_files_that_do_not_parse_are_one_line(tmp_path):
    written = WRITERS["cifar10"](tmp_path)
    written.a_metadata_file.write_bytes(b"not a pickle")
    with pytest.raises(DataError) as info:
        open_published(f"cifar10:{tmp_path}")
    assert "the test split under" in str(info.value) and "could not be read (UnpicklingError" in str(info.value)
    written = WRITERS["food101"](tmp_path / "food")
    written.a_metadata_file.write_text("{")
    with pytest.raises(DataError, match="Food-101: the train split .* could not be read"):
        open_published(f"food101:{tmp_path / 'food'}", ["train"])


def test_only_the_md5_check_is_relaxed_and_only_while_opening(tmp_path):
    WRITERS["cifar10"](tmp_path)
    with pytest.raises(RuntimeError, match="not found or corrupted"):  # torchvision's own check refuses the copy
        tv_datasets.CIFAR10(str(tmp_path), download=False)
    original = tv_dataset_utils.check_md5
    assert len(open_published(f"cifar10:{tmp_path}")) == 4
    assert tv_dataset_utils.check_md5 is original
    with pytest.raises(RuntimeError, match="not found or corrupted"):
        tv_datasets.CIFAR10(str(tmp_path), download=False)


def test_an_unknown_split_and_data_that_names_no_set(tmp_path):
    WRITERS["cifar10"](tmp_path)
    with pytest.raises(DataError, match="CIFAR-10 has no 'val' split; its splits are train, test"):
        open_published(f"cifar10:{tmp_path}", ["val"])
    with pytest.raises(DataError, match="names no published set"):
        open_published(f"cifar11:{tmp_path}")
    with pytest.raises(DataError, match="dtd is a published set without its folder: pass --data dtd:ROOT, ROOT the "
                                        "folder that holds dtd/dtd/"):
        find_source("dtd", "multiclass")


def test_a_set_held_in_an_array_survives_pickling_for_worker_processes(tmp_path):
    WRITERS["cifar100"](tmp_path)
    dataset = open_published(f"cifar100:{tmp_path}", ["train"])
    copy = pickle.loads(pickle.dumps(dataset))
    assert np.array_equal(np.asarray(copy[3][0]), np.asarray(dataset[3][0]))


def test_validation_opens_the_test_split_or_the_one_named(tmp_path):
    written = WRITERS["flowers102"](tmp_path)
    data = f"flowers102:{tmp_path}"
    assert open_validation_data(data).targets == written.labels["test"]
    assert open_validation_data(data, options=ValidationOptions(split="val")).targets == written.labels["val"]
    with pytest.raises(ConfigError, match="--split trainval does not apply to --data flowers102:.*: its splits are "
                                          "train, val, test"):
        open_validation_data(data, options=ValidationOptions(split="trainval"))
    with pytest.raises(ConfigError, match="--split val does not apply to --data .*: only a published set"):
        open_validation_data(str(tmp_path), options=ValidationOptions(split="val"))
    with pytest.raises(ConfigError, match="Oxford Flowers-102 has its own labels: drop --ground-truth"):
        open_validation_data(data, options=ValidationOptions(ground_truth="x.csv"))


def test_a_run_checks_its_options_against_the_set(tmp_path):
    source = find_source("dtd:/data", "multiclass")
    assert source.name == "dtd"
    source.check(DataSection(train="dtd:/data", val="val"))
    with pytest.raises(ConfigError, match="names the split validated on: val or test .*not 'train'"):
        source.check(DataSection(train="dtd:/data", val="train"))
    with pytest.raises(ConfigError, match="--val-data with --data cifar10:ROOT .*: test \\(default test\\)"):
        find_source("cifar10:/data", "multiclass").check(DataSection(train="cifar10:/data", val="val"))
    with pytest.raises(ConfigError, match="has its own labels: drop annotations"):
        source.check(DataSection(train="dtd:/data", annotations="a.json"))
    with pytest.raises(ConfigError, match="is multiclass data \\(dtd\\), but the task is multilabel"):
        find_source("dtd:/data", "multilabel")


QUICK = ["--model", "genet_light", "--img-size", "32", "--epochs", "1", "--batch-size", "2", "--workers", "0",
         "--threads", "1", "--no-progress"]


@pytest.mark.parametrize("name", NAMES)
def test_one_training_epoch_through_tresnet_train(tmp_path, capsys, name):
    written = WRITERS[name](tmp_path / "data")
    out = tmp_path / "run"
    assert main(["train", "--data", f"{name}:{tmp_path / 'data'}", "--output", str(out), *QUICK]) == 0
    spec = PUBLISHED_SETS[name]
    summary = json.loads((out / "summary.json").read_text())
    test, train_splits = spec.test_split, spec.train_splits(spec.test_split)
    trained = sum(len(written.labels[split]) for split in train_splits)
    assert summary["num_classes"] == len(written.classes) and summary["epochs"] == 1
    assert (f": {trained} {'+'.join(train_splits)} / {len(written.labels[test])} {test} images, "
            f"{len(written.classes)} classes at 32px") in summary["data_description"]
    assert read_checkpoint_metadata(out / "last.safetensors")["class_names"] == written.classes
    assert spec.title in capsys.readouterr().out


def test_cifar_says_its_images_are_resized_and_validation_takes_them_whole(tmp_path, capsys):
    WRITERS["cifar10"](tmp_path / "data")
    out = tmp_path / "run"
    options = [*QUICK[:2], "--img-size", "64", *QUICK[4:]]
    assert main(["train", "--data", f"cifar10:{tmp_path / 'data'}", "--output", str(out), *options]) == 0
    line = "CIFAR-10 at {}: 10 train / 4 test images, 3 classes at 64px; its 32x32 images are resized to 64x64"
    assert line.format(tmp_path / "data" / "cifar-10-batches-py") in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert "its 32x32 images are resized to 64x64" in summary["data_description"]
    assert read_checkpoint_metadata(out / "best.safetensors")["preprocessing"]["crop_mode"] == "squash"
    assert main(["validate", "--checkpoint", str(out / "best.safetensors"), "--data", f"cifar10:{tmp_path / 'data'}",
                 "--workers", "0", "--no-progress"]) == 0
    assert "4 of 4 images in 3 classes" in capsys.readouterr().out


def test_validating_on_val_trains_on_train_alone(tmp_path, capsys):
    written = WRITERS["flowers102"](tmp_path / "data")
    out = tmp_path / "run"
    assert main(["train", "--data", f"flowers102:{tmp_path / 'data'}", "--val-data", "val", "--output", str(out),
                 *QUICK]) == 0
    assert f"{len(written.labels['train'])} train / {len(written.labels['val'])} val images" in capsys.readouterr().out


def test_a_bad_folder_through_the_command_line_is_one_line(tmp_path, capsys):
    written = WRITERS["oxford-pets"](tmp_path / "data")
    written.a_metadata_file.unlink()
    code = main(["train", "--data", f"oxford-pets:{tmp_path / 'data'}", "--output", str(tmp_path / "run"), *QUICK])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and "annotations/test.txt is missing" in err
    code = main(["validate", "--model", "genet_light", "--data", f"oxford-pets:{tmp_path / 'data'}"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and "annotations/test.txt is missing" in err


@pytest.mark.parametrize(("recipe", "model", "img_size", "rows"),
                         [("transfer-224", "tresnet_xl", 224, ("cifar10", "cifar100")),
                          ("transfer-368", "tresnet_l", 368, ("stanford-cars", "flowers102"))])
def test_the_transfer_recipes_are_the_papers_rows(recipe, model, img_size, rows):
    values = load_recipe(recipe)
    assert (values["model"], values["img_size"], values["epochs"]) == (model, img_size, 80)
    assert (values["optimizer"], values["lr"], values["weight_decay"], values["warmup_epochs"], values["ema_decay"],
            values["label_smoothing"], values["random_erase"]) == ("adamw", 2e-4, 1e-4, 3, 0.995, 0.1, 0.5)
    for name in rows:
        TrainConfig.from_options({**values, "data": f"{name}:/data", "output": "out"}).validate()
    assert f"--config {recipe} --data {rows[0]}:~/data" in TRANSFER_PAGE.read_text()


def test_the_transfer_recipe_runs_on_cifar(tmp_path, capsys):
    WRITERS["cifar10"](tmp_path / "data")
    out = tmp_path / "run"
    # its augmentation on upscaled 32 px images; TResNet-M at 64 px and in fp32 to stay quick (autocast's bf16 is
    # emulated, and slow, on CPUs without AVX-512 BF16)
    assert main(["train", "--config", "transfer-224", "--model", "tresnet_m", "--data", f"cifar10:{tmp_path / 'data'}",
                 "--img-size", "64",
                 "--precision", "fp32", "--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "2",
                 "--workers", "0", "--threads", "1", "--no-progress", "--output", str(out)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("training tresnet_m") and "its 32x32 images are resized to 64x64" in line
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["augmentation"]["auto_augment"] == "autoaugment" and saved["optimisation"]["epochs"] == 1
