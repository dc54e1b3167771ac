"""tresnet.data.transforms: the published preprocessing (TResNet, GENet), compared with torchvision built by
hand; the training transforms normalise as evaluation does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode, v2

from tresnet import get_pretrained_cfg
from tresnet.data.transforms import create_eval_transform, describe_eval_transform, resolve_eval_config
from tresnet.errors import ConfigError

RNG = np.random.default_rng(0)


def _image(width: int, height: int) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _reference_224(resize: int, crop: int) -> T.Compose:
    return T.Compose([T.Resize(resize, interpolation=InterpolationMode.BILINEAR, antialias=True),
                      T.CenterCrop(crop), *_TO_FLOAT])


# To float as the training transform converts (x * (1 / 255); ToTensor's x / 255 differs in the last bit), so
# that an image file and the same pixels in memory give equal tensors.
_TO_FLOAT = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (256, 256), (190, 140)])
def test_224_models_resize_256_and_centre_crop_224(size):
    img = _image(*size)
    ours = create_eval_transform(get_pretrained_cfg("tresnet_m"))(img)
    expected = _reference_224(256, 224)(img)
    assert ours.shape == (3, 224, 224) and ours.dtype == torch.float32
    assert torch.equal(ours, expected)
    assert 0.0 <= ours.min() and ours.max() <= 1.0  # no mean/std normalisation


def test_img_size_override_keeps_crop_pct():
    img = _image(120, 90)
    ours = create_eval_transform(get_pretrained_cfg("tresnet_l"), img_size=64)(img)
    assert torch.equal(ours, _reference_224(int(64 / 0.875), 64)(img))  # resize 73, crop 64


@pytest.mark.parametrize("size", [(500, 375), (300, 600)])
def test_448_models_squash_without_crop(size):
    img = _image(*size)
    ours = create_eval_transform(get_pretrained_cfg("tresnet_m_448"))(img)
    expected = T.Compose([T.Resize((448, 448), interpolation=InterpolationMode.BILINEAR, antialias=True),
                          *_TO_FLOAT])(img)
    assert ours.shape == (3, 448, 448) and torch.equal(ours, expected)


def test_matches_timm_eval_transform():
    timm_data = pytest.importorskip("timm.data")
    img = _image(333, 250)
    cfg = get_pretrained_cfg("tresnet_m")
    reference = timm_data.create_transform(224, interpolation="bilinear", crop_pct=0.875,
                                           mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert torch.allclose(create_eval_transform(cfg)(img), reference(img))


def test_mean_std_applied_when_not_identity():
    img = _image(100, 80)
    cfg = dict(get_pretrained_cfg("tresnet_m"), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    plain = _reference_224(73, 64)(img)
    normalised = create_eval_transform(cfg, img_size=64)(img)
    expected = (plain - torch.tensor(cfg["mean"])[:, None, None]) / torch.tensor(cfg["std"])[:, None, None]
    assert torch.allclose(normalised, expected, atol=1e-6)
    assert "normalised" in describe_eval_transform(cfg, 64)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "I", "F", "1"])
def test_any_mode_gives_three_channels(mode):
    img = _image(80, 60).convert("RGBA" if mode in ("LA", "RGBA") else "RGB")
    if mode in ("I;16", "I", "F"):
        img = Image.fromarray(np.full((60, 80), 1000, {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
    else:
        img = img.convert(mode)
    assert img.mode == mode
    out = create_eval_transform(get_pretrained_cfg("tresnet_m"), img_size=32)(img)
    assert out.shape == (3, 32, 32)
    if mode in ("I;16", "I"):  # 1000 / 65535 of full scale: dark, not clipped to white
        assert torch.allclose(out, torch.full_like(out, round(1000 / 257) / 255))


def test_descriptions():
    assert describe_eval_transform(get_pretrained_cfg("tresnet_m")) == \
        "resize 256 bilinear, centre crop 224x224, RGB in [0, 1]"
    assert describe_eval_transform(get_pretrained_cfg("tresnet_xl_448")) == "squash to 448x448 bilinear, RGB in [0, 1]"
    assert resolve_eval_config(get_pretrained_cfg("tresnet_m"), 320)["resize_size"] == 365


def test_bad_configurations():
    cfg = get_pretrained_cfg("tresnet_m")
    with pytest.raises(ConfigError, match="crop_mode"):
        create_eval_transform(dict(cfg, crop_mode="border"))
    with pytest.raises(ConfigError, match="interpolation"):
        create_eval_transform(dict(cfg, interpolation="area"))
    with pytest.raises(ConfigError, match="positive"):
        create_eval_transform(cfg, img_size=0)


def test_genet_normalises_with_imagenet_statistics_and_rounds_the_resize_up():
    from tresnet.data.transforms import describe_normalisation, normalisation

    genet = get_pretrained_cfg("genet_light")
    assert normalisation(genet) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert normalisation(get_pretrained_cfg("tresnet_m")) is None
    assert describe_normalisation(get_pretrained_cfg("tresnet_m")) == "RGB in [0, 1]"
    assert describe_eval_transform(genet) == ("resize 220 bilinear, centre crop 192x192, normalised with mean "
                                              "(0.485, 0.456, 0.406) std (0.229, 0.224, 0.225)")
    img = _image(100, 80)
    expected = T.Compose([_reference_224(74, 64), T.Normalize(*normalisation(genet))])(img)
    assert torch.equal(create_eval_transform(genet, img_size=64)(img), expected)


def test_training_transforms_normalise_when_given_mean_and_std():
    from tresnet.data.train_transforms import (
        Augmentation,
        create_tensor_eval_transform,
        create_train_transform,
    )

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    # no black pixel: the zeros of the unnormalised output are the erased box
    image = torch.from_numpy(np.random.default_rng(5).integers(1, 256, (3, 40, 40), dtype=np.uint8))
    plain = create_tensor_eval_transform()(image)
    normalised = create_tensor_eval_transform(mean, std)(image)
    torch.testing.assert_close(normalised, (plain - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])
    for erase in (0.0, 1.0):  # erasing comes after the normalisation: erased pixels are noise or 0 in either case
        torch.manual_seed(3)
        a = create_train_transform(32, Augmentation(random_erase=erase, random_erase_mode="const"))(image)
        torch.manual_seed(3)
        b = create_train_transform(32, Augmentation(random_erase=erase, random_erase_mode="const"), mean=mean, std=std)(image)
        kept = a != 0 if erase else torch.ones_like(a, dtype=torch.bool)
        expected = (a - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
        torch.testing.assert_close(b[kept], expected[kept])
        assert not erase or (b[~kept] == 0).all()
    with pytest.raises(ConfigError, match="both mean and std"):
        create_train_transform(32, mean=mean)


def test_preprocessing_resolves_overrides_once():
    from tresnet.data.transforms import Preprocessing
    from tresnet.models.registry import PREPROCESSING_KEYS

    cfg = get_pretrained_cfg("tresnet_m")
    plain = Preprocessing.of(cfg)
    assert (plain.img_size, plain.crop_mode, plain.resize_size, plain.source) == ((224, 224), "center", 256, "model")
    assert set(plain.to_config()) == set(PREPROCESSING_KEYS)
    squash = Preprocessing.of(cfg, img_size=32, crop_mode="squash")
    assert squash.describe() == "squash to 32x32 bilinear, RGB in [0, 1]" and squash.crop_pct == 1.0
    cropped = Preprocessing.of(get_pretrained_cfg("tresnet_m_448"), crop_pct=0.875)  # a crop fraction means a crop
    assert (cropped.crop_mode, cropped.resize_size) == ("center", 512)
    assert Preprocessing.of(cfg, interpolation="bicubic").describe().startswith("resize 256 bicubic")
    recorded = Preprocessing.of({**squash.to_config(), "preprocessing_source": "checkpoint"})
    assert recorded.describe().endswith("(recorded in the checkpoint)") and recorded.img_size == (32, 32)
    assert squash.to_dict()["resize_size"] == [32, 32] and squash.to_dict()["description"] == squash.describe()
    with pytest.raises(ConfigError, match="does not apply with --crop-mode squash"):
        Preprocessing.of(cfg, crop_pct=0.9, crop_mode="squash")
    with pytest.raises(ConfigError, match=r"--crop-pct must be in \(0, 1\]"):
        Preprocessing.of(cfg, crop_pct=1.5)
    with pytest.raises(ConfigError, match="unknown interpolation"):
        Preprocessing.of(cfg, interpolation="cubic")


def test_a_file_and_the_same_pixels_in_memory_give_equal_tensors(tmp_path):
    from torchvision.transforms import v2

    from tresnet.data.transforms import Preprocessing

    pixels = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(tmp_path / "a.png")
    for cfg in (get_pretrained_cfg("tresnet_m"), get_pretrained_cfg("genet_light")):
        preprocessing = Preprocessing.of(cfg, img_size=32, crop_mode="squash")
        from_file = preprocessing.transform()(Image.open(tmp_path / "a.png"))
        steps = [v2.ToDtype(torch.float32, scale=True)]
        if cfg["family"] == "genet":
            steps.append(v2.Normalize(list(cfg["mean"]), list(cfg["std"])))
        assert torch.equal(from_file, v2.Compose(steps)(pixels))  # what training's evaluation of digits does
