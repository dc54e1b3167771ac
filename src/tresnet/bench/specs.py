"""The models a benchmark measures, as written: ``[timm:]NAME[:FORM]`` parsed into specs, checked and built plain.

A plain ``NAME`` is one of ours (:func:`tresnet.list_models`), else a timm model; ``timm:NAME`` forces timm's
implementation. ``NAME`` may also be the path of a checkpoint saved by ``tresnet train``
(``runs/digits/best.safetensors``): its model is measured with its classes and head, at the input size its run
validated at. ``FORM`` names a registered form of the model (:mod:`tresnet.bench.forms`: ``NAME:fused``,
``NAME:int8``...); this module parses it, :mod:`tresnet.bench.targets` builds it.

Each model runs at its own input side (``native_img_size``) unless one is given for all, except that a timm
model that is the same network as one of ours in the same run (``timm:gernet_s`` beside ``genet_light``,
:func:`same_network_sizes`) runs at ours, so that the pair is compared at one size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tresnet.bench.published import PAPER_PEERS
from tresnet.checkpoint import read_checkpoint_metadata
from tresnet.errors import ConfigError, MissingDependencyError, ModelNotFoundError
from tresnet.factory import create_model, model_name_from_checkpoint, recorded_preprocessing
from tresnet.models import get_pretrained_cfg, list_models

IMPLS = ("tresnet", "timm")
MODES = ("infer", "train")
TIMM_PREFIX = "timm:"
INSTALL_HINT = "pip install 'tresnet[bench]'"
PAPER_ALIAS = "paper"  # in a model list: tresnet_m, timm:tresnet_m and the paper's peers


@dataclass(frozen=True)
class ModelSpec:
    """One model to measure: ``label`` as the user wrote it, the architecture ``name``, the ``impl``
    that builds it (``"tresnet"`` or ``"timm"``) and an optional ``form``."""

    label: str
    name: str
    impl: str
    form: str | None = None
    checkpoint: str | None = None  # a checkpoint of ours: its model, classes, head and recorded input size


@dataclass(frozen=True)
class BuildOptions:
    """How a target is built: device, input side, precision, memory format."""

    device: torch.device
    img_size: int | None = None
    precision: str = "fp32"
    channels_last: bool = False


# --- parsing and availability -----------------------------------------------------------------------

def _timm():
    try:
        import timm
    except ImportError:
        return None
    return timm


def parse_model_spec(text: str) -> ModelSpec:
    """Parse ``[timm:]NAME[:FORM]``. Does not check that the model exists (see :func:`check_model`).

    Raises :class:`ConfigError` for an empty or malformed name.
    """
    label = text.strip()
    rest, impl = label, None
    if rest.startswith(TIMM_PREFIX):
        rest, impl = rest[len(TIMM_PREFIX):], "timm"
    name, _, form = rest.partition(":")
    if not name or ":" in form or (rest.endswith(":")):
        raise ConfigError(f"bad model {text!r}: write NAME, timm:NAME or NAME:FORM (e.g. tresnet_m, "
                          f"timm:tresnet_m, tresnet_m:bn)")
    if impl is None and _is_checkpoint_path(name):
        return ModelSpec(label=label, name=_checkpoint_model(name), impl="tresnet", form=form or None,
                         checkpoint=name)
    if impl is None:
        impl = "tresnet" if name in list_models() else "timm"
    return ModelSpec(label=label, name=name, impl=impl, form=form or None)


_CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".tar")


def _is_checkpoint_path(name: str) -> bool:
    return name.endswith(_CHECKPOINT_SUFFIXES) or "/" in name or Path(name).expanduser().is_file()


def _checkpoint_model(path: str) -> str:
    """The registered model a checkpoint holds (it must name it: ours do)."""
    return model_name_from_checkpoint(Path(path).expanduser())


def parse_model_list(models: str | Sequence[str]) -> list[ModelSpec]:
    """Parse a comma-separated list (or a sequence) of model names; ``paper`` expands to TResNet-M (ours
    and timm's) and the paper's peers. Raises :class:`ConfigError` for an empty list or a repeated model."""
    items = models.split(",") if isinstance(models, str) else list(models)
    labels: list[str] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        labels.extend(["tresnet_m", "timm:tresnet_m", *PAPER_PEERS] if item == PAPER_ALIAS else [item])
    if not labels:
        raise ConfigError("no model to benchmark: pass --models NAME[,NAME...] (e.g. tresnet_m,resnet50)")
    specs = [parse_model_spec(label) for label in labels]
    seen: set[str] = set()
    for spec in specs:
        if spec.label in seen:
            raise ConfigError(f"model {spec.label!r} is listed twice")
        seen.add(spec.label)
    return specs


def check_model(spec: ModelSpec) -> None:
    """Check, without building it, that ``spec``'s plain model can be built (its form is checked by
    :func:`tresnet.bench.targets.check_spec`).

    Raises :class:`MissingDependencyError` when it needs timm and that is not installed,
    :class:`ModelNotFoundError` for an unknown name.
    """
    if spec.impl == "tresnet":
        if spec.name not in list_models():
            raise ModelNotFoundError(f"unknown tresnet model {spec.name!r}; available: {', '.join(list_models())}")
        return
    timm = _timm()
    if timm is None:
        ours = "" if spec.label.startswith(TIMM_PREFIX) else f"{spec.name!r} is not a tresnet model and "
        raise MissingDependencyError(f"{ours}timm models ({spec.label!r}) need timm: {INSTALL_HINT}")
    if not timm.is_model(spec.name):
        raise ModelNotFoundError(
            f"unknown model {spec.label!r}: neither a tresnet model ({', '.join(list_models())}) nor a "
            f"timm model (see timm.list_models())")


# --- building --------------------------------------------------------------------------------------

def build_base_model(spec: ModelSpec, **kwargs) -> nn.Module:
    """A freshly initialised model for ``spec`` (form ignored), on the CPU, 1000 classes.

    ``kwargs`` go to :func:`tresnet.create_model` or ``timm.create_model``. Raises as :func:`check_model`.
    """
    check_model(spec)
    if spec.impl == "tresnet":
        return create_model(spec.name, checkpoint_path=spec.checkpoint, **kwargs)
    return _timm().create_model(spec.name, pretrained=False, **kwargs)


def native_img_size(spec: ModelSpec, module: nn.Module | None = None) -> int:
    """The input side ``spec``'s model was trained at (224 for most; 240 for EfficientNet-B1)."""
    cfg = getattr(module, "pretrained_cfg", None) if module is not None else None
    if not cfg and spec.checkpoint is not None:
        recorded = recorded_preprocessing(read_checkpoint_metadata(Path(spec.checkpoint).expanduser()))
        cfg = recorded if "input_size" in recorded else None
    if not cfg and spec.impl == "tresnet":
        cfg = get_pretrained_cfg(spec.name)
    if not cfg and spec.impl == "timm":
        cfg = _timm().get_pretrained_cfg(spec.name)
        cfg = cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else cfg
    size = (cfg or {}).get("input_size") or (3, 224, 224)
    return int(size[-1])


def timm_name_of(name: str) -> str | None:
    """timm's name of our registered model ``name`` (``gernet_s`` for ``genet_light``; ``tresnet_m`` for
    itself), or None when ``name`` is not one of ours."""
    if name not in list_models():
        return None
    return get_pretrained_cfg(name).get("timm_name", name)


def same_network_sizes(specs: Sequence[ModelSpec]) -> dict[str, tuple[str, int]]:
    """For each timm model in ``specs`` that is the same network as one of ours in ``specs``
    (``timm:gernet_s`` and ``genet_light``) and whose own input side differs from ours: its label ->
    (our model's label, our side). A plain model of ours is preferred over its forms.

    The benchmark measures such a timm model at our side, so that the pair is compared at one size.
    """
    ours: dict[str, ModelSpec] = {}
    for spec in sorted(specs, key=lambda s: s.form is not None):
        if spec.impl == "tresnet":
            ours.setdefault(timm_name_of(spec.name) or spec.name, spec)
    sizes = {}
    for spec in specs:
        mine = ours.get(spec.name) if spec.impl == "timm" else None
        if mine is not None and native_img_size(mine) != native_img_size(spec):
            sizes[spec.label] = (mine.label, native_img_size(mine))
    return sizes


__all__ = ["BuildOptions", "ModelSpec", "build_base_model", "check_model", "native_img_size", "parse_model_list",
           "parse_model_spec", "same_network_sizes", "timm_name_of"]
