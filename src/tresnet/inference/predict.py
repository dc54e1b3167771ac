"""Classify image files: the top-k classes of each, with probabilities (what ``tresnet predict`` prints);
for a multi-label model also every label whose probability exceeds a threshold.

    import tresnet
    from tresnet.inference.evaluate import Scoring
    from tresnet.inference.predict import predict

    model = tresnet.create_model(checkpoint_path="runs/digits/best.safetensors")
    for answer in predict(model, ["photos/"], topk=3):
        print(answer.file, answer.error or [(s.label, round(s.prob, 3)) for s in answer.topk])

    model = tresnet.create_model(checkpoint_path="tresnet_l_448_coco.pth")  # a multi-label checkpoint
    for answer in predict(model, ["photos/"], scoring=Scoring(threshold=0.7)):
        print(answer.file, answer.error or [s.label for s in answer.labels])
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torchvision.io import write_png

from tresnet.data import class_labels, find_images, load_image
from tresnet.data.bundled import BundledValidationSet
from tresnet.data.class_mapping import read_class_map
from tresnet.data.transforms import Preprocessing
from tresnet.errors import ConfigError, DataError
from tresnet.files import atomic_write
from tresnet.inference.bundled import bundled_split
from tresnet.inference.evaluate import Scoring
from tresnet.inference.runner import RunOptions, make_inference_model
from tresnet.tasks import Task
from tresnet.tasks.outputs import Prediction


def _labels(model: nn.Module, class_names: Sequence[str] | None, task: Task,
            class_map: str | os.PathLike | None) -> tuple[list[str], Sequence[str] | None]:
    """A label per output and, for a model labelled by the task's default names that have synsets (ImageNet's),
    the synsets."""
    info = getattr(model, "checkpoint_info", None)
    if class_names is None and info is not None:
        class_names = info.metadata.get("class_names")
    num_classes = cast(int, model.num_classes)
    defaults, synsets = task.default_labels(num_classes)
    fits = class_names is not None and len(class_names) == num_classes
    if fits and class_names is not None and not (synsets is not None and list(class_names) == list(synsets)):
        synsets = None  # the checkpoint's own names; one trained on synset folders records synsets: show names
    elif synsets is not None:
        class_names = None
    labels = class_labels(num_classes, class_names, defaults=defaults)
    if class_map is not None:
        for name, index in read_class_map(class_map, num_classes).items():
            labels[index] = name
    return labels, synsets


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _decode(items: Sequence[tuple[str, Callable[[], torch.Tensor]]],
            task: Task) -> tuple[list[str], list[torch.Tensor], list[Prediction]]:
    """The tensors of ``items`` (name, reader) and an error for each that cannot be read."""
    names, tensors, failed = [], [], []
    for name, read in items:
        try:
            tensors.append(read())
            names.append(name)
        except DataError as e:
            failed.append(task.failure(name, str(e)))
    return names, tensors, failed


def _file_reader(path: Path, transform) -> Callable[[], torch.Tensor]:
    return lambda: transform(load_image(path, exif_transpose=True))  # phones store rotation in EXIF


def _bundled_items(model: nn.Module, name: str, preprocessing: Preprocessing) -> list:
    """The validation images of bundled set ``name`` (the split the model's run validated on), named
    ``NAME:val/INDEX`` as :func:`tresnet.data.bundled.write_bundled` numbers their files."""
    dataset = BundledValidationSet(name)
    val_split, split_seed = bundled_split(model, name)
    dataset.prepare(preprocessing, val_split=val_split, split_seed=split_seed)
    return [(f"{name}:val/{index:05d}", lambda index=index: dataset[index][0]) for index in range(len(dataset))]


def predict(model: nn.Module, inputs: Sequence[str | os.PathLike], *, topk: int = 5, batch_size: int = 32,
            preprocessing: Preprocessing | None = None, device: str | torch.device | None = None,
            run: RunOptions | None = None, scoring: Scoring | None = None,
            class_names: Sequence[str] | None = None, data: str | None = None) -> Iterator[Prediction]:
    """Yield a :class:`~tresnet.tasks.outputs.Prediction` for every image that ``inputs`` name (files, or folders
    searched recursively: :func:`tresnet.data.find_images`), then for each validation image of the bundled set
    ``data`` (``"digits"``, ``"digits-multilabel"``: the split the model's run validated on), with the
    model's own preprocessing (``preprocessing`` None: :meth:`Preprocessing.of` the model, i.e. what its
    checkpoint recorded, else the registered model's).

    Inputs that name no image come first, as errors; then the images in order, batch by batch, an
    unreadable file giving an error rather than stopping the others. Labels are ``class_names``, else
    the checkpoint's (``model.checkpoint_info``), else the task's for a known class count (ImageNet's for 1000,
    COCO's for 80 with a multilabel task), else indices; ``scoring.class_map`` (a file, as ``tresnet validate
    --class-map``) renames the outputs it lists. An ImageNet-1k model's answers also carry each class's synset.
    ``scoring`` (:class:`~tresnet.inference.evaluate.Scoring`) says how outputs are read: ``task`` None is the
    model's (``pretrained_cfg["task"]``, else multiclass): a multiclass answer gives softmax probabilities; a
    multilabel one each class's sigmoid and ``labels``, the classes whose probability exceeds ``threshold``
    (None: the checkpoint's, else 0.5). ``device`` None keeps the model where it is. ``run``
    (:class:`~tresnet.inference.runner.RunOptions`) says how the model runs: its autocast ``precision``, its
    ``number_format`` (``bf16``: the folded bfloat16 model; ``int8``: the model quantized on the calibration
    images, on the CPU). The model runs in eval mode; its mode comes back when the iteration ends. Raises
    :class:`ConfigError` for a bad ``topk``, ``batch_size``, precision or number format, task (or one other than
    the checkpoint's) or threshold, :class:`DataError` for a class map that cannot be read or an unknown bundled
    set, and :class:`~tresnet.errors.InputSizeError` for a size the model cannot take.
    """
    if topk < 1 or batch_size < 1:
        raise ConfigError(f"topk and batch size must be at least 1, got {topk} and {batch_size}")
    scoring = scoring or Scoring()
    task, threshold = scoring.resolve(model)
    preprocessing = preprocessing or Preprocessing.of(model)
    task.check_run(run.number_format if run is not None else "fp32")
    task.check_input_size(model, *preprocessing.img_size)
    device = torch.device(device) if device is not None else _model_device(model)
    run = (run or RunOptions()).check(device)
    labels, synsets = _labels(model, class_names, task, scoring.class_map)
    files, errors = find_images(inputs)
    transform = task.eval_transform(preprocessing)
    items = [(str(path), _file_reader(path, transform)) for path in files]
    items += _bundled_items(model, data, preprocessing) if data is not None else []
    yield from (task.failure(name, message) for name, message in errors)
    was_training = model.training
    model.eval()
    inference = make_inference_model(model, device, run, img_size=preprocessing.img_size[0])
    try:
        for start in range(0, len(items), batch_size):
            names, tensors, failed = _decode(items[start:start + batch_size], task)
            yield from failed
            if tensors:
                logits = inference(task.batch(tensors))
                yield from task.answers(names, logits, labels, synsets, topk=topk, threshold=threshold)
    finally:
        model.train(was_training)


def save_drawn(model: nn.Module, answers: Sequence[Any], folder: str | os.PathLike, *,
               preprocessing: Preprocessing | None = None, scoring: Scoring | None = None,
               data: str | None = None) -> list[Path]:
    """Write each answered image of :func:`predict` with its answer drawn on it (a detector's boxes and labels:
    :meth:`tresnet.tasks.Task.draw`) as ``folder/NNNNN-NAME.png``, atomically; the files written. The images are
    read again as :func:`predict` read them (``data``: the bundled set it was given). Raises :class:`ConfigError`
    for a task that draws nothing."""
    task, _ = (scoring or Scoring()).resolve(model)
    if not task.draws:
        raise ConfigError(f"--save-images draws a detector's boxes: a {task.name} model has none to draw")
    preprocessing = preprocessing or Preprocessing.of(model)
    transform = task.eval_transform(preprocessing)
    readers = dict(_bundled_items(model, data, preprocessing)) if data is not None else {}
    written = []
    for number, answer in enumerate(answers):
        if answer.error is not None:
            continue
        read = readers.get(answer.file) or _file_reader(Path(answer.file), transform)
        picture = task.draw(read(), answer)
        path = Path(folder).expanduser() / f"{number:05d}-{Path(answer.file).stem}.png"
        written.append(atomic_write(path, functools.partial(write_png, picture)))
    return written


__all__ = ["predict", "save_drawn"]
