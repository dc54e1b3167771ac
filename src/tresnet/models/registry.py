"""Model names -> network, preprocessing and published results; ``create_model`` and ``list_models``.

One table (:data:`MODEL_CONFIGS`) holds everything per name; nothing else repeats it. Two words name
two things everywhere: ``model`` is a registered name (``tresnet_m_448``), ``arch`` the network variant it
builds (``tresnet_m``, a key of :data:`tresnet.models.tresnet.VARIANTS`).
"""

from __future__ import annotations

import fnmatch
import warnings
from copy import deepcopy
from dataclasses import replace

from torch import nn

from tresnet.errors import ModelNotFoundError
from tresnet.layers import NORMS
from tresnet.models.tresnet import VARIANTS, TResNet

# TResNet's preprocessing: RGB in [0, 1] with no mean/std normalisation (the official release's
# validation code, and timm's tresnet configs: mean 0, std 1). The 224 models are evaluated with a
# bilinear resize to 224 / 0.875 and a centre crop; the 448 ones squash the image to 448x448.
_NO_NORMALISATION = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
_CFG_224 = dict(input_size=(3, 224, 224), crop_pct=0.875, crop_mode="center", interpolation="bilinear",
                **_NO_NORMALISATION)
_CFG_448 = dict(input_size=(3, 448, 448), crop_pct=1.0, crop_mode="squash", interpolation="bilinear",
                **_NO_NORMALISATION)

# name -> network, preprocessing, published ImageNet-1k top-1 (paper, Tables 1 and 3; v2: the
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


class PretrainedCfg(dict):
    """A model's configuration (a plain dict) that still answers the deprecated key ``architecture``."""

    _DEPRECATED = {"architecture": "model"}

    def __missing__(self, key):
        if key in self._DEPRECATED:
            new = self._DEPRECATED[key]
            warnings.warn(f"pretrained_cfg[{key!r}] is deprecated: use pretrained_cfg[{new!r}]",
                          DeprecationWarning, stacklevel=2)
            return self[new]
        raise KeyError(key)

    def get(self, key, default=None):
        return self[key] if key in self or key in self._DEPRECATED else default


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the models this package builds that match the shell-style ``pattern``."""
    return sorted(n for n in MODEL_CONFIGS if fnmatch.fnmatch(n, pattern))


def get_pretrained_cfg(name: str) -> dict:
    """The configuration of model ``name``: ``model``, ``arch``, preprocessing, published top-1.

    Raises :class:`~tresnet.errors.ModelNotFoundError` for an unknown name.
    """
    if name not in MODEL_CONFIGS:
        raise ModelNotFoundError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    cfg = PretrainedCfg(model=name, **deepcopy(MODEL_CONFIGS[name]))
    cfg["classifier"] = "head.fc"
    cfg["first_conv"] = "body.conv1.conv"
    return cfg


def models_of_arch(arch: str) -> list[str]:
    """The registered models that build network ``arch`` (e.g. ``tresnet_m`` and ``tresnet_m_448``)."""
    return [name for name in list_models() if MODEL_CONFIGS[name]["arch"] == arch]


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
        arch = replace(arch, **arch_overrides)
    model = TResNet(arch, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate,
                    drop_path_rate=drop_path_rate, norm=norm, features_only=features_only,
                    out_indices=out_indices, memory_efficient=memory_efficient)
    cfg["num_classes"] = 0 if features_only else num_classes
    cfg["input_size"] = (in_chans, *cfg["input_size"][1:])
    cfg["norm"] = norm
    model.pretrained_cfg = cfg
    model.checkpoint_info = None
    return model
