"""GENet's published checkpoint layouts -> our names (timm's), and the variant a state dict holds.

The official release (idstcv/GPU-Efficient-Networks, ``GENet/__init__.py``) stores ``{"state_dict": ...}``
for its ``PlainNet``: ``module_list.N`` is the N-th entry of the network string (0 stem conv, 1 its BN,
2 ReLU, 3-7 the five stages, 8 the final 1x1 conv, 9 its BN, 10 ReLU) and ``fc_linear`` the classifier.
Inside stage N, ``conv_list.J.{0,1,3,4,6,7}`` are block J's convs and BNs in order (ReLUs at 2 and 5) and
``shortcut_list.J.{0,1}`` its projection conv and BN. BN is stored unfused, so values need no change.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_FIRST_STAGE, _LAST_STAGE = 3, 7
_XX_STAGES = (0, 1)  # the paper's table: XX, XX, BL, DW, DW
_XX_CONVS = {0: "conv1_kxk.conv", 1: "conv1_kxk.bn", 3: "conv2_kxk.conv", 4: "conv2_kxk.bn"}
_BOTTLENECK_CONVS = {0: "conv1_1x1.conv", 1: "conv1_1x1.bn", 3: "conv2_kxk.conv", 4: "conv2_kxk.bn",
                     6: "conv3_1x1.conv", 7: "conv3_1x1.bn"}
_SINGLE = {0: "stem.conv", 1: "stem.bn", 8: "final_conv.conv", 9: "final_conv.bn"}
OFFICIAL_MARKER = "module_list.0.netblock.weight"


def official_key(key: str) -> str:
    """An official release key in our names, e.g. ``module_list.5.conv_list.0.6.weight`` ->
    ``stages.2.0.conv3_1x1.conv.weight``; keys it does not know are returned unchanged."""
    if key.startswith("fc_linear."):
        return "head.fc." + key[len("fc_linear."):]
    single = re.fullmatch(r"module_list\.(\d+)\.netblock\.(.+)", key)
    if single and int(single.group(1)) in _SINGLE:
        return f"{_SINGLE[int(single.group(1))]}.{single.group(2)}"
    block = re.fullmatch(r"module_list\.(\d+)\.(conv_list|shortcut_list)\.(\d+)\.(\d+)\.(.+)", key)
    if not block or not _FIRST_STAGE <= int(block.group(1)) <= _LAST_STAGE:
        return key
    stage, kind, layer, index, rest = (int(block.group(1)) - _FIRST_STAGE, block.group(2), block.group(3),
                                       int(block.group(4)), block.group(5))
    if kind == "shortcut_list":
        part = {0: "shortcut.conv", 1: "shortcut.bn"}.get(index)
    else:
        part = (_XX_CONVS if stage in _XX_STAGES else _BOTTLENECK_CONVS).get(index)
    return f"stages.{stage}.{layer}.{part}.{rest}" if part else key


def convert_official(state_dict: dict) -> dict:
    """An official release state dict in our names (values unchanged)."""
    return {official_key(k): v for k, v in state_dict.items()}


def _shape(value) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def _stage_depths(names) -> tuple[int, ...]:
    depths = []
    for stage in range(_LAST_STAGE - _FIRST_STAGE + 1):
        idx = {int(m.group(1)) for k in names if (m := re.match(rf"stages\.{stage}\.(\d+)\.", k))}
        depths.append(max(idx) + 1 if idx else 0)
    return tuple(depths)


def infer_architecture(state_dict: Mapping, variants: Mapping) -> str | None:
    """The GENet variant (``arch``, a name of ``variants``: the family's variants) whose shapes match
    ``state_dict`` (in our names), or None. The values may be tensors or shapes.
    """
    stem = state_dict.get("stem.conv.weight")
    final = state_dict.get("final_conv.conv.weight")
    if stem is None or final is None:
        return None
    depths = _stage_depths(state_dict)
    for name, arch in variants.items():
        if (_shape(stem)[0] == arch.stem_width and _shape(final)[0] == arch.num_features
                and depths == tuple(s.depth for s in arch.stages)):
            return name
    return None


__all__ = ["OFFICIAL_MARKER", "convert_official", "infer_architecture", "official_key"]
