"""The registry of model families: names -> family, network, preprocessing and published results.

Each family (:class:`~tresnet.models.family.Family`: TResNet, GENet) brings its variants, its registered
models and its checkpoint layouts; this module only gathers them. Two words name two things everywhere:
``model`` is a registered name (``tresnet_m_448``), ``arch`` the network variant it builds (``tresnet_m``).
"""

from __future__ import annotations

import fnmatch
from copy import deepcopy
from dataclasses import replace

from torch import nn

from tresnet.errors import ConfigError, ModelNotFoundError
from tresnet.layers import NORMS
from tresnet.models import genet, tresnet
from tresnet.models.common import HEADS as HEADS  # re-exported: the heads build_model takes
from tresnet.models.common import check_head
from tresnet.models.family import Family

FAMILIES: dict[str, Family] = {family.name: family for family in (tresnet.FAMILY, genet.FAMILY)}

# Every registered model's configuration, with the family that builds it: the one table of names.
MODEL_CONFIGS: dict[str, dict] = {
    name: dict(cfg, family=family.name) for family in FAMILIES.values() for name, cfg in family.models.items()
}

# The configuration keys of evaluation preprocessing: what our checkpoints record and create_model restores
# (tresnet.data.transforms.Preprocessing reads and writes the same keys).
PREPROCESSING_KEYS = ("input_size", "crop_mode", "crop_pct", "interpolation", "mean", "std", "resize_rounding")


def list_models(pattern: str = "*", *, family: str | None = None) -> list[str]:
    """Sorted names of the models this package builds that match the shell-style ``pattern``
    (of one ``family``, ``"tresnet"`` or ``"genet"``, when given)."""
    if family is not None:
        get_family(family)
    return sorted(n for n, cfg in MODEL_CONFIGS.items()
                  if fnmatch.fnmatch(n, pattern) and family in (None, cfg["family"]))


def get_family(name: str) -> Family:
    """The family called ``name`` (``"tresnet"``, ``"genet"``); :class:`ModelNotFoundError` otherwise."""
    if name not in FAMILIES:
        raise ModelNotFoundError(f"unknown model family {name!r}; available: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_of(model: str) -> Family:
    """The family that builds registered model ``model``."""
    return FAMILIES[get_pretrained_cfg(model)["family"]]


def family_of_arch(arch: str) -> Family | None:
    """The family that has network variant ``arch``, or None."""
    return next((f for f in FAMILIES.values() if arch in f.variants), None)


def get_pretrained_cfg(name: str) -> dict:
    """The configuration of model ``name``: ``model``, ``family``, ``arch``, preprocessing, published top-1.

    Raises :class:`~tresnet.errors.ModelNotFoundError` for an unknown name.
    """
    if name not in MODEL_CONFIGS:
        raise ModelNotFoundError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    family = FAMILIES[MODEL_CONFIGS[name]["family"]]
    cfg = dict(model=name, **deepcopy(MODEL_CONFIGS[name]))
    cfg["classifier"] = family.classifier
    cfg["first_conv"] = family.first_conv
    return cfg


def models_of_arch(arch: str) -> list[str]:
    """The registered models that build network ``arch`` (e.g. ``tresnet_m`` and ``tresnet_m_448``)."""
    return [name for name in list_models() if MODEL_CONFIGS[name]["arch"] == arch]


def resolve_norm(family: Family, norm: str | None) -> str:
    """``norm``, or the family's default for None; :class:`ConfigError` for one the family cannot use."""
    if norm is None:
        return family.norms[0]
    if norm not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    if norm not in family.norms:
        raise ConfigError(f"norm {norm!r} is not available for {family.title}, whose norms are "
                          f"{', '.join(family.norms)} (In-Place ABN is TResNet's): use norm={family.norms[0]!r}")
    return norm


def _family_options(family: Family, options: dict) -> dict:
    """The options only ``family`` takes, with the neutral ones of other families dropped."""
    kept = {}
    for key, value in options.items():
        if key in family.options:
            kept[key] = value
        elif value:
            owners = [f.title for f in FAMILIES.values() if key in f.options] or ["no family"]
            raise ConfigError(f"{key}={value!r} is a {' and '.join(owners)} option; {family.title} models do "
                              f"not take it: leave it out")
    return kept


def _head_arguments(head: str | None, head_options: dict | None) -> dict:
    """The network's head keywords: none for the default fc head, so every family's builder keeps its signature."""
    if head in (None, "fc") and not head_options:
        return {}
    return {"head": head or "fc", "head_options": head_options}


def build_model(name: str, *, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0,
                drop_path_rate: float = 0.0, norm: str | None = None, features_only: bool = False,
                out_indices: tuple[int, ...] = (1, 2, 3, 4), memory_efficient: bool = False, head: str = "fc",
                task: str = "multiclass", head_options: dict | None = None, **arch_overrides) -> nn.Module:
    """A freshly initialised model ``name`` (no weights loaded). See :func:`tresnet.create_model`.

    ``head`` is one of :data:`HEADS` (ignored with ``features_only``); ``task`` (a registered task's name,
    checked by :func:`tresnet.create_model`) is only recorded, in ``pretrained_cfg["task"]``, with the head kind
    in ``pretrained_cfg["head"]`` (None without a head).
    """
    cfg = get_pretrained_cfg(name)
    family = FAMILIES[cfg["family"]]
    norm = resolve_norm(family, norm)
    check_head(head)
    kept_head: str | None = head
    if features_only:
        kept_head, head_options = None, None
    options = _family_options(family, {"memory_efficient": memory_efficient})
    arch = family.variants[cfg["arch"]]
    if arch_overrides:
        try:
            arch = replace(arch, **arch_overrides)
        except TypeError as e:
            raise ConfigError(f"{family.title} variants have no option among {sorted(arch_overrides)}: {e}") from e
    model = family.build(arch, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate,
                         drop_path_rate=drop_path_rate, norm=norm, features_only=features_only,
                         out_indices=out_indices, **_head_arguments(kept_head, head_options), **options)
    cfg["num_classes"] = 0 if features_only else num_classes
    cfg["task"] = task
    cfg["head"] = kept_head
    if kept_head == "ml_decoder":
        cfg["classifier"] = "head"
    cfg["input_size"] = (in_chans, *cfg["input_size"][1:])
    cfg["norm"] = norm
    # nn.Module.__setattr__ takes any value; its stub says Tensor | Module.
    model.pretrained_cfg = cfg  # type: ignore[assignment]
    model.checkpoint_info = None  # type: ignore[assignment]
    return model
