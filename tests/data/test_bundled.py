"""The bundled sets as validation data and as files: the split training draws, written losslessly."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import requires_sklearn
from tresnet.cli.main import main
from tresnet.data.bundled import BUNDLED_SETS, BundledValidationSet, write_bundled
from tresnet.data.datasets import ImageFolderDataset
from tresnet.data.digits import DigitsDataset
from tresnet.data.multilabel import MultiLabelDataset
from tresnet.data.transforms import Preprocessing
from tresnet.errors import DataError
from tresnet.models.registry import get_pretrained_cfg


@requires_sklearn
def test_written_digits_are_the_validation_split_pixel_for_pixel(tmp_path):
    files = write_bundled("digits", tmp_path, img_size=16, val_split=0.2, split_seed=0)
    val = DigitsDataset("val", 16, None, 0.2, 0)
    assert len(files) == len(val) == 359
    assert sorted(p.name for p in tmp_path.iterdir()) == [str(d) for d in range(10)]
    first = files[0]
    assert first.parent.name == str(val.targets[0])
    pixels = torch.from_numpy(np.array(Image.open(first))).permute(2, 0, 1)
    assert torch.equal(pixels, (val[0][0] * 255).round().to(torch.uint8))


@requires_sklearn
def test_written_mosaics_come_with_their_labels(tmp_path):
    files = write_bundled("digits-multilabel", tmp_path, img_size=16, val_split=0.1, split_seed=0)
    rows = list(csv.reader((tmp_path / "labels.csv").open()))
    assert rows[0] == ["file", "labels"] and len(rows) == 1001 and len(files) == 1001
    assert all(label in "0123456789" for _, labels in rows[1:] for label in labels.split())


@requires_sklearn
def test_the_validation_set_is_drawn_at_the_preprocessing_size():
    data = BundledValidationSet("digits")
    with pytest.raises(DataError, match="call prepare"):
        len(data)
    cfg = get_pretrained_cfg("tresnet_m")
    data.prepare(Preprocessing.of(cfg, img_size=32, crop_mode="squash"), val_split=0.2)
    assert len(data) == 359 and data[0][0].shape == (3, 32, 32)
    data.prepare(Preprocessing.of(cfg, img_size=32), val_split=0.2)  # a centre crop: drawn at 36, cropped
    assert data[0][0].shape == (3, 32, 32)
    data.map_classes({str(d): 9 - d for d in range(10)})
    assert data[0][1] == 9 - DigitsDataset("val", 32, None, 0.2, 0).targets[0]
    with pytest.raises(DataError, match="no bundled data set called 'cifar'"):
        BundledValidationSet("cifar")


def test_each_kind_of_data_declares_the_tasks_its_targets_serve():
    digits, mosaics = BUNDLED_SETS["digits"], BUNDLED_SETS["digits-multilabel"]
    assert (digits.task, digits.one_class_per_image) == ("multiclass", True)
    assert (mosaics.task, mosaics.one_class_per_image) == ("multilabel", False)
    assert BundledValidationSet("digits").tasks == ("multiclass",)
    assert BundledValidationSet("digits-multilabel").tasks == ("multilabel",)
    assert ImageFolderDataset.tasks == ("multiclass",) and MultiLabelDataset.tasks == ("multilabel",)


@requires_sklearn
def test_tresnet_data_fails_in_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["data", "digits", "--output", str(blocker / "sub")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tresnet data: error: cannot write ") and "not a directory" in err[0]
    assert main(["data", "digits", "--output", str(tmp_path / "d"), "--img-size", "4"]) == 1
    assert "at least 8" in capsys.readouterr().err
