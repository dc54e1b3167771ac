"""Model families: one file each, plus the registry of names."""

from tresnet.models.registry import MODEL_CONFIGS, build_model, get_pretrained_cfg, list_models
from tresnet.models.tresnet import VARIANTS, BasicBlock, Bottleneck, TResNet, TResNetArch

__all__ = [
    "MODEL_CONFIGS",
    "VARIANTS",
    "BasicBlock",
    "Bottleneck",
    "TResNet",
    "TResNetArch",
    "build_model",
    "get_pretrained_cfg",
    "list_models",
]
