"""TResNet's published checkpoint layouts -> our names (timm's), and the variant a state dict holds.

timm's files use our names already. The official release (Alibaba-MIIL/TResNet) names the conv and norm of
each unit ``convN.0`` / ``convN.1`` (``convN.0.0`` / ``convN.0.1`` where the conv is anti-aliased) and
stores In-Place ABN weights: the BatchNorm scale is ``|weight| + 1e-5``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

INPLACE_ABN_EPS = 1e-5  # official weights are In-Place ABN weights: the BN scale is |w| + 1e-5
OFFICIAL_MARKER = "body.conv1.0.weight"
TIMM_MARKER = "body.conv1.conv.weight"


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
        if aa is not None and is_aa:
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


def _num_blocks(names, stage: int) -> int:
    idx = {int(m.group(1)) for k in names if (m := re.match(rf"body\.layer{stage}\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def infer_architecture(state_dict: Mapping, variants: Mapping) -> str | None:
    """The TResNet variant (``arch``, a name of ``variants``: the family's variants) whose shapes match
    ``state_dict`` (in our names), or None. The values may be tensors or shapes.
    """
    conv1 = state_dict.get("body.conv1.conv.weight")
    if conv1 is None:
        return None
    blocks = tuple(_num_blocks(state_dict, stage) for stage in range(1, 5))
    planes = conv1.shape[0] if isinstance(conv1, torch.Tensor) else conv1[0]
    v2 = "body.layer1.0.conv3.conv.weight" in state_dict
    for name, arch in variants.items():
        arch_planes = int(64 * arch.width_factor) // (8 if arch.v2 else 1) * (8 if arch.v2 else 1)
        if blocks == arch.layers and arch_planes == planes and arch.v2 == v2:
            return name
    return None


__all__ = ["INPLACE_ABN_EPS", "OFFICIAL_MARKER", "TIMM_MARKER", "convert_official", "infer_architecture",
           "official_key", "to_official"]
