"""Checkpoints: read every family's published layouts and our own files; write ours atomically.

Our in-memory names are timm's (``convN.conv`` / ``convN.bn``, ``stem.conv``, plain BatchNorm weights), so
a timm state dict needs no conversion; each family's other layouts (:class:`~tresnet.models.family.
CheckpointFormat`: TResNet's and GENet's official releases) are recognised by a marker key and converted
by the family's own function. Our own files are safetensors whose metadata names the family, the model
(``model``: the registered name, e.g. ``tresnet_m_448``), the network it builds (``arch``: e.g.
``tresnet_m``), the classes, the task (``multiclass`` / ``multilabel``) and the head (``fc`` /
``ml_decoder``).

The multi-label releases are read too: ASL's (Alibaba-MIIL/ASL) and ML-Decoder's (Alibaba-MIIL/ML_Decoder)
files are ``{"model": state, "idx_to_class": {index: name}, ...}`` with the official TResNet body and an
``head.fc`` (ASL) or ML-Decoder (``head.decoder.*``) head: they load as ``task="multilabel"`` with their
class names.

A file is read once: :func:`open_checkpoint` decodes its tensors, :func:`read_checkpoint_metadata` reads
only a safetensors file's header (a pickle has no header, so it is decoded whole).
"""

from __future__ import annotations

import json
import os
import re
import struct
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tresnet.errors import CheckpointError, CheckpointWriteError, FileWriteError
from tresnet.files import atomic_write
from tresnet.layers.ml_decoder import MARKER as ML_DECODER_MARKER
from tresnet.layers.ml_decoder import ml_decoder_options
from tresnet.models.family import CheckpointFormat, Family
from tresnet.models.registry import FAMILIES, MODEL_CONFIGS, PREPROCESSING_KEYS, family_of_arch
from tresnet.tasks.multilabel import MULTILABEL
from tresnet.version import __version__

FORMAT_OURS = "tresnet"
FORMAT_TIMM = "timm"
FORMAT_OFFICIAL = "official"
_SAFETENSORS_SUFFIXES = (".safetensors",)
_LEGACY_METADATA_KEYS = {"architecture": "arch"}  # files written by tresnet 0.1.0 named the network so


@dataclass(frozen=True)
class CheckpointInfo:
    """The weights a model was loaded from: ``model.checkpoint_info`` (None for fresh weights).

    ``format`` is ``"tresnet"``, ``"timm"`` or ``"official"``; ``metadata`` is what
    :func:`read_checkpoint_metadata` gives (``model``, ``arch``, ``num_classes``, ``class_names``...).
    """

    path: Path
    format: str
    metadata: dict = field(default_factory=dict)

    def describe(self) -> str:
        """One line for logs, e.g. ``weights runs/x/best.safetensors (tresnet format)``."""
        return f"weights {self.path} ({self.format} format)"


@dataclass
class Checkpoint:
    """A checkpoint read once: its tensors in our names, its format and its metadata."""

    path: Path
    state_dict: dict
    format: str
    metadata: dict

    @property
    def info(self) -> CheckpointInfo:
        return CheckpointInfo(self.path, self.format, self.metadata)


# --- reading --------------------------------------------------------------------------------------


def _is_safetensors(path: Path) -> bool:
    if path.suffix in _SAFETENSORS_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: 8-byte little-endian header length, then a JSON object
    return len(head) == 9 and head[8:9] == b"{"


# A PyTorch file is a zip archive (torch.save) or, from older versions and pickle.dump, a pickle (protocol 2+).
_PYTORCH_STARTS = (b"PK\x03\x04", b"\x80")
_ACCEPTED_FILES = "a .safetensors file, or a PyTorch .pth/.pt/.bin file of a TResNet or GENet (ours, timm's, official)"


def _check_file(path: Path) -> None:
    """A one-line :class:`CheckpointError` unless ``path`` is a file that starts as a checkpoint does."""
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: check the path")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {(e.strerror or str(e)).lower()}; check its "
                              f"permissions") from e
    if not head:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty; pass {_ACCEPTED_FILES}")
    if (len(head) == 9 and head[8:9] == b"{") or head.startswith(_PYTORCH_STARTS):
        return
    raise CheckpointError(f"cannot read checkpoint {path}: it is not a checkpoint (neither a safetensors file nor a "
                          f"PyTorch file; it starts with {head[:8]!r}); pass {_ACCEPTED_FILES}")


def _first_sentence(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return re.split(r"\.\s+(?=[A-Z])", line)[0].rstrip(".")[:200]


def _weights_only_refusal(text: str) -> str:
    """What torch's paragraph on a failed ``torch.load(weights_only=True)`` says the file holds."""
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"it holds objects other than weights ({found.group(1)})"
    after = text.split("WeightsUnpickler error:", 1)[-1]
    return f"it is a pickle that the weights-only reader refuses ({_first_sentence(after) or 'no reason given'})"


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    """The one line for a checkpoint that its reader (safetensors, torch.load) refused."""
    text = str(error)
    if "weights only load failed" in text.lower():
        return CheckpointError(f"cannot read checkpoint {path} safely: {_weights_only_refusal(text)}; if "
                               f"you trust this file, load it with weights_only=False, or pick a weights file")
    return CheckpointError(f"cannot read checkpoint {path}: {_first_sentence(text) or type(error).__name__}; the file "
                           f"is damaged or incomplete: copy or save it again, or pick another file")


def _read_file(path: Path, weights_only: bool) -> tuple[dict, dict]:
    """The raw object of a checkpoint file and its safetensors metadata (empty for pickles)."""
    _check_file(path)
    try:
        if _is_safetensors(path):
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            return tensors, metadata
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise _unreadable(path, e) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return obj, {}


def _unwrap(obj: dict) -> dict:
    for key in ("model", "state_dict", "model_state_dict"):
        inner = obj.get(key)
        if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _release_extras(obj: dict) -> dict:
    """What a multi-label release file says besides its tensors: ASL's and ML-Decoder's ``idx_to_class``
    (``{index: name}``) gives ``class_names`` in index order and ``task="multilabel"``."""
    idx_to_class = obj.get("idx_to_class")
    if not isinstance(idx_to_class, dict) or not idx_to_class:
        return {}
    items = list(idx_to_class.items())
    if all(str(k).lstrip("-").isdigit() for k, _ in items):
        items.sort(key=lambda kv: int(kv[0]))
    return {"class_names": [str(name) for _, name in items], "task": MULTILABEL}


def head_of(keys) -> str | None:
    """The head a state dict (in our names) holds: ``"ml_decoder"``, ``"fc"``, or None for no classifier."""
    if ML_DECODER_MARKER in keys:
        return "ml_decoder"
    return "fc" if "head.fc.weight" in keys else None


def _family_of_ours(metadata: Mapping, keys) -> Family | None:
    """The family of one of our files: recorded in its metadata, else known from its ``arch`` or ``model``."""
    if metadata.get("family") in FAMILIES:
        return FAMILIES[metadata["family"]]
    arch = metadata.get("arch") or metadata.get("architecture")
    if arch and family_of_arch(arch) is not None:
        return family_of_arch(arch)
    if metadata.get("model") in MODEL_CONFIGS:
        return FAMILIES[MODEL_CONFIGS[metadata["model"]]["family"]]
    return next((f for f in FAMILIES.values() if f.formats[0].marker in keys), None)


def identify(state_dict: Mapping, metadata: Mapping | None = None) -> tuple[Family | None, CheckpointFormat]:
    """The family and layout of a state dict (tensors or shapes, as stored); :class:`CheckpointError` if none.

    Our own files (metadata ``format`` = ``"tresnet"``) are in our names already.
    """
    if metadata and metadata.get("format") == FORMAT_OURS:
        return _family_of_ours(metadata, state_dict), CheckpointFormat(FORMAT_OURS, "")
    for family in FAMILIES.values():
        fmt = family.format_of(state_dict)
        if fmt is not None:
            return family, fmt
    sample = ", ".join(list(state_dict)[:4]) or "no tensors"
    expected = "; ".join(f"{family.title} {fmt.name} ({fmt.marker!r})" for family in FAMILIES.values()
                         for fmt in family.formats)
    titles = " or ".join(family.title for family in FAMILIES.values())
    raise CheckpointError(f"not a {titles} checkpoint (keys start: {sample}); expected one of: {expected}; "
                          f"or a file saved by tresnet")


def detect_format(state_dict: dict, metadata: dict | None = None) -> str:
    """``"tresnet"``, ``"timm"`` or ``"official"``; :class:`CheckpointError` for anything else."""
    return identify(state_dict, metadata)[1].name


def _json_value(text: str, key: str):
    try:
        return json.loads(text)
    except ValueError as e:
        raise CheckpointError(f"the checkpoint's {key!r} metadata is not JSON ({e}): was the file edited?") from e


def _describe_metadata(raw: Mapping[str, str], shapes: Mapping[str, Sequence[int]], fmt: str,
                       family: Family | None) -> dict:
    """Typed metadata from a file's string metadata and its tensor shapes (in our names)."""
    meta: dict[str, Any] = {_LEGACY_METADATA_KEYS.get(k, k): v for k, v in raw.items()}
    for key in ("class_names", "preprocessing", "network"):
        if key in meta:
            meta[key] = _json_value(meta[key], key)
    if "threshold" in meta:
        meta["threshold"] = float(meta["threshold"])
    for key in ("num_classes", "in_chans"):
        if key in meta and str(meta[key]).isdigit():
            meta[key] = int(meta[key])
        elif key in meta:
            del meta[key]  # written empty by a model without that attribute
    if "head.fc.weight" in shapes:
        meta.setdefault("num_classes", int(shapes["head.fc.weight"][0]))
    decoder = ml_decoder_options(shapes)
    if decoder:
        meta.setdefault("num_classes", int(decoder["num_classes"]))
    for key in ("head", "task"):
        if not meta.get(key):  # absent, or written empty (a features-only model has no head)
            meta.pop(key, None)
    meta.setdefault("head", head_of(shapes))
    meta["format"] = fmt
    if family is not None:
        meta["family"] = family.name
        if not meta.get("arch"):
            meta["arch"] = family.infer_arch(shapes)
    meta.setdefault("arch", None)
    return meta


def open_checkpoint(path: str | os.PathLike, *, weights_only: bool = True) -> Checkpoint:
    """Read any supported checkpoint once: tensors in our names, format and metadata.

    Raises :class:`CheckpointError` for a missing, unreadable or non-TResNet file.
    """
    path = Path(path).expanduser()
    obj, raw_meta = _read_file(path, weights_only)
    state = _unwrap(obj)
    family, fmt = identify(state, raw_meta)
    state = fmt.convert(state)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    metadata = _describe_metadata(raw_meta, shapes, fmt.name, family)
    extras = {} if raw_meta else _release_extras(obj)
    if "class_names" in extras and len(extras["class_names"]) != metadata.get("num_classes"):
        extras.pop("class_names")  # names that do not fit the classifier are not the classifier's
    return Checkpoint(path, state, fmt.name, {**metadata, **extras})


def read_checkpoint(path: str | os.PathLike, *, weights_only: bool = True) -> tuple[dict, str, dict]:
    """Read any supported checkpoint: ``(state_dict in our names, format, metadata)``."""
    ckpt = open_checkpoint(path, weights_only=weights_only)
    return ckpt.state_dict, ckpt.format, ckpt.metadata


def _safetensors_header(path: Path) -> tuple[dict, dict]:
    """``(metadata, {name: shape})`` from a safetensors file's JSON header, without reading any tensor."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error) as e:
        raise _unreadable(path, e) from e
    metadata = header.pop("__metadata__", None) or {}
    return metadata, {k: tuple(v["shape"]) for k, v in header.items() if isinstance(v, dict) and "shape" in v}


def read_checkpoint_metadata(path: str | os.PathLike) -> dict:
    """Format, ``model``, ``arch``, number of classes and (for our files) class names of a checkpoint.

    A safetensors file's header is read, not its tensors; a pickled file is decoded whole.
    """
    path = Path(path).expanduser()
    _check_file(path)
    if not _is_safetensors(path):
        return open_checkpoint(path).metadata
    raw, shapes = _safetensors_header(path)
    family, fmt = identify(shapes, raw)
    shapes = {fmt.convert_key(k): v for k, v in shapes.items()}
    return _describe_metadata(raw, shapes, fmt.name, family)


def recorded_head(path: str | os.PathLike) -> str | None:
    """The head a safetensors file records, read from its header alone (a detector's: ``fcos``, ``retinanet``);
    None for a pickled file, which is decoded only once, by whatever loads it (ours always write safetensors).
    Raises :class:`CheckpointError` for a missing or unreadable file."""
    path = Path(path).expanduser()
    _check_file(path)
    return read_checkpoint_metadata(path).get("head") if _is_safetensors(path) else None


# --- loading into a model -------------------------------------------------------------------------


def _examples(keys, limit: int = 5) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _without_head(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def _head_description(state: dict) -> tuple[str | None, int | None]:
    """``(head kind, number of classes)`` of a state dict's classifier (None, None without one)."""
    kind = head_of(state)
    if kind == "ml_decoder":
        return kind, int(state["head.decoder.duplicate_pooling_bias"].shape[0])
    return kind, (int(state["head.fc.weight"].shape[0]) if kind == "fc" else None)


def _heads_differ(state: dict, target: dict) -> bool:
    """Whether the two classifiers differ in kind or in any tensor's shape (both must have one)."""
    have = {k: v.shape for k, v in state.items() if k.startswith("head.")}
    want = {k: v.shape for k, v in target.items() if k.startswith("head.")}
    return bool(have) and bool(want) and have != want


_HEAD_TITLES: dict[str | None, str] = {"fc": "a classifier", "ml_decoder": "an ML-Decoder head"}


def _match_head(state: dict, target: dict, ckpt: Checkpoint, allow_head_mismatch: bool) -> tuple[dict, dict]:
    """``state`` and ``target`` without their classifiers when the checkpoint's is of another kind or size."""
    if not _heads_differ(state, target):
        return state, target
    (have_kind, have), (want_kind, want) = _head_description(state), _head_description(target)
    have_title, want_title = _HEAD_TITLES.get(have_kind, "a head"), _HEAD_TITLES.get(want_kind, "a head")
    if not allow_head_mismatch:
        if have_kind != want_kind:
            raise CheckpointError(
                f"{ckpt.format} checkpoint {ckpt.path} has {have_title} for {have} classes, the model {want_title}: "
                f"build the model with head={have_kind!r}, or ask for num_classes to load the backbone with a "
                f"fresh head")
        if have == want:
            raise CheckpointError(
                f"{ckpt.format} checkpoint {ckpt.path} has {have_title} of other sizes than the model's (queries or "
                f"widths): build the model with the checkpoint's head (leave head_options out)")
        raise CheckpointError(
            f"{ckpt.format} checkpoint {ckpt.path} has {have_title} for {have} classes, the model has {want}: "
            f"build the model with num_classes={have}, or ask for a different num_classes to load the backbone "
            f"with a fresh head"
        )
    fresh = "ML-Decoder head" if want_kind == "ml_decoder" else "head"
    warnings.warn(f"checkpoint {ckpt.path} has {have_title} for {have} classes; loading the backbone only, "
                  f"with a freshly initialised {fresh} for {want} classes", stacklevel=4)
    return _without_head(state), _without_head(target)


def _likely_cause(ckpt: Checkpoint, model: nn.Module) -> str:
    ckpt_arch = ckpt.metadata.get("arch")
    model_arch = (getattr(model, "pretrained_cfg", None) or {}).get("arch")
    if ckpt_arch and model_arch and ckpt_arch != model_arch:
        return f"the checkpoint is a {ckpt_arch}, the model a {model_arch}: build a {ckpt_arch}"
    if ckpt_arch is None:
        family = FAMILIES.get(ckpt.metadata.get("family", ""))
        return f"the checkpoint matches no {family.title if family else 'known'} variant: is it the right file?"
    return "same variant but different layer sizes: check in_chans and the model options"


def _check_family(ckpt: Checkpoint, model: nn.Module) -> None:
    """A checkpoint of another family or variant is refused in one line that names both (before any key is compared)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    have, want = FAMILIES.get(ckpt.metadata.get("family", "")), FAMILIES.get(cfg.get("family", ""))
    if have is None or want is None:
        return
    held, built = ckpt.metadata.get("arch"), cfg.get("arch")
    if have is not want:
        raise CheckpointError(f"{ckpt.format} checkpoint {ckpt.path} holds a {have.title} "
                              f"({held or 'unknown variant'}), the model is a {want.title} ({cfg.get('model')}): "
                              f"build a {have.title} model (see `tresnet info`), or pick the right file")
    if held and built and held != built and not getattr(model, "arch_overridden", False):
        models = " or ".join(name for name, c in MODEL_CONFIGS.items() if c["arch"] == held)
        raise CheckpointError(f"{ckpt.format} checkpoint {ckpt.path} holds a {held}, the model is a {built} "
                              f"({cfg.get('model')}): build {models}, or pick the right file")


def _mismatch(state: dict, target: dict) -> tuple[list[str], list[str], list[str]]:
    """Missing, unexpected and wrong-shaped keys of ``state`` against the model's ``target``."""
    optional = {k for k in target if k.endswith("num_batches_tracked")}  # absent from official files
    missing = [k for k in target if k not in state and k not in optional]
    unexpected = [k for k in state if k not in target]
    wrong_shape = [k for k in state if k in target and state[k].shape != target[k].shape]
    return missing, unexpected, wrong_shape


def _mismatch_message(ckpt: Checkpoint, model: nn.Module, state: dict, target: dict, problems) -> str:
    missing, unexpected, wrong_shape = problems
    parts = []
    if missing:
        parts.append(f"missing keys: {_examples(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_examples(unexpected)}")
    if wrong_shape:
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in sorted(wrong_shape)[:3]]
        parts.append(f"shape mismatches: {'; '.join(shapes)}")
    return (f"{ckpt.format} checkpoint {ckpt.path} does not fit the model ({'; '.join(parts)}); likely cause: "
            f"{_likely_cause(ckpt, model)}")


def load_state(model: nn.Module, ckpt: Checkpoint, strict: bool = True, *,
               allow_head_mismatch: bool = False) -> None:
    """Load a checkpoint already read (:func:`open_checkpoint`) into ``model``; see :func:`load_checkpoint`."""
    if strict:
        _check_family(ckpt, model)
    state, target = ckpt.state_dict, model.state_dict()
    if getattr(model, "head", 1) is None:  # features_only: no classifier to load
        state = _without_head(state)
    state, target = _match_head(state, target, ckpt, allow_head_mismatch)
    problems = _mismatch(state, target)
    if any(problems):
        message = _mismatch_message(ckpt, model, state, target, problems)
        if strict:
            raise CheckpointError(message)
        warnings.warn(message + "; loading the matching tensors only (strict=False)", stacklevel=3)
        state = {k: v for k, v in state.items() if k in target and k not in problems[2]}
    model.load_state_dict(state, strict=False)


def load_checkpoint(model: nn.Module, path: str | os.PathLike, strict: bool = True, *,
                    allow_head_mismatch: bool = False, weights_only: bool = True) -> str:
    """Load a checkpoint of any supported format into ``model``; return the format detected.

    A classifier of another size is replaced by a fresh one only with ``allow_head_mismatch``
    (with a warning). Any other mismatch raises :class:`CheckpointError` naming the format, the
    missing and unexpected keys and the likely cause; ``strict=False`` loads what matches and warns.
    """
    ckpt = open_checkpoint(path, weights_only=weights_only)
    load_state(model, ckpt, strict, allow_head_mismatch=allow_head_mismatch)
    return ckpt.format


# --- writing --------------------------------------------------------------------------------------


def _recorded_preprocessing(cfg: Mapping) -> dict[str, str]:
    """The evaluation preprocessing of a model's configuration (and a multi-label decision threshold), as
    string metadata: what :func:`tresnet.create_model` puts back into ``pretrained_cfg``."""
    keys = [key for key in PREPROCESSING_KEYS if key in cfg]
    out = {"preprocessing": json.dumps({key: list(cfg[key]) if isinstance(cfg[key], tuple) else cfg[key]
                                        for key in keys})} if keys else {}
    if cfg.get("threshold") is not None:
        out["threshold"] = str(float(cfg["threshold"]))
    return out


def checkpoint_metadata(model: nn.Module, class_names: Sequence[str] | None = None,
                        extra: Mapping | None = None) -> dict[str, str]:
    """The string metadata :func:`save_checkpoint` writes: format, version, ``family``, ``model``, ``arch``,
    classes, ``task`` and ``head`` (empty when the model does not say, e.g. a features-only model's head),
    and the model's evaluation preprocessing (``preprocessing``: input size, crop, interpolation,
    mean/std) with a multi-label ``threshold`` when the configuration has one, and the ``network`` configuration of
    a task that builds its own (a detector's); ``extra`` overrides."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    meta = {
        "format": FORMAT_OURS,
        "tresnet_version": __version__,
        "family": str(cfg.get("family", "")),
        "model": str(cfg.get("model", "")),
        "arch": str(cfg.get("arch", "")),
        "num_classes": str(getattr(model, "num_classes", "")),
        "in_chans": str(getattr(model, "in_chans", 3)),
        "norm": str(getattr(model, "norm", "")),
        "task": str(cfg.get("task") or ""),
        "head": str(cfg.get("head") or ""),
        **_recorded_preprocessing(cfg),
    }
    if cfg.get("network"):  # what rebuilds a network beyond its backbone and head kind (a detector's pyramid...)
        meta["network"] = json.dumps(cfg["network"])
    if class_names is not None:
        meta["class_names"] = json.dumps(list(class_names))
    for key, value in (extra or {}).items():
        meta[key] = value if isinstance(value, str) else json.dumps(value)
    return meta


def save_checkpoint(model: nn.Module, path: str | os.PathLike, *, class_names: list[str] | None = None,
                    metadata: dict | None = None) -> Path:
    """Write ``model``'s weights as safetensors with metadata naming its model and ``arch``, atomically.

    Raises :class:`CheckpointError` for class names that do not match the model, or a path that
    cannot be written.
    """
    from safetensors.torch import save_file

    if class_names is not None and len(class_names) != getattr(model, "num_classes", len(class_names)):
        raise CheckpointError(f"{len(class_names)} class names for a model with {model.num_classes} classes")
    meta = checkpoint_metadata(model, class_names, metadata)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    try:
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    except FileWriteError as e:
        raise CheckpointWriteError(str(e), path=e.path, reason=e.reason) from e


__all__ = ["FORMAT_OFFICIAL", "FORMAT_OURS", "FORMAT_TIMM", "Checkpoint", "CheckpointInfo", "checkpoint_metadata",
           "detect_format", "head_of", "load_checkpoint", "load_state", "open_checkpoint", "read_checkpoint",
           "read_checkpoint_metadata", "recorded_head", "save_checkpoint"]
