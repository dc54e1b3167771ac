"""Which model output a class folder (or a ground-truth synset) stands for.

A validation set names its classes; the model numbers its outputs. :func:`resolve_class_mapping` joins
the two by the first rule that applies:

1. ``class_map``: the user's file (:func:`read_class_map`), for anything the rules below do not cover.
2. ``checkpoint-names``: every class is one of the class names the checkpoint records (our checkpoints
   record the folders they were trained on), so a subset of a model's own classes works too.
3. ``imagenet-synsets``: every class is a WordNet synset (``n01440764``) and the model has the 1000
   ImageNet-1k classes: the synset's ImageNet index, however many folders there are (Imagenette,
   ImageNet-A / -R with 200, ImageNet-Sketch with 1000).
4. ``integers``: every class is a whole number: the class index itself (ImageNetV2's ``0`` ... ``999``,
   which sorted as strings would scramble the classes: ``0, 1, 10, 100, ...``).
5. ``sorted-names``: as many classes as model outputs: sorted names give the indices (torchvision's
   ``ImageFolder`` rule, the one training used).

When the set covers fewer classes than the model has, the mapping is ``masked``: the prediction is taken
over the covered classes only (the other logits masked), the published protocol of ImageNet-A and -R.
Synset folders that are not ImageNet-1k's, synsets mixed with other names, integers out of range and
anything else that fits no rule are one-line :class:`DataError` s.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from tresnet.data.class_names import IMAGENET_NUM_CLASSES, imagenet_class_names
from tresnet.data.imagenet import imagenet_synset_index, imagenet_synsets, is_synset
from tresnet.errors import DataError

RULES = ("class-map", "checkpoint-names", "imagenet-synsets", "integers", "sorted-names")
_CLASS_MAP_HINT = "pass --class-map FILE (a class name per line in model order, or name,index lines)"


@dataclass(frozen=True)
class ClassMapping:
    """``indices``: data class name -> model output index, found by ``rule`` (one of :data:`RULES`)."""

    rule: str
    indices: dict[str, int]
    num_classes: int
    source: str | None = None  # the class-map file

    @cached_property
    def covered(self) -> tuple[int, ...]:
        """The model outputs the data's classes stand for, sorted."""
        return tuple(sorted(set(self.indices.values())))

    @property
    def masked(self) -> bool:
        """Whether the data covers fewer classes than the model has (predictions are then taken over the
        covered classes only)."""
        return len(self.covered) < self.num_classes

    def describe(self) -> str:
        """One line for the start of a run: the rule and, for a subset, the masking."""
        rule = {
            "class-map": f"the class map {self.source}",
            "checkpoint-names": "the class names the checkpoint records",
            "imagenet-synsets": "ImageNet-1k synsets (class index = the synset's ImageNet index)",
            "integers": "class-index names (folder 7 = class 7)",
            "sorted-names": "sorted names (as torchvision's ImageFolder)",
        }[self.rule]
        text = f"{len(self.indices)} classes mapped by {rule}"
        if self.masked:
            text += (f"; prediction over these {len(self.covered)} of the model's {self.num_classes} classes "
                     f"only (other logits masked, the ImageNet-A/R protocol)")
        return text

    def to_dict(self) -> dict:
        """The JSON form (``class_mapping`` of a validation report)."""
        return dict(rule=self.rule, source=self.source, classes=len(self.indices), model_classes=self.num_classes,
                    masked=self.masked, indices=dict(self.indices))


def _class_map_text(path: Path) -> str:
    """The text of a class-map file (a pipe or device reads too: ``<(cut -f1 ...)``); :class:`DataError` if none."""
    if not path.exists():
        raise DataError(f"class map {path} does not exist: {_CLASS_MAP_HINT}")
    if path.is_dir():
        raise DataError(f"class map {path} is a folder, not a file: {_CLASS_MAP_HINT}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"class map {path} is not UTF-8 text (byte {e.start}): {_CLASS_MAP_HINT}") from e
    except OSError as e:
        raise DataError(f"cannot read class map {path}: {(e.strerror or str(e)).lower()}: {_CLASS_MAP_HINT}") from e


def read_class_map(path: str | os.PathLike, num_classes: int) -> dict[str, int]:
    """A class-map file: a class name per line (line order = model index), or ``name,index`` lines.

    Raises :class:`DataError` for a missing, unreadable, empty or non-text file, a mix of both forms, a
    repeated name, or an index that is not a whole number between 0 and ``num_classes - 1``.
    """
    path = Path(path).expanduser()
    lines = [(n, line.strip()) for n, line in enumerate(_class_map_text(path).splitlines(), 1)]
    lines = [(n, line) for n, line in lines if line]
    if not lines:
        kind = "" if path.is_file() else " (a device or a pipe, not a regular file)"
        raise DataError(f"class map {path} is empty{kind}: {_CLASS_MAP_HINT}")
    forms = {"," in line for _, line in lines}
    if len(forms) > 1:
        raise DataError(f"class map {path} mixes plain names and name,index lines: use one form")
    indices: dict[str, int] = {}
    for position, (n, line) in enumerate(lines):
        name, _, index_text = line.rpartition(",") if forms == {True} else (line, "", str(position))
        name, index_text = name.strip(), index_text.strip()
        if not index_text.isdigit() or int(index_text) >= num_classes:
            raise DataError(f"class map {path} line {n}: index {index_text!r} is not a class index of the model "
                            f"(0..{num_classes - 1})")
        if name in indices:
            raise DataError(f"class map {path} line {n}: {name!r} is listed twice")
        indices[name] = int(index_text)
    return indices


def name_mismatch(classes: Sequence[str], checkpoint_names: Sequence[str], what: str, data_word: str) -> str:
    """``<what> are not the checkpoint's classes: index i is 'x' in the <data_word>, 'y' in the checkpoint``,
    at the first index where the two lists of the same length differ."""
    first = next((i for i, (a, b) in enumerate(zip(checkpoint_names, classes, strict=False)) if a != b), 0)
    return (f"{what} are not the checkpoint's classes: index {first} is {classes[first]!r} in the {data_word}, "
            f"{checkpoint_names[first]!r} in the checkpoint")


def _examples(names: Sequence[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:3])
    return shown + (", ..." if len(names) > 3 else "")


def _by_class_map(names, class_map, num_classes, source, data) -> ClassMapping:
    missing = [name for name in names if name not in class_map]
    if missing:
        raise DataError(f"{len(missing)} classes of {data} are not in the class map {source}: {_examples(missing)}")
    return ClassMapping("class-map", {name: class_map[name] for name in names}, num_classes, str(source))


def _imagenet_named(checkpoint_names: Sequence[str] | None) -> bool:
    return not checkpoint_names or list(checkpoint_names) in (list(imagenet_synsets()), list(imagenet_class_names()))


def _by_synsets(names, num_classes, data) -> ClassMapping:
    if num_classes != IMAGENET_NUM_CLASSES:
        raise DataError(f"{data} has {len(names)} synset classes, which name ImageNet-1k classes, but the model "
                        f"has {num_classes} outputs: {_CLASS_MAP_HINT}")
    index = imagenet_synset_index()
    unknown = [name for name in names if name not in index]
    if unknown:
        raise DataError(f"{len(unknown)} synset classes of {data} are not ImageNet-1k synsets "
                        f"({_examples(unknown)}): {_CLASS_MAP_HINT}")
    return ClassMapping("imagenet-synsets", {name: index[name] for name in names}, num_classes)


def _by_integers(names, num_classes, data) -> ClassMapping:
    indices = {name: int(name) for name in names}
    too_big = [name for name, index in indices.items() if index >= num_classes]
    if too_big:
        raise DataError(f"{data} has class-index names past the model's {num_classes} classes "
                        f"({_examples(too_big)}; valid: 0..{num_classes - 1}): {_CLASS_MAP_HINT}")
    if len(set(indices.values())) < len(indices):
        raise DataError(f"{data} has class-index names that mean the same index (such as '7' and '07'): rename one")
    return ClassMapping("integers", indices, num_classes)


def _by_sorted_names(names, num_classes, checkpoint_names, data) -> ClassMapping:
    ordered = sorted(names)
    if len(ordered) != num_classes:
        raise DataError(f"{data} has {len(ordered)} classes but the model has {num_classes}, and their names are "
                        f"neither ImageNet synsets (n01440764), class indices (0..{num_classes - 1}) nor the "
                        f"checkpoint's classes: {_CLASS_MAP_HINT}")
    if checkpoint_names and list(checkpoint_names) != ordered:
        raise DataError(f"{name_mismatch(ordered, checkpoint_names, f'the classes of {data}', 'data')}; "
                        f"{_CLASS_MAP_HINT}")
    return ClassMapping("sorted-names", {name: index for index, name in enumerate(ordered)}, num_classes)


def resolve_class_mapping(names: Sequence[str], num_classes: int, *,
                          checkpoint_names: Sequence[str] | None = None,
                          class_map: Mapping[str, int] | None = None, class_map_source: str | None = None,
                          data: str = "the data") -> ClassMapping:
    """Map the data's class ``names`` to the outputs of a ``num_classes`` model by the module's rules;
    ``checkpoint_names``: the class names its checkpoint records, ``data``: how errors name the data.

    Raises :class:`DataError` when no rule applies, naming what was found.
    """
    names = list(names)
    if class_map is not None:
        return _by_class_map(names, class_map, num_classes, class_map_source, data)
    if checkpoint_names and len(checkpoint_names) == num_classes and set(names) <= set(checkpoint_names):
        position = {name: index for index, name in enumerate(checkpoint_names)}
        return ClassMapping("checkpoint-names", {name: position[name] for name in names}, num_classes)
    synsets = [name for name in names if is_synset(name)]
    if synsets and len(synsets) == len(names):
        if checkpoint_names and not _imagenet_named(checkpoint_names):  # no names count as ImageNet's
            outside = [name for name in names if name not in set(checkpoint_names)]
            raise DataError(f"{data} has synset classes but the checkpoint records {len(checkpoint_names)} other "
                            f"class names, without {_examples(outside)}: {_CLASS_MAP_HINT}")
        return _by_synsets(names, num_classes, data)
    if synsets and len(synsets) < len(names):
        others = [name for name in names if not is_synset(name)]
        raise DataError(f"{data} mixes {len(synsets)} synset classes ({_examples(synsets)}) with {len(others)} "
                        f"other names ({_examples(others)}): use one kind, or {_CLASS_MAP_HINT}")
    if names and all(name.isascii() and name.isdigit() for name in names):
        return _by_integers(names, num_classes, data)
    return _by_sorted_names(names, num_classes, checkpoint_names, data)


__all__ = ["RULES", "ClassMapping", "name_mismatch", "read_class_map", "resolve_class_mapping"]
