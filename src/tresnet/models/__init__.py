"""Model families (one file each: TResNet, GENet), their checkpoint layouts, and the registry of names."""

from tresnet.models.family import CheckpointFormat, Family
from tresnet.models.genet import GENet, GENetArch, GENetStage
from tresnet.models.registry import (
    FAMILIES,
    MODEL_CONFIGS,
    build_model,
    family_of,
    family_of_arch,
    get_family,
    get_pretrained_cfg,
    list_models,
    models_of_arch,
    resolve_norm,
)
from tresnet.models.tresnet import VARIANTS, BasicBlock, Bottleneck, TResNet, TResNetArch

__all__ = [
    "FAMILIES",
    "MODEL_CONFIGS",
    "VARIANTS",
    "BasicBlock",
    "Bottleneck",
    "CheckpointFormat",
    "Family",
    "GENet",
    "GENetArch",
    "GENetStage",
    "TResNet",
    "TResNetArch",
    "build_model",
    "family_of",
    "family_of_arch",
    "get_family",
    "get_pretrained_cfg",
    "list_models",
    "models_of_arch",
    "resolve_norm",
]
