"""Training augmentation (torchvision ``transforms.v2``): random resized crop (or a squash of the whole
image, for multi-label data where a crop may cut a labelled object away), flip, AutoAugment or
RandAugment, ASL's Cutout, random erasing, and mixup / cutmix on whole batches (class indices or
multi-hot targets).

Outputs are RGB in [0, 1], normalised with the ``mean`` / ``std`` given (a model's
:func:`~tresnet.data.transforms.normalisation`): none for TResNet (the official release,
Alibaba-MIIL/TResNet, and timm's ``tresnet`` configurations: mean 0, std 1), ImageNet's for GENet; so
training sees the pixels that evaluation feeds the model. Inputs may be PIL images or ``uint8`` tensors
``(3, H, W)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchvision.transforms import InterpolationMode, v2

from tresnet.data.transforms import INTERPOLATIONS, to_float_steps
from tresnet.errors import ConfigError

# The evaluation interpolations but lanczos, which torchvision's augmentations of tensors cannot use.
TRAIN_INTERPOLATIONS = {name: mode for name, mode in INTERPOLATIONS.items() if name != "lanczos"}
# Their rotations and shears know nearest and bilinear only: other modes use bilinear there.
_AUGMENT_MODES = (InterpolationMode.NEAREST, InterpolationMode.BILINEAR)


class Cutout(torch.nn.Module):
    """Cutout as the ASL training script applies it (Alibaba-MIIL/ASL, ``CutoutPIL``): on every image, a box
    of ``fraction`` x the height and width, centred at a uniformly drawn pixel and clipped at the border,
    filled with one uniformly drawn colour. Works on ``uint8`` image tensors ``(3, H, W)``."""

    def __init__(self, fraction: float = 0.5) -> None:
        super().__init__()
        if not 0.0 < fraction < 1.0:
            raise ConfigError(f"cutout must lie in (0, 1), got {fraction}")
        self.fraction = fraction

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        box_h, box_w = int(self.fraction * height + 0.5), int(self.fraction * width + 0.5)
        y, x = int(torch.randint(height, ())), int(torch.randint(width, ()))
        top, bottom = max(0, y - box_h // 2), min(height, y + box_h // 2)
        left, right = max(0, x - box_w // 2), min(width, x + box_w // 2)
        colour = torch.randint(256, (image.shape[0], 1, 1), dtype=torch.int64).to(image.dtype)
        image = image.clone()
        image[..., top:bottom, left:right] = colour
        return image


def _resize_step(img_size: int, crop_mode: str, scale, ratio, mode) -> v2.Transform:
    if crop_mode == "squash":
        return v2.Resize((img_size, img_size), interpolation=mode, antialias=True)
    if crop_mode == "random":
        return v2.RandomResizedCrop(img_size, scale=scale, ratio=ratio, interpolation=mode, antialias=True)
    raise ConfigError(f"unknown training crop mode {crop_mode!r}; use random or squash")


TRAIN_CROP_MODES = ("random", "squash")
AUTO_AUGMENTS = ("autoaugment", "randaugment")
ERASE_MODES = ("pixel", "const")  # random erasing fills with per-pixel noise or zeros


@dataclass(frozen=True)
class Augmentation:
    """The per-image training augmentation: the crop (``crop_mode`` ``"random"``: a random resized crop over
    ``scale`` and ``ratio``; ``"squash"``: the whole image resized to the square, as the ASL and ML-Decoder
    recipes), the horizontal flip probability, an automatic policy (``auto_augment``: None, ``"autoaugment"``,
    the ImageNet policy, or ``"randaugment"`` with its ``randaugment_ops`` and ``randaugment_magnitude``),
    random erasing (``random_erase`` probability; boxes of standard-normal noise in ``"pixel"`` mode, zeros in
    ``"const"`` mode) and ASL's ``cutout`` (the box's fraction of the side; 0: off)."""

    crop_mode: str = "random"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    auto_augment: str | None = None
    randaugment_magnitude: int = 9
    randaugment_ops: int = 2
    random_erase: float = 0.0
    random_erase_mode: str = "pixel"
    cutout: float = 0.0


def _policy_step(augmentation: Augmentation, mode: InterpolationMode) -> list:
    augment_mode = mode if mode in _AUGMENT_MODES else InterpolationMode.BILINEAR
    if augmentation.auto_augment == "autoaugment":
        return [v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=augment_mode)]
    if augmentation.auto_augment == "randaugment":
        return [v2.RandAugment(num_ops=augmentation.randaugment_ops, magnitude=augmentation.randaugment_magnitude,
                               interpolation=augment_mode)]
    if augmentation.auto_augment is not None:
        raise ConfigError(f"unknown auto_augment {augmentation.auto_augment!r}; use autoaugment, randaugment or none")
    return []


def create_train_transform(img_size: int, augmentation: Augmentation | None = None, *,
                           interpolation: str = "bilinear", mean: tuple[float, ...] | None = None,
                           std: tuple[float, ...] | None = None) -> v2.Compose:
    """The training transform: image -> float tensor ``(3, img_size, img_size)`` in [0, 1] with the
    ``augmentation`` (:class:`Augmentation`; None: its defaults), then ``(x - mean) / std`` when ``mean`` and
    ``std`` are given (erasing comes after it, as timm's). Cutout comes after the resize (before RandAugment, in
    the ASL script's order). Raises :class:`ConfigError` for an unknown crop mode, policy, erase mode or
    interpolation.
    """
    augmentation = augmentation or Augmentation()
    if interpolation not in TRAIN_INTERPOLATIONS:
        raise ConfigError(f"unknown interpolation {interpolation!r}; use one of {', '.join(TRAIN_INTERPOLATIONS)}")
    mode = TRAIN_INTERPOLATIONS[interpolation]
    steps: list = [v2.ToImage(), _resize_step(img_size, augmentation.crop_mode, augmentation.scale,
                                              augmentation.ratio, mode)]
    if augmentation.cutout > 0:
        steps.append(Cutout(augmentation.cutout))
    if augmentation.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(augmentation.hflip))
    steps += _policy_step(augmentation, mode)
    steps += to_float_steps(mean, std)
    if augmentation.random_erase > 0:
        if augmentation.random_erase_mode not in ERASE_MODES:
            raise ConfigError(f"unknown random_erase_mode {augmentation.random_erase_mode!r}; use pixel or const")
        steps.append(v2.RandomErasing(p=augmentation.random_erase,
                                      value="random" if augmentation.random_erase_mode == "pixel" else 0.0))
    return v2.Compose(steps)


def create_tensor_eval_transform(mean: tuple[float, ...] | None = None,
                                 std: tuple[float, ...] | None = None) -> v2.Compose:
    """For images already at their final size as ``uint8`` tensors (the digits): to float in [0, 1],
    then normalised when ``mean`` and ``std`` are given (as :func:`create_train_transform`)."""
    return v2.Compose(to_float_steps(mean, std))


def _mix_multi_hot(images: torch.Tensor, targets: torch.Tensor, alpha: float,
                   cut: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (``cut=False``) or cutmix of a batch with its images rolled by one, multi-hot targets mixed
    in the same proportion (the share of the pixels for cutmix)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    rolled = images.roll(1, dims=0)
    if not cut:
        return images * lam + rolled * (1 - lam), targets * lam + targets.roll(1, dims=0) * (1 - lam)
    height, width = images.shape[-2:]
    box_h, box_w = int(height * (1 - lam) ** 0.5), int(width * (1 - lam) ** 0.5)
    y, x = int(torch.randint(height, ())), int(torch.randint(width, ()))
    top, bottom = max(0, y - box_h // 2), min(height, y + box_h // 2)
    left, right = max(0, x - box_w // 2), min(width, x + box_w // 2)
    images = images.clone()
    images[..., top:bottom, left:right] = rolled[..., top:bottom, left:right]
    kept = 1.0 - (bottom - top) * (right - left) / (height * width)
    return images, targets * kept + targets.roll(1, dims=0) * (1 - kept)


class BatchMix:
    """Mixup and/or cutmix on a batch: ``(images, labels) -> (images, soft targets)``.

    A batch is mixed with probability ``prob``, by mixup or cutmix (one of the two at random when both
    alphas are positive); unmixed batches get one-hot targets, so every batch has the same target type.
    ``labels`` are class indices (torchvision's MixUp / CutMix) or float multi-hot targets ``(N, C)``
    (multi-label), which are mixed in the images' proportion.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 prob: float = 1.0) -> None:
        self.num_classes = num_classes
        self.prob = prob
        self.alphas = [("mixup", mixup_alpha)] * (mixup_alpha > 0) + [("cutmix", cutmix_alpha)] * (cutmix_alpha > 0)
        self.mixers = []
        if mixup_alpha > 0:
            self.mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            self.mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        if not self.mixers:
            raise ConfigError("BatchMix needs a positive mixup or cutmix alpha")

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        multi_hot = labels.is_floating_point()
        if torch.rand(()).item() >= self.prob:
            return images, labels if multi_hot else torch.nn.functional.one_hot(labels, self.num_classes).to(images.dtype)
        choice = int(torch.randint(len(self.mixers), ()).item())
        if multi_hot:
            kind, alpha = self.alphas[choice]
            return _mix_multi_hot(images, labels.to(images.dtype), alpha, cut=kind == "cutmix")
        return self.mixers[choice](images, labels)


def create_batch_mix(num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                     prob: float = 1.0) -> Callable | None:
    """A :class:`BatchMix`, or None when both alphas are 0."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return None
    return BatchMix(num_classes, mixup_alpha, cutmix_alpha, prob)


__all__ = ["AUTO_AUGMENTS", "ERASE_MODES", "TRAIN_CROP_MODES", "Augmentation", "TRAIN_INTERPOLATIONS", "BatchMix", "Cutout", "create_batch_mix", "create_tensor_eval_transform",
           "create_train_transform"]
