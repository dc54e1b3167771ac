"""Model families: one file each, plus the registry of names."""

from tresnet.models.registry import (
    MODEL_CONFIGS,
    PretrainedCfg,
    build_model,
    get_pretrained_cfg,
    list_models,
    models_of_arch,
)
from tresnet.models.tresnet import VARIANTS, BasicBlock, Bottleneck, TResNet, TResNetArch

__all__ = [
    "MODEL_CONFIGS",
    "PretrainedCfg",
    "VARIANTS",
    "BasicBlock",
    "Bottleneck",
    "TResNet",
    "TResNetArch",
    "build_model",
    "get_pretrained_cfg",
    "list_models",
    "models_of_arch",
]
