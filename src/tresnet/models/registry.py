"""Model names -> architecture, preprocessing and published results; ``create_model`` and ``list_models``.

One table (:data:`MODEL_CONFIGS`) holds everything per name; nothing else repeats it.
"""

from __future__ import annotations

import fnmatch
from copy import deepcopy

from torch import nn

from tresnet.errors import ModelNotFoundError
from tresnet.layers import NORMS
from tresnet.models.tresnet import VARIANTS, TResNet

# Preprocessing of SPEC section 3: RGB in [0, 1], no mean/std normalisation.
_NO_NORMALISATION = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
_CFG_224 = dict(input_size=(3, 224, 224), crop_pct=0.875, crop_mode="center", interpolation="bilinear",
                **_NO_NORMALISATION)
_CFG_448 = dict(input_size=(3, 448, 448), crop_pct=1.0, crop_mode="squash", interpolation="bilinear",
                **_NO_NORMALISATION)

# name -> architecture, preprocessing, published ImageNet-1k top-1 (paper, Tables 1 and 3; v2: the
# official model zoo, ImageNet-21k pretraining)
MODEL_CONFIGS: dict[str, dict] = {
    "tresnet_m": dict(arch="tresnet_m", **_CFG_224, top1=80.8),
    "tresnet_l": dict(arch="tresnet_l", **_CFG_224, top1=81.5),
    "tresnet_xl": dict(arch="tresnet_xl", **_CFG_224, top1=82.0),
    "tresnet_v2_l": dict(arch="tresnet_v2_l", **_CFG_224, top1=83.9),
    "tresnet_m_448": dict(arch="tresnet_m", **_CFG_448, top1=83.2),
    "tresnet_l_448": dict(arch="tresnet_l", **_CFG_448, top1=83.8),
    "tresnet_xl_448": dict(arch="tresnet_xl", **_CFG_448, top1=84.3),
}


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the models this package builds that match the shell-style ``pattern``."""
    return sorted(n for n in MODEL_CONFIGS if fnmatch.fnmatch(n, pattern))


def get_pretrained_cfg(name: str) -> dict:
    """The configuration (architecture, preprocessing, published top-1) of model ``name``."""
    if name not in MODEL_CONFIGS:
        raise ModelNotFoundError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    cfg = deepcopy(MODEL_CONFIGS[name])
    cfg["architecture"] = name
    cfg["classifier"] = "head.fc"
    cfg["first_conv"] = "body.conv1.conv"
    return cfg


def build_model(name: str, *, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0,
                drop_path_rate: float = 0.0, norm: str = "inplace_abn", features_only: bool = False,
                out_indices: tuple[int, ...] = (1, 2, 3, 4), memory_efficient: bool = False,
                **arch_overrides) -> nn.Module:
    """A freshly initialised model ``name`` (no weights loaded). See :func:`tresnet.create_model`."""
    cfg = get_pretrained_cfg(name)
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    arch = VARIANTS[cfg["arch"]]
    if arch_overrides:
        from dataclasses import replace

        arch = replace(arch, **arch_overrides)
    model = TResNet(arch, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate,
                    drop_path_rate=drop_path_rate, norm=norm, features_only=features_only,
                    out_indices=out_indices, memory_efficient=memory_efficient)
    cfg["num_classes"] = 0 if features_only else num_classes
    cfg["input_size"] = (in_chans, *cfg["input_size"][1:])
    cfg["norm"] = norm
    model.pretrained_cfg = cfg
    return model
