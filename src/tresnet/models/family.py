"""A model family: what the registry needs to know of one kind of network.

A family brings its builder, its variants (as data), the models registered on them (preprocessing and
published accuracy), the checkpoint layouts it reads besides our own, its preprocessing, and the fusion rules
of its blocks (how :func:`tresnet.deploy.fuse` rewrites them for inference). The registry
(:mod:`tresnet.models.registry`) holds the families; nothing outside a family's files knows its layers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from tresnet.layers.fused import FusionRule


def _same_key(key: str) -> str:
    return key


def _same_state(state_dict: dict) -> dict:
    return state_dict


@dataclass(frozen=True)
class CheckpointFormat:
    """One layout a family's weights are published in (not our own files, which are in our names).

    ``marker`` is a key only this layout has; ``convert`` maps its state dict to our names (and values,
    where a layout stores another parametrisation); ``convert_key`` maps one key, for reading shapes
    from a file's header without its tensors.
    """

    name: str
    marker: str
    convert: Callable[[dict], dict] = _same_state
    convert_key: Callable[[str], str] = _same_key


@dataclass(frozen=True)
class Family:
    """A family of networks: ``build(variant, **options)`` makes one, the rest is data about it.

    ``norms`` lists the norm layers it can use, the default first; ``options`` the keyword arguments of
    :func:`tresnet.create_model` only this family accepts (e.g. ``memory_efficient``), with their
    neutral values. ``infer_arch`` names the variant whose shapes (in our names) a state dict has.
    ``fusion_rules`` rewrite the family's own modules (blocks, stem) into their inference forms
    (:data:`~tresnet.layers.fused.FusionRule`; the shared layers have theirs in :mod:`tresnet.layers.fused`).
    """

    name: str
    title: str
    variants: Mapping[str, Any]
    models: Mapping[str, dict]
    build: Callable[..., nn.Module]
    formats: tuple[CheckpointFormat, ...]
    infer_arch: Callable[[Mapping], str | None]
    norms: tuple[str, ...]
    first_conv: str
    classifier: str = "head.fc"
    options: Mapping[str, Any] = field(default_factory=dict)
    paper: str = ""
    fusion_rules: tuple[FusionRule, ...] = ()

    def format_of(self, keys) -> CheckpointFormat | None:
        """The published layout whose marker is among ``keys``, or None."""
        for fmt in self.formats:
            if fmt.marker in keys:
                return fmt
        return None


__all__ = ["CheckpointFormat", "Family"]
