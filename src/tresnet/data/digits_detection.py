"""``digits-detection``: an object-detection demo built from scikit-learn's bundled digits, no download needed.

Each image is a square canvas with a textured background (smooth low-frequency colour noise, fine noise and a
few faint lines) on which 0 to ``max_digits`` digits are drawn in bright ink: every digit is one of the 8x8
source digits upscaled to a random side in ``digit_sizes`` and pasted fully inside the canvas. A digit's
box is the tight box of its ink (XYXY in pixels, ``x2``/``y2`` exclusive edges) and its label the digit
0..9; digits overlap little (box IoU at most 0.3, neither box mostly inside the other) and a few canvases
hold none (negatives). Train and val canvases are drawn from disjoint source digits: the stratified split
of :class:`~tresnet.data.digits.DigitsDataset` (:func:`tresnet.data.splits.stratified_split` with the same
``val_fraction`` and ``split_seed``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision import tv_tensors

from tresnet.data.digits import DIGITS_CLASSES, load_digits_images
from tresnet.data.splits import check_split, stratified_split
from tresnet.errors import ConfigError

DIGITS_DETECTION = "digits-detection"
DIGITS_CATEGORY_IDS = tuple(range(1, len(DIGITS_CLASSES) + 1))  # COCO ids: class "0" is 1 ... "9" is 10
DEFAULT_NUM_IMAGES = {"train": 3000, "val": 500}
MIN_DIGIT_SIZE = 8  # the source digits are 8x8: a smaller digit would shrink them
MAX_OVERLAP_IOU = 0.3
MAX_COVERED_FRACTION = 0.5  # nor may the overlap cover more than half of either box
PLACEMENT_TRIES = 8  # places tried for a digit before it is dropped
INK_THRESHOLD = 0.1  # fainter resized ink is cut, so the tight box holds every drawn pixel of the digit
_CHUNK = 64  # canvases textured at once (small buffers the allocator reuses); changing it redraws the textures
_TEXTURE_GRIDS = ((2, 0.25), (4, 0.15), (8, 0.08))  # (cells per side, amplitude) of the smooth noise layers
_FINE_NOISE = 0.03
_LINES, _LINE_STRENGTH = 2, 0.12  # up to two faint straight lines per canvas, as distractors
_SPLIT_STREAM = {"train": 0, "val": 1}  # train and val draw from different random streams
_LAYOUT, _TEXTURE = 0, 1  # the layout and the texture each draw from their own stream


class _Layout(NamedTuple):
    """Every drawn digit of a split, by canvas then paste order (``A`` digits in all)."""

    canvas: torch.Tensor  # (A,) int64: the canvas it is on
    sources: torch.Tensor  # (A,) int64: index into the 1,797 source digits
    labels: torch.Tensor  # (A,) int64: the digit 0..9
    boxes: torch.Tensor  # (A, 4) float32: tight ink box on the canvas, XYXY
    corners: torch.Tensor  # (A, 2) int64: x, y of the pasted square's top-left pixel
    alphas: torch.Tensor  # (A, M, M) uint8: ink intensity of the pasted square, in the top-left corner
    inks: torch.Tensor  # (A, 3) float32: ink colour in [0, 1]
    counts: torch.Tensor  # (N,) int64: digits per canvas


def _canvas_seed(split: str, split_seed: int, stream: int) -> int:
    return 4 * split_seed + 2 * stream + _SPLIT_STREAM[split]


def default_digit_sizes(img_size: int) -> tuple[int, int]:
    """The smallest and largest digit side (pixels, inclusive) drawn on an ``img_size`` canvas when none
    are given: about an eighth to three eighths of the canvas (16..48 at 128), never under 8."""
    return max(MIN_DIGIT_SIZE, img_size // 8), img_size * 3 // 8


def _check_arguments(split: str, img_size: int, num_images: int, val_fraction: float,
                     digit_sizes: tuple[int, int] | None, max_digits: int, empty_fraction: float) -> tuple[int, int]:
    """The digit sizes to draw; raises :class:`ConfigError` naming the first bad argument and its fix."""
    check_split(split, val_fraction, "digits detection")
    if num_images < 1:
        raise ConfigError(f"digits detection num_images must be 1 or more, got {num_images}")
    if max_digits < 1:
        raise ConfigError(f"digits detection max_digits must be 1 or more, got {max_digits}")
    if not 0.0 <= empty_fraction <= 1.0:
        raise ConfigError(f"digits detection empty_fraction must lie in [0, 1], got {empty_fraction}")
    if digit_sizes is None:
        low, high = default_digit_sizes(img_size)
        if high < MIN_DIGIT_SIZE:
            raise ConfigError(f"digits detection img_size {img_size} is too small for digits of at least "
                              f"{MIN_DIGIT_SIZE}px: use an img_size of at least {-(-MIN_DIGIT_SIZE * 8 // 3)}")
        return low, high
    low, high = digit_sizes if len(digit_sizes) == 2 else (0, 0)
    if not (isinstance(low, int) and isinstance(high, int) and MIN_DIGIT_SIZE <= low <= high):
        raise ConfigError(f"digits detection digit_sizes must be (smallest, largest) with "
                          f"{MIN_DIGIT_SIZE} <= smallest <= largest, got {digit_sizes}")
    if high > img_size:
        raise ConfigError(f"digits of up to {high}px do not fit a {img_size}px canvas: use an img_size of at "
                          f"least {high} or smaller digit_sizes")
    return low, high


def _resize_digits(sources: torch.Tensor, sizes: torch.Tensor, side: int) -> torch.Tensor:
    """The 8x8 source digits ``(A, 8, 8)`` float in [0, 1] upscaled to their ``sizes`` (bilinear, faint ink
    cut), as ``uint8`` intensity in the top-left corner of ``side`` x ``side`` squares."""
    alphas = torch.zeros(len(sources), side, side, dtype=torch.uint8)
    for size in sizes.unique().tolist():
        which = torch.nonzero(sizes == size).flatten()
        resized = F.interpolate(sources[which, None], size=(size, size), mode="bilinear", align_corners=False)
        resized = resized[:, 0].clamp(0, 1)
        resized = torch.where(resized > INK_THRESHOLD, resized, torch.zeros(()))
        alphas[which, :size, :size] = (resized * 255).round().to(torch.uint8)
    return alphas


def _ink_boxes(alphas: torch.Tensor) -> torch.Tensor:
    """The tight XYXY box ``(A, 4)`` float32 of the ink of every square, relative to its top-left corner."""
    side = alphas.shape[-1]
    ink = alphas > 0

    def span(line: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return line.byte().argmax(1), side - line.flip(1).byte().argmax(1)

    x1, x2 = span(ink.any(1))
    y1, y2 = span(ink.any(2))
    return torch.stack([x1, y1, x2, y2], dim=1).float()


def _clashes(box: torch.Tensor, earlier: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per canvas ``(N,)``: whether ``box`` ``(N, 4)`` overlaps a valid ``earlier`` box ``(N, k, 4)`` too much."""
    top_left = torch.maximum(box[:, None, :2], earlier[..., :2])
    bottom_right = torch.minimum(box[:, None, 2:], earlier[..., 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    area = (box[:, 2:] - box[:, :2]).prod(-1)[:, None]
    area_earlier = (earlier[..., 2:] - earlier[..., :2]).prod(-1)
    iou = inter / (area + area_earlier - inter).clamp(min=1)
    covered = inter > MAX_COVERED_FRACTION * torch.minimum(area, area_earlier)
    return (((iou > MAX_OVERLAP_IOU) | covered) & valid).any(1)


def _place(ink_boxes: torch.Tensor, sizes: torch.Tensor, active: torch.Tensor, img_size: int,
           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each active digit slot ``(N, K)`` goes: ``(placed (N, K), corners (N, K, 2), boxes (N, K, 4))``.

    Slots are placed in order; a slot tries ``PLACEMENT_TRIES`` random places fully inside the canvas and
    takes the first whose ink box does not clash with the boxes placed before it, else it is dropped.
    """
    num_images, slots = sizes.shape
    spans = (img_size - sizes + 1)[..., None, None]
    tries = (torch.rand(num_images, slots, PLACEMENT_TRIES, 2, generator=generator) * spans).long()
    placed = torch.zeros(num_images, slots, dtype=torch.bool)
    corners = torch.zeros(num_images, slots, 2, dtype=torch.long)
    boxes = torch.zeros(num_images, slots, 4)
    for slot in range(slots):
        for attempt in range(PLACEMENT_TRIES):
            corner = tries[:, slot, attempt]
            box = ink_boxes[:, slot] + corner.repeat(1, 2)
            take = active[:, slot] & ~placed[:, slot] & ~_clashes(box, boxes[:, :slot], placed[:, :slot])
            placed[take, slot] = True
            corners[take, slot] = corner[take]
            boxes[take, slot] = box[take]
    return placed, corners, boxes


def _ink_colours(count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` bright random colours ``(count, 3)``: every channel at least 0.45, the brightest at 1."""
    colours = 0.45 + 0.55 * torch.rand(count, 3, generator=generator)
    return colours / colours.amax(dim=1, keepdim=True)


def _draw_layout(split: str, img_size: int, num_images: int, val_fraction: float, split_seed: int,
                 digit_sizes: tuple[int, int], max_digits: int, empty_fraction: float) -> _Layout:
    """Which digit goes where on every canvas, at what size and in what ink (arguments already checked)."""
    digits, labels = load_digits_images(MIN_DIGIT_SIZE)
    train, val = stratified_split(labels, val_fraction, split_seed)
    pool = torch.tensor(train if split == "train" else val)
    generator = torch.Generator().manual_seed(_canvas_seed(split, split_seed, _LAYOUT))
    shape = (num_images, max_digits)
    counts = torch.randint(1, max_digits + 1, (num_images,), generator=generator)
    counts[torch.rand(num_images, generator=generator) < empty_fraction] = 0
    sources = pool[torch.randint(0, len(pool), shape, generator=generator)]
    sizes = torch.randint(digit_sizes[0], digit_sizes[1] + 1, shape, generator=generator)
    active = torch.arange(max_digits) < counts[:, None]
    alphas = _resize_digits(digits[sources[active], 0].float() / 255, sizes[active], digit_sizes[1])
    has_ink = (alphas > 0).flatten(1).any(1)
    slot_alpha = torch.full(shape, -1, dtype=torch.long)
    slot_alpha[active] = torch.arange(len(alphas))
    active[active.clone()] = has_ink  # a digit without ink has no box: never drawn
    ink_boxes = torch.zeros(*shape, 4)
    ink_boxes[active] = _ink_boxes(alphas[slot_alpha[active]])
    placed, corners, boxes = _place(ink_boxes, sizes, active, img_size, generator)
    inks = _ink_colours(int(placed.sum()), generator)
    canvas = torch.arange(num_images)[:, None].expand(shape)
    return _Layout(canvas[placed], sources[placed], labels[sources[placed]], boxes[placed], corners[placed],
                   alphas[slot_alpha[placed]], inks, placed.sum(1))


def _smooth_basis(side: int) -> torch.Tensor:
    """The bilinear upsampling matrices of every texture grid side by side, each scaled by its amplitude:
    ``basis @ block_diag(grids) @ basis.T`` is the sum of the upsampled grids (two matmuls, not resamplings)."""
    blocks = [amplitude * F.interpolate(torch.eye(cells)[None], size=side, mode="linear", align_corners=False)[0].T
              for cells, amplitude in _TEXTURE_GRIDS]
    return torch.cat(blocks, dim=1)


def _lines(count: int, side: int, generator: torch.Generator) -> torch.Tensor:
    """Up to ``_LINES`` faint anti-aliased straight lines per canvas as grey intensity ``(count, 1, side, side)``."""
    coords = torch.arange(side, dtype=torch.float32)
    lines = torch.zeros(count, 1, side, side)
    for _ in range(_LINES):
        point = torch.rand(count, 2, 1, 1, generator=generator) * side
        angle = torch.rand(count, 1, 1, generator=generator) * torch.pi
        strength = torch.rand(count, 1, 1, generator=generator) * _LINE_STRENGTH
        present = torch.rand(count, generator=generator) < 0.5
        point, angle = point[present], angle[present]
        distance = ((coords[None, None, :] - point[:, 0]) * angle.sin()
                    - (coords[None, :, None] - point[:, 1]) * angle.cos()).abs_()
        lines[present, 0] += (1 - distance).clamp_(min=0) * strength[present]
    return lines


def _draw_texture(count: int, basis: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``count`` dark textured backgrounds ``(count, 3, side, side)`` float (``side`` = ``len(basis)``): a random
    dark colour, smooth colour noise (low-resolution random grids upsampled bilinearly), grey fine noise and
    faint lines. Values may stray a little outside [0, 1]."""
    side, stacked = basis.shape
    grids = torch.zeros(count, 3, stacked, stacked)
    offset = 0
    for cells, _ in _TEXTURE_GRIDS:
        grids[..., offset:offset + cells, offset:offset + cells] = torch.rand(count, 3, cells, cells,
                                                                              generator=generator) - 0.5
        offset += cells
    texture = basis @ grids @ basis.T
    texture += 0.05 + 0.25 * torch.rand(count, 3, 1, 1, generator=generator)
    grain = 2 * _FINE_NOISE * (torch.rand(count, 1, side, side, generator=generator) - 0.5)
    texture += grain + _lines(count, side, generator)
    return texture


def _paste(texture: torch.Tensor, layout: _Layout, first_canvas: int) -> None:
    """Ink the digits of ``layout`` on canvases ``first_canvas`` onwards over ``texture`` ``(n, 3, S, S)`` in
    paste order (``background * (1 - alpha) + ink * alpha``), in place; only the ink pixels are touched."""
    count, _, side, _ = texture.shape
    lo, hi = torch.searchsorted(layout.canvas, torch.tensor([first_canvas, first_canvas + count])).tolist()
    canvas = layout.canvas[lo:hi] - first_canvas
    rank = torch.arange(len(canvas)) - torch.searchsorted(canvas, canvas)  # paste order within its canvas
    by_rank = torch.argsort(rank, stable=True)
    digits = lo + by_rank  # rank by rank: the digits of one rank are on different canvases, one write each
    alphas = layout.alphas[digits]
    digit, row, col = torch.nonzero(alphas, as_tuple=True)
    alpha = alphas[digit, row, col][:, None].float() / 255
    top_left = (canvas[by_rank] * 3 * side + layout.corners[digits, 1]) * side + layout.corners[digits, 0]
    where = (top_left[digit] + row * side + col)[:, None] + torch.arange(3) * side * side  # (P, 3) flat indices
    ink = layout.inks[digits][digit]
    digit_bounds = torch.bincount(rank).cumsum(0)
    pixel_bounds = [0, *torch.searchsorted(digit, digit_bounds).tolist()]
    flat = texture.view(-1)
    for start, stop in zip(pixel_bounds[:-1], pixel_bounds[1:], strict=True):
        index = where[start:stop].flatten()
        background = flat.index_select(0, index).view(-1, 3)
        flat.index_copy_(0, index, background.lerp_(ink[start:stop], alpha[start:stop]).flatten())


@lru_cache(maxsize=2)
def build_digits_canvases(split: str, img_size: int, num_images: int, val_fraction: float, split_seed: int, *,
                          digit_sizes: tuple[int, int] | None = None, max_digits: int = 4,
                          empty_fraction: float = 0.05,
                          ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """The canvases of one split as ``uint8`` RGB ``(N, 3, img_size, img_size)``, the boxes of each canvas
    (a tuple of ``N`` float32 ``(n_i, 4)`` tensors, XYXY in pixels, ``x2``/``y2`` exclusive) and their digits
    (a tuple of ``N`` int64 ``(n_i,)`` tensors, 0..9). The same arguments always give the same tensors.

    A canvas holds 0 (a fraction ``empty_fraction`` of them) or 1 to ``max_digits`` digits, fewer when a
    digit finds no place that overlaps the earlier ones little enough; a digit's side is drawn in
    ``digit_sizes`` (smallest, largest, inclusive; default :func:`default_digit_sizes`). Raises
    :class:`ConfigError` for an unknown split, a ``val_fraction`` outside (0, 1), ``num_images`` or
    ``max_digits`` under 1, an ``empty_fraction`` outside [0, 1], or digit sizes under 8 pixels or larger
    than the canvas.
    """
    sizes = _check_arguments(split, img_size, num_images, val_fraction, digit_sizes, max_digits, empty_fraction)
    layout = _draw_layout(split, img_size, num_images, val_fraction, split_seed, sizes, max_digits,
                          empty_fraction)
    generator = torch.Generator().manual_seed(_canvas_seed(split, split_seed, _TEXTURE))
    basis = _smooth_basis(img_size)
    images = torch.empty(num_images, 3, img_size, img_size, dtype=torch.uint8)
    for start in range(0, num_images, _CHUNK):
        stop = min(num_images, start + _CHUNK)
        canvases = _draw_texture(stop - start, basis, generator)
        _paste(canvases, layout, start)
        images[start:stop] = canvases.mul_(255).clamp_(0, 255).add_(0.5).to(torch.uint8)  # rounds half up
    counts = layout.counts.tolist()
    boxes = tuple(b.clone() for b in layout.boxes.split(counts))
    labels = tuple(t.clone() for t in layout.labels.split(counts))
    return images, boxes, labels


def _coco_instances(boxes: tuple[torch.Tensor, ...], labels: tuple[torch.Tensor, ...], img_size: int) -> dict:
    """A COCO instances dict of square ``img_size`` images ``0..N-1`` with these XYXY boxes and class indices."""
    images: list[dict] = []
    annotations: list[dict] = []
    for image_id, (image_boxes, image_labels) in enumerate(zip(boxes, labels, strict=True)):
        images.append({"id": image_id, "file_name": f"{image_id:06d}.png", "width": img_size, "height": img_size})
        for (x1, y1, x2, y2), label in zip(image_boxes.tolist(), image_labels.tolist(), strict=True):
            width, height = x2 - x1, y2 - y1
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": DIGITS_CATEGORY_IDS[label], "bbox": [x1, y1, width, height],
                                "area": width * height, "iscrowd": 0})
    categories = [{"id": category_id, "name": name, "supercategory": "digit"}
                  for category_id, name in zip(DIGITS_CATEGORY_IDS, DIGITS_CLASSES, strict=True)]
    return {"images": images, "annotations": annotations, "categories": categories}


class DigitsDetectionDataset(Dataset):
    """One split of the digit canvases: ``(image, target)`` pairs for object detection.

    ``split`` is ``"train"`` or ``"val"``; ``num_images`` defaults to 3,000 train / 500 val canvases.
    Everything is fixed by the arguments (see :func:`build_digits_canvases`, whose tensors are ``images``,
    ``boxes`` and ``labels``; do not modify them: they are cached). The target is a dict with ``boxes``
    (float32 ``(n, 4)`` XYXY pixels), ``labels`` (int64 ``(n,)`` class indices 0..9), ``image_id`` (the
    index), ``area`` (float32 box areas) and ``iscrowd`` (int64 zeros). Without a transform the image is
    ``float32`` in [0, 1]; with one, the result of ``transform(tv_tensors.Image (uint8), target)`` with the
    boxes as ``tv_tensors.BoundingBoxes``, as a ``torchvision.transforms.v2`` transform takes them. Raises
    :class:`ConfigError` as :func:`build_digits_canvases` does.
    """

    classes = list(DIGITS_CLASSES)
    class_to_idx = {name: i for i, name in enumerate(DIGITS_CLASSES)}
    num_classes = len(DIGITS_CLASSES)
    category_ids = list(DIGITS_CATEGORY_IDS)

    def __init__(self, split: str = "train", img_size: int = 128, transform: Callable | None = None, *,
                 num_images: int | None = None, val_fraction: float = 0.2, split_seed: int = 0,
                 digit_sizes: tuple[int, int] | None = None, max_digits: int = 4,
                 empty_fraction: float = 0.05) -> None:
        check_split(split, val_fraction, "digits detection")  # before the split names its default size
        num_images = DEFAULT_NUM_IMAGES[split] if num_images is None else num_images
        self.split, self.img_size = split, img_size
        self.images, self.boxes, self.labels = build_digits_canvases(
            split, img_size, num_images, float(val_fraction), split_seed,
            digit_sizes=None if digit_sizes is None else tuple(digit_sizes), max_digits=max_digits,
            empty_fraction=float(empty_fraction))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def target(self, index: int) -> dict:
        """The target dict of canvas ``index`` (fresh tensors: the caller may modify them)."""
        index = range(len(self))[index]  # a negative index names its canvas; out of range raises IndexError
        boxes = self.boxes[index].clone()
        return {"boxes": boxes, "labels": self.labels[index].clone(), "image_id": index,
                "area": (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
                "iscrowd": torch.zeros(len(boxes), dtype=torch.int64)}

    def __getitem__(self, index: int):
        target = self.target(index)
        image = self.images[target["image_id"]]
        if self.transform is None:
            return image.float() / 255, target
        target["boxes"] = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY",
                                                   canvas_size=tuple(image.shape[-2:]))
        return self.transform(tv_tensors.Image(image), target)

    @staticmethod
    def collate(samples: list[tuple]) -> tuple[list, list[dict]]:
        """A detection batch: ``(images, targets)`` as lists (the images may differ in size)."""
        images, targets = zip(*samples, strict=True) if samples else ((), ())
        return list(images), list(targets)

    def coco_ground_truth(self) -> dict:
        """The split as a COCO instances dict (``images``, ``annotations`` with 1-based ids and ``bbox`` as
        ``[x, y, w, h]``, ``categories`` with ids 1..10); image ids are the dataset indices."""
        return _coco_instances(self.boxes, self.labels, self.img_size)


__all__ = ["DEFAULT_NUM_IMAGES", "DIGITS_CATEGORY_IDS", "DIGITS_DETECTION", "DigitsDetectionDataset",
           "build_digits_canvases", "default_digit_sizes"]
