"""``create_model``: build a TResNet and, if asked, load its weights from a local file."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from tresnet.checkpoint import load_checkpoint, read_checkpoint_metadata
from tresnet.errors import CheckpointError
from tresnet.models.registry import build_model, get_pretrained_cfg

# File names looked for in the cache, per model name: ours, the official release's, timm's hub layout.
_CACHE_PATTERNS = ("{name}.safetensors", "{name}.pth", "{name}.pth.tar", "{name}.bin",
                   "{name}/model.safetensors", "{name}/pytorch_model.bin")


def cache_dir() -> Path:
    """Where ``pretrained=True`` looks: ``$TRESNET_HOME``, else ``~/.cache/tresnet``."""
    return Path(os.environ.get("TRESNET_HOME", "~/.cache/tresnet")).expanduser()


def pretrained_file_names(name: str) -> list[str]:
    """The file names accepted in the cache for model ``name``."""
    return [p.format(name=name) for p in _CACHE_PATTERNS]


def find_pretrained(name: str) -> Path:
    """The cached weights file of ``name``; :class:`CheckpointError` saying where to put it if absent."""
    root = cache_dir()
    for candidate in pretrained_file_names(name):
        path = root / candidate
        if path.is_file():
            return path
    accepted = ", ".join(pretrained_file_names(name))
    raise CheckpointError(
        f"no pretrained weights for {name} in {root} (this package never downloads): put the official "
        f"release file, timm's weights or a tresnet checkpoint there as one of: {accepted}; "
        f"or set TRESNET_HOME to the folder that holds it, or pass checkpoint_path"
    )


def create_model(name: str, *, pretrained: bool = False, checkpoint_path: str | os.PathLike | None = None,
                 num_classes: int | None = None, in_chans: int = 3, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, features_only: bool = False,
                 out_indices: tuple[int, ...] = (1, 2, 3, 4), norm: str = "inplace_abn",
                 memory_efficient: bool = False, **arch_overrides) -> nn.Module:
    """Build TResNet ``name`` (see :func:`tresnet.list_models`), optionally with weights.

    ``pretrained=True`` loads ``name``'s file from :func:`cache_dir`; ``checkpoint_path`` loads that
    file (official, timm or tresnet format). ``num_classes=None`` means the checkpoint's number of
    classes, else 1000; a different number loads the backbone and a fresh head, with a warning.
    ``norm`` is ``"inplace_abn"`` (default), ``"inplace_abn_sync"`` or ``"bn"`` (plain BatchNorm).
    ``memory_efficient=True`` trains with about 0.54x the activation memory of plain BatchNorm (0.75x
    without it) for a few percent more compute (In-Place ABN norms only).

    Raises :class:`~tresnet.errors.ModelNotFoundError` for an unknown name and
    :class:`~tresnet.errors.CheckpointError` for a missing or mismatched checkpoint.
    """
    get_pretrained_cfg(name)  # unknown names fail before any file is touched
    path = None
    if checkpoint_path is not None:
        path = Path(checkpoint_path).expanduser()
    elif pretrained:
        path = find_pretrained(name)
    ckpt_classes = None
    if path is not None:
        ckpt_classes = read_checkpoint_metadata(path).get("num_classes")
    classes = num_classes if num_classes is not None else (ckpt_classes or 1000)
    model = build_model(name, num_classes=classes, in_chans=in_chans, drop_rate=drop_rate,
                        drop_path_rate=drop_path_rate, norm=norm, features_only=features_only,
                        out_indices=out_indices, memory_efficient=memory_efficient, **arch_overrides)
    if path is not None:
        fmt = load_checkpoint(model, path, allow_head_mismatch=num_classes is not None)
        model.pretrained_cfg["checkpoint"] = str(path)
        model.pretrained_cfg["checkpoint_format"] = fmt
    return model
