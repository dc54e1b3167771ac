"""Building blocks of TResNet: small modules that know nothing of the models built from them."""

from tresnet.layers.anti_alias import AntiAliasDownsample, blur_filter
from tresnet.layers.conv_norm_act import ConvNormAct
from tresnet.layers.frozen_norm import FrozenNormAct, freeze_norms
from tresnet.layers.inplace_abn import InPlaceABN, InPlaceABNSync
from tresnet.layers.ml_decoder import MLDecoderHead
from tresnet.layers.norm_act import NORMS, BatchNormAct2d, create_norm_act
from tresnet.layers.pooling import FastGlobalAvgPool
from tresnet.layers.squeeze_excite import SqueezeExcite
from tresnet.layers.stem import SpaceToDepth, space_to_depth

__all__ = [
    "NORMS",
    "AntiAliasDownsample",
    "BatchNormAct2d",
    "ConvNormAct",
    "FastGlobalAvgPool",
    "FrozenNormAct",
    "InPlaceABN",
    "InPlaceABNSync",
    "MLDecoderHead",
    "SpaceToDepth",
    "SqueezeExcite",
    "blur_filter",
    "create_norm_act",
    "freeze_norms",
    "space_to_depth",
]
