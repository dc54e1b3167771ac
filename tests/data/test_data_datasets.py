"""tresnet.data.datasets and tresnet.data.loader: ImageNet-style folders, unreadable files, loaders."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset
from torchvision.datasets import ImageFolder

from tresnet.data import ImageFolderDataset, UnreadableImageWarning, class_labels, create_loader
from tresnet.data.class_names import imagenet_class_names
from tresnet.data.datasets import ImageBatch, UnreadableImage
from tresnet.errors import ConfigError, DataError
from tresnet.tasks import get_task

RNG = np.random.default_rng(0)


def _write_image(path, fmt="PNG", size=(20, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, fmt)


def _good_folder(root, classes=("cat", "dog", "emu"), per_class=3):
    for name in classes:
        for index in range(per_class):
            _write_image(root / name / f"{index}.png")
    return root


def _add_broken_files(root):
    (root / "cat" / "text.jpg").write_text("not an image")
    (root / "dog" / "empty.jpg").write_bytes(b"")
    _write_image(root / "emu" / "cut.jpg", "JPEG", size=(64, 64))
    data = (root / "emu" / "cut.jpg").read_bytes()
    (root / "emu" / "cut.jpg").write_bytes(data[: len(data) // 2])
    return {str(root / "cat" / "text.jpg"), str(root / "dog" / "empty.jpg"), str(root / "emu" / "cut.jpg")}


def _to_tensor(img):
    return torch.from_numpy(np.array(img.resize((8, 8)))).permute(2, 0, 1).float() / 255


def test_classes_and_samples_match_torchvision(tmp_path):
    root = _good_folder(tmp_path / "val")
    (root / "dog" / "README.txt").write_text("ignored: not an image extension")
    _write_image(root / "emu" / "nested" / "deep.jpg", "JPEG")
    ours, reference = ImageFolderDataset(root), ImageFolder(str(root))
    assert ours.classes == reference.classes == ["cat", "dog", "emu"]
    assert ours.class_to_idx == reference.class_to_idx
    assert ours.samples == reference.samples
    image, target = ours[0]
    assert image.mode == "RGB" and target == 0


def test_hidden_folders_are_not_classes_and_empty_classes_keep_their_index(tmp_path):
    root = _good_folder(tmp_path / "val", classes=("a", "c"))
    _write_image(root / ".ipynb_checkpoints" / "x.png")
    (root / "b").mkdir()
    dataset = ImageFolderDataset(root)
    assert dataset.classes == ["a", "b", "c"]
    assert sorted({target for _, target in dataset.samples}) == [0, 2]


@pytest.mark.parametrize("setup, message", [
    (lambda root: None, "does not exist"),
    (lambda root: root.write_text("x"), "is a file"),
    (lambda root: root.mkdir(), "is empty"),
    (lambda root: _write_image(root / "loose.jpg", "JPEG"), "no class sub-folders (1 image files"),
    (lambda root: (root / "cat").mkdir(parents=True), "no image files in the 1 class folders"),
])
def test_bad_folders(tmp_path, setup, message):
    root = tmp_path / "val"
    setup(root)
    with pytest.raises(DataError) as info:
        ImageFolderDataset(root)
    assert message in str(info.value) and str(root) in str(info.value)


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_files_are_skipped_warned_once_and_counted(tmp_path, workers):
    root = _good_folder(tmp_path / "val")
    broken = _add_broken_files(root)
    dataset = ImageFolderDataset(root, transform=_to_tensor)
    loader = create_loader(dataset, batch_size=4, workers=workers, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = sum(len(targets) for _, targets in loader)
        images_again = sum(len(targets) for _, targets in loader)  # a second epoch warns no more
    assert images == images_again == 9
    assert dataset.skipped == 3 and dataset.skipped_files == broken
    messages = [str(w.message) for w in caught if issubclass(w.category, UnreadableImageWarning)]
    assert len(messages) == 3 and all(m.endswith("; skipped") for m in messages)


@pytest.mark.parametrize("workers", [0, 1])
def test_strict_makes_an_unreadable_file_a_one_line_error(tmp_path, workers):
    root = _good_folder(tmp_path / "val")
    (root / "cat" / "text.jpg").write_text("not an image")
    dataset = ImageFolderDataset(root, transform=_to_tensor, strict=True)
    with pytest.raises(DataError) as info:
        for _ in create_loader(dataset, batch_size=4, workers=workers, device="cpu"):
            pass
    assert "text.jpg" in str(info.value) and "strict" in str(info.value) and "\n" not in str(info.value)


def test_batch_of_only_unreadable_files_is_empty_and_counted(tmp_path):
    root = tmp_path / "val"
    _write_image(root / "a" / "good.png")
    (root / "b").mkdir()
    for index in range(3):
        (root / "b" / f"bad{index}.jpg").write_text("nope")
    dataset = ImageFolderDataset(root, transform=_to_tensor)
    with pytest.warns(UnreadableImageWarning):
        batches = list(create_loader(dataset, batch_size=1, workers=0, device="cpu"))
    assert [len(targets) for _, targets in batches] == [1, 0, 0, 0]
    assert [len(batch.skipped) for batch in batches] == [0, 1, 1, 1] and dataset.skipped == 3


def test_subset_still_reports(tmp_path):
    root = _good_folder(tmp_path / "val")
    _add_broken_files(root)
    dataset = ImageFolderDataset(root, transform=_to_tensor)
    with pytest.warns(UnreadableImageWarning):
        list(create_loader(Subset(dataset, range(len(dataset))), batch_size=5, workers=0, device="cpu"))
    assert dataset.skipped == 3


def test_image_batch_unpacks_and_pickles():
    batch = ImageBatch(torch.zeros(2, 3), torch.tensor([1, 2]), [UnreadableImage("x.jpg", "bad")])
    images, targets = batch
    assert images.shape == (2, 3) and targets.tolist() == [1, 2]
    copy = pickle.loads(pickle.dumps(batch))
    assert torch.equal(copy[1], targets) and copy.skipped == batch.skipped


def test_create_loader_options(tmp_path):
    dataset = ImageFolderDataset(_good_folder(tmp_path / "val"), transform=_to_tensor)
    loader = create_loader(dataset, batch_size=2, workers=0, device="cpu", drop_last=True)
    assert not loader.pin_memory and not loader.persistent_workers and len(loader) == 4
    with_workers = create_loader(dataset, batch_size=2, workers=1, device="cpu", shuffle=True)
    assert with_workers.persistent_workers
    with pytest.raises(ConfigError, match="sampler"):
        create_loader(dataset, 2, 0, "cpu", shuffle=True, sampler=torch.utils.data.SequentialSampler(dataset))
    with pytest.raises(ConfigError, match="batch size"):
        create_loader(dataset, 0, 0, "cpu")
    with pytest.raises(ConfigError, match="workers"):
        create_loader(dataset, 1, -1, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pinned_memory_on_cuda(tmp_path):
    dataset = ImageFolderDataset(_good_folder(tmp_path / "val"), transform=_to_tensor)
    batch = next(iter(create_loader(dataset, batch_size=2, workers=0, device="cuda")))
    assert batch[0].is_pinned() and isinstance(batch, ImageBatch)


def test_class_labels():
    names = imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[999] == "toilet tissue"
    defaults, synsets = get_task("multiclass").default_labels(1000)  # the task gives an ImageNet model's names
    assert class_labels(1000, defaults=defaults)[1] == "goldfish" and synsets[1] == "n01443537"
    assert class_labels(1000)[1] == "1"  # no defaults: indices
    assert class_labels(3, ["a", "b", "c"]) == ["a", "b", "c"]
    assert class_labels(3, ["a", "b", "c"], defaults=["x", "y", "z"]) == ["a", "b", "c"]  # the names come first
    assert class_labels(3) == ["0", "1", "2"]
    assert class_labels(3, ["a", "b"]) == ["0", "1", "2"]  # names that do not fit are not used
    assert class_labels(3, ["a", "b"], defaults=["x", "y", "z"]) == ["x", "y", "z"]
    assert class_labels(3, defaults=defaults) == ["0", "1", "2"]  # defaults that do not fit neither
