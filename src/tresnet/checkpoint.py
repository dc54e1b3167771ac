"""Checkpoints: read the official release, timm's files and our own; write ours atomically.

Our in-memory names are timm's (``convN.conv`` / ``convN.bn``, plain BatchNorm weights), so a timm
state dict needs no conversion and an official one needs :func:`convert_official`. Our own files are
safetensors with metadata naming the architecture and classes.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from tresnet.errors import CheckpointError

FORMAT_OURS = "tresnet"
FORMAT_TIMM = "timm"
FORMAT_OFFICIAL = "official"
INPLACE_ABN_EPS = 1e-5  # official weights are In-Place ABN weights: the BN scale is |w| + 1e-5
_SAFETENSORS_SUFFIXES = (".safetensors",)


# --- reading --------------------------------------------------------------------------------------


def _is_safetensors(path: Path) -> bool:
    if path.suffix in _SAFETENSORS_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: 8-byte little-endian header length, then a JSON object
    return len(head) == 9 and head[8:9] == b"{"


def _read_file(path: Path, weights_only: bool) -> tuple[dict, dict]:
    """The raw object of a checkpoint file and its safetensors metadata (empty for pickles)."""
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: check the path")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    try:
        if _is_safetensors(path):
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            return tensors, metadata
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file for the user
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = ("; if you trust this file, load it with weights_only=False"
                if "weights_only" in str(e).lower() or "weights only" in str(e).lower() else "")
        raise CheckpointError(f"cannot read checkpoint {path}: {first_line[:200]}{hint}") from e
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


def convert_official(state_dict: dict) -> dict:
    """Official release names and In-Place ABN weights -> our (timm's) names and plain BN weights."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith(".filt"):  # fixed blur filter: ours is a non-persistent buffer
            continue
        key = re.sub(r"conv(\d+)\.0\.0\.", r"conv\1.conv.", key)  # stride-2 conv with anti-aliasing
        key = re.sub(r"conv(\d+)\.0\.1\.", r"conv\1.bn.", key)
        key = re.sub(r"conv(\d+)\.0\.", r"conv\1.conv.", key)
        key = re.sub(r"conv(\d+)\.1\.", r"conv\1.bn.", key)
        key = re.sub(r"downsample\.(\d+)\.0\.", r"downsample.\1.conv.", key)
        key = re.sub(r"downsample\.(\d+)\.1\.", r"downsample.\1.bn.", key)
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


def read_checkpoint(path: str | os.PathLike, *, weights_only: bool = True) -> tuple[dict, str, dict]:
    """Read any supported checkpoint: ``(state_dict in our names, format, metadata)``."""
    path = Path(path).expanduser()
    obj, metadata = _read_file(path, weights_only)
    state = _unwrap(obj)
    fmt = detect_format(state, metadata)
    if fmt == FORMAT_OFFICIAL:
        state = convert_official(state)
    meta = dict(metadata)
    if "class_names" in meta:
        meta["class_names"] = json.loads(meta["class_names"])
    for key in ("num_classes", "in_chans"):
        if key in meta:
            meta[key] = int(meta[key])
    if "head.fc.weight" in state:
        meta.setdefault("num_classes", int(state["head.fc.weight"].shape[0]))
    meta["format"] = fmt
    meta.setdefault("architecture", infer_architecture(state))
    return state, fmt, meta


def read_checkpoint_metadata(path: str | os.PathLike) -> dict:
    """Format, architecture, number of classes and (for our files) class names of a checkpoint."""
    return read_checkpoint(path)[2]


def infer_architecture(state_dict: dict) -> str | None:
    """The TResNet variant whose shapes match ``state_dict`` (in our names), or None."""
    from tresnet.models.tresnet import VARIANTS

    conv1 = state_dict.get("body.conv1.conv.weight")
    if conv1 is None:
        return None
    blocks = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in state_dict if (m := re.match(rf"body\.layer{stage}\.(\d+)\.", k))}
        blocks.append(max(idx) + 1 if idx else 0)
    planes = conv1.shape[0]
    v2 = "body.layer1.0.conv3.conv.weight" in state_dict
    for name, arch in VARIANTS.items():
        arch_planes = int(64 * arch.width_factor) // (8 if arch.v2 else 1) * (8 if arch.v2 else 1)
        if tuple(blocks) == arch.layers and arch_planes == planes and arch.v2 == v2:
            return name
    return None


# --- loading into a model -------------------------------------------------------------------------


def _examples(keys, limit: int = 5) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_checkpoint(model: nn.Module, path: str | os.PathLike, strict: bool = True, *,
                    allow_head_mismatch: bool = False, weights_only: bool = True) -> str:
    """Load a checkpoint of any supported format into ``model``; return the format detected.

    A classifier of another size is replaced by a fresh one only with ``allow_head_mismatch``
    (with a warning). Any other mismatch raises :class:`CheckpointError` naming the format, the
    missing and unexpected keys and the likely cause; ``strict=False`` loads what matches and warns.
    """
    state, fmt, meta = read_checkpoint(path, weights_only=weights_only)
    target = model.state_dict()
    if getattr(model, "head", 1) is None:  # features_only: no classifier to load
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    head_mismatch = ("head.fc.weight" in state and "head.fc.weight" in target
                     and state["head.fc.weight"].shape[0] != target["head.fc.weight"].shape[0])
    if head_mismatch:
        if not allow_head_mismatch:
            raise CheckpointError(
                f"{fmt} checkpoint {path} has a classifier for {state['head.fc.weight'].shape[0]} classes, "
                f"the model has {target['head.fc.weight'].shape[0]}: build the model with "
                f"num_classes={state['head.fc.weight'].shape[0]}, or ask for a different num_classes "
                f"to load the backbone with a fresh head"
            )
        warnings.warn(
            f"checkpoint {path} has a classifier for {state['head.fc.weight'].shape[0]} classes; loading the "
            f"backbone only, with a freshly initialised head for {target['head.fc.weight'].shape[0]} classes",
            stacklevel=2,
        )
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        target = {k: v for k, v in target.items() if not k.startswith("head.")}

    optional = {k for k in target if k.endswith("num_batches_tracked")}  # absent from official files
    missing = [k for k in target if k not in state and k not in optional]
    unexpected = [k for k in state if k not in target]
    wrong_shape = [k for k in state if k in target and state[k].shape != target[k].shape]
    if missing or unexpected or wrong_shape:
        ckpt_arch = meta.get("architecture")
        model_arch = getattr(model, "pretrained_cfg", {}).get("arch")
        if ckpt_arch and model_arch and ckpt_arch != model_arch:
            cause = f"the checkpoint is a {ckpt_arch}, the model a {model_arch}: build a {ckpt_arch}"
        elif ckpt_arch is None:
            cause = "the checkpoint matches no TResNet variant: is it the right file?"
        else:
            cause = "same variant but different layer sizes: check in_chans and the model options"
        parts = []
        if missing:
            parts.append(f"missing keys: {_examples(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_examples(unexpected)}")
        if wrong_shape:
            shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in sorted(wrong_shape)[:3]]
            parts.append(f"shape mismatches: {'; '.join(shapes)}")
        message = f"{fmt} checkpoint {path} does not fit the model ({'; '.join(parts)}); likely cause: {cause}"
        if strict:
            raise CheckpointError(message)
        warnings.warn(message + "; loading the matching tensors only (strict=False)", stacklevel=2)
        state = {k: v for k, v in state.items() if k in target and k not in wrong_shape}
    model.load_state_dict(state, strict=False)
    return fmt


# --- writing --------------------------------------------------------------------------------------


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then rename the result over ``path``, so readers never see half a file."""
    path = Path(path).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {e.strerror or e}") from e
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_checkpoint(model: nn.Module, path: str | os.PathLike, *, class_names: list[str] | None = None,
                    metadata: dict | None = None) -> Path:
    """Write ``model``'s weights as safetensors with metadata naming its architecture, atomically."""
    from safetensors.torch import save_file

    from tresnet import __version__

    cfg = getattr(model, "pretrained_cfg", {}) or {}
    if class_names is not None and len(class_names) != getattr(model, "num_classes", len(class_names)):
        raise CheckpointError(f"{len(class_names)} class names for a model with {model.num_classes} classes")
    meta = {
        "format": FORMAT_OURS,
        "tresnet_version": __version__,
        "architecture": str(cfg.get("arch", "")),
        "model": str(cfg.get("architecture", "")),
        "num_classes": str(getattr(model, "num_classes", "")),
        "in_chans": str(getattr(model, "in_chans", 3)),
        "norm": str(getattr(model, "norm", "")),
    }
    if class_names is not None:
        meta["class_names"] = json.dumps(list(class_names))
    for key, value in (metadata or {}).items():
        meta[key] = value if isinstance(value, str) else json.dumps(value)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
