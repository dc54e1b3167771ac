"""Checkpoints: read the official release, timm's files and our own; write ours atomically.

Our in-memory names are timm's (``convN.conv`` / ``convN.bn``, plain BatchNorm weights), so a timm
state dict needs no conversion and an official one needs :func:`convert_official`. Our own files are
safetensors whose metadata names the model (``model``: the registered name, e.g. ``tresnet_m_448``), the
network it builds (``arch``: e.g. ``tresnet_m``) and the classes.

A file is read once: :func:`read_checkpoint` decodes its tensors, :func:`read_checkpoint_metadata` reads
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

import torch
from torch import nn

from tresnet.errors import CheckpointError, FileWriteError
from tresnet.files import atomic_write  # re-exported: code written before tresnet.files imports it from here
from tresnet.version import __version__

FORMAT_OURS = "tresnet"
FORMAT_TIMM = "timm"
FORMAT_OFFICIAL = "official"
INPLACE_ABN_EPS = 1e-5  # official weights are In-Place ABN weights: the BN scale is |w| + 1e-5
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


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: check the path")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")


def _unreadable(path: Path, error: Exception) -> CheckpointError:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    hint = ("; if you trust this file, load it with weights_only=False"
            if "weights_only" in str(error).lower() or "weights only" in str(error).lower() else "")
    return CheckpointError(f"cannot read checkpoint {path}: {first_line[:200]}{hint}")


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


def detect_format(state_dict: dict, metadata: dict | None = None) -> str:
    """``"tresnet"``, ``"timm"`` or ``"official"``; :class:`CheckpointError` for anything else."""
    if metadata and metadata.get("format") == FORMAT_OURS:
        return FORMAT_OURS
    if "body.conv1.conv.weight" in state_dict:
        return FORMAT_TIMM
    if "body.conv1.0.weight" in state_dict:
        return FORMAT_OFFICIAL
    sample = ", ".join(list(state_dict)[:4]) or "no tensors"
    raise CheckpointError(
        f"not a TResNet checkpoint (keys start: {sample}); expected the official release "
        f"('body.conv1.0.weight'), timm ('body.conv1.conv.weight') or a file saved by tresnet"
    )


def official_key(key: str) -> str:
    """An official release key in our (timm's) names, e.g. ``body.layer1.0.conv1.0.weight`` -> ``...conv1.conv.weight``."""
    key = re.sub(r"conv(\d+)\.0\.0\.", r"conv\1.conv.", key)  # stride-2 conv with anti-aliasing
    key = re.sub(r"conv(\d+)\.0\.1\.", r"conv\1.bn.", key)
    key = re.sub(r"conv(\d+)\.0\.", r"conv\1.conv.", key)
    key = re.sub(r"conv(\d+)\.1\.", r"conv\1.bn.", key)
    key = re.sub(r"downsample\.(\d+)\.0\.", r"downsample.\1.conv.", key)
    return re.sub(r"downsample\.(\d+)\.1\.", r"downsample.\1.bn.", key)


def convert_official(state_dict: dict) -> dict:
    """Official release names and In-Place ABN weights -> our (timm's) names and plain BN weights."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith(".filt"):  # fixed blur filter: ours is a non-persistent buffer
            continue
        key = official_key(key)
        if key.endswith("bn.weight"):
            value = value.abs() + INPLACE_ABN_EPS
        out[key] = value
    return out


def to_official(state_dict: dict) -> dict:
    """Our (timm's) names -> the official release's, with In-Place ABN weights (for tests and export).

    Needs every BN weight ``>= 1e-5``: smaller ones have no In-Place ABN equivalent.
    """
    out = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.endswith("bn.weight"):
            value = value - INPLACE_ABN_EPS
        aa = re.match(r"(.*layer\d+\.0\.conv\d+)\.(conv|bn)\.(.*)", key)
        is_aa = aa is not None and (aa.group(1) + ".aa") in _aa_prefixes(state_dict)
        if is_aa:
            key = f"{aa.group(1)}.0.{0 if aa.group(2) == 'conv' else 1}.{aa.group(3)}"
        else:
            key = re.sub(r"conv(\d+)\.conv\.", r"conv\1.0.", key)
            key = re.sub(r"conv(\d+)\.bn\.", r"conv\1.1.", key)
            key = re.sub(r"downsample\.(\d+)\.conv\.", r"downsample.\1.0.", key)
            key = re.sub(r"downsample\.(\d+)\.bn\.", r"downsample.\1.1.", key)
        out[key] = value
    return out


def _aa_prefixes(state_dict: dict) -> set[str]:
    """Convs that downsample with anti-aliasing: the first block's strided 3x3 of layers 2-4."""
    prefixes = set()
    for stage in (2, 3, 4):
        bottleneck = f"body.layer{stage}.0.conv3.conv.weight" in state_dict
        prefixes.add(f"body.layer{stage}.0.conv{2 if bottleneck else 1}.aa")
    return prefixes


def _describe_metadata(raw: Mapping[str, str], shapes: Mapping[str, Sequence[int]], fmt: str) -> dict:
    """Typed metadata from a file's string metadata and its tensor shapes (in our names)."""
    meta = {_LEGACY_METADATA_KEYS.get(k, k): v for k, v in raw.items()}
    if "class_names" in meta:
        meta["class_names"] = json.loads(meta["class_names"])
    for key in ("num_classes", "in_chans"):
        if key in meta and str(meta[key]).isdigit():
            meta[key] = int(meta[key])
        elif key in meta:
            del meta[key]  # written empty by a model without that attribute
    if "head.fc.weight" in shapes:
        meta.setdefault("num_classes", int(shapes["head.fc.weight"][0]))
    meta["format"] = fmt
    if not meta.get("arch"):
        meta["arch"] = infer_architecture(shapes)
    return meta


def open_checkpoint(path: str | os.PathLike, *, weights_only: bool = True) -> Checkpoint:
    """Read any supported checkpoint once: tensors in our names, format and metadata.

    Raises :class:`CheckpointError` for a missing, unreadable or non-TResNet file.
    """
    path = Path(path).expanduser()
    obj, raw_meta = _read_file(path, weights_only)
    state = _unwrap(obj)
    fmt = detect_format(state, raw_meta)
    if fmt == FORMAT_OFFICIAL:
        state = convert_official(state)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    return Checkpoint(path, state, fmt, _describe_metadata(raw_meta, shapes, fmt))


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
    fmt = detect_format(dict.fromkeys(shapes), raw)
    if fmt == FORMAT_OFFICIAL:
        shapes = {official_key(k): v for k, v in shapes.items()}
    return _describe_metadata(raw, shapes, fmt)


def _num_blocks(names, stage: int) -> int:
    idx = {int(m.group(1)) for k in names if (m := re.match(rf"body\.layer{stage}\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def infer_architecture(state_dict: Mapping) -> str | None:
    """The TResNet variant (``arch``) whose shapes match ``state_dict`` (in our names), or None.

    The values may be tensors or shapes.
    """
    from tresnet.models.tresnet import VARIANTS

    conv1 = state_dict.get("body.conv1.conv.weight")
    if conv1 is None:
        return None
    blocks = tuple(_num_blocks(state_dict, stage) for stage in range(1, 5))
    planes = conv1.shape[0] if isinstance(conv1, torch.Tensor) else conv1[0]
    v2 = "body.layer1.0.conv3.conv.weight" in state_dict
    for name, arch in VARIANTS.items():
        arch_planes = int(64 * arch.width_factor) // (8 if arch.v2 else 1) * (8 if arch.v2 else 1)
        if blocks == arch.layers and arch_planes == planes and arch.v2 == v2:
            return name
    return None


# --- loading into a model -------------------------------------------------------------------------


def _examples(keys, limit: int = 5) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _without_head(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def _match_head(state: dict, target: dict, ckpt: Checkpoint, allow_head_mismatch: bool) -> tuple[dict, dict]:
    """``state`` and ``target`` without their classifiers when the checkpoint's has another size."""
    key = "head.fc.weight"
    if key not in state or key not in target or state[key].shape[0] == target[key].shape[0]:
        return state, target
    have, want = state[key].shape[0], target[key].shape[0]
    if not allow_head_mismatch:
        raise CheckpointError(
            f"{ckpt.format} checkpoint {ckpt.path} has a classifier for {have} classes, the model has {want}: "
            f"build the model with num_classes={have}, or ask for a different num_classes to load the backbone "
            f"with a fresh head"
        )
    warnings.warn(f"checkpoint {ckpt.path} has a classifier for {have} classes; loading the backbone only, "
                  f"with a freshly initialised head for {want} classes", stacklevel=4)
    return _without_head(state), _without_head(target)


def _likely_cause(ckpt: Checkpoint, model: nn.Module) -> str:
    ckpt_arch = ckpt.metadata.get("arch")
    model_arch = (getattr(model, "pretrained_cfg", None) or {}).get("arch")
    if ckpt_arch and model_arch and ckpt_arch != model_arch:
        return f"the checkpoint is a {ckpt_arch}, the model a {model_arch}: build a {ckpt_arch}"
    if ckpt_arch is None:
        return "the checkpoint matches no TResNet variant: is it the right file?"
    return "same variant but different layer sizes: check in_chans and the model options"


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


def checkpoint_metadata(model: nn.Module, class_names: Sequence[str] | None = None,
                        extra: Mapping | None = None) -> dict[str, str]:
    """The string metadata :func:`save_checkpoint` writes: format, version, ``model``, ``arch``, classes."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    meta = {
        "format": FORMAT_OURS,
        "tresnet_version": __version__,
        "model": str(cfg.get("model", "")),
        "arch": str(cfg.get("arch", "")),
        "num_classes": str(getattr(model, "num_classes", "")),
        "in_chans": str(getattr(model, "in_chans", 3)),
        "norm": str(getattr(model, "norm", "")),
    }
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
        raise CheckpointError(str(e)) from e


__all__ = ["FORMAT_OFFICIAL", "FORMAT_OURS", "FORMAT_TIMM", "Checkpoint", "CheckpointInfo", "atomic_write",
           "checkpoint_metadata", "convert_official", "detect_format", "infer_architecture", "load_checkpoint",
           "load_state", "official_key", "open_checkpoint", "read_checkpoint", "read_checkpoint_metadata",
           "save_checkpoint", "to_official"]
