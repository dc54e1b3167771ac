"""What a benchmark measures: model names parsed into specs, built into targets, with their static costs.

A model is written ``[timm:]NAME[:VARIANT]``. A plain ``NAME`` is one of ours
(:func:`tresnet.list_models`), else a timm model; ``timm:NAME`` forces timm's implementation. ``NAME`` may
also be the path of a checkpoint saved by ``tresnet train`` (``runs/digits/best.safetensors``): its model is
measured with its classes and head, at the input size its run validated at.
``VARIANT`` picks a registered transformation of the model (:func:`register_variant`). The built-in
ones (:mod:`tresnet.bench.variants`, registered on first use) apply to our models:

- ``NAME:bn``: plain BatchNorm + activation instead of In-Place ABN;
- ``NAME:memory_efficient``: the memory-lean Bottleneck tails (``create_model(memory_efficient=True)``);
- ``NAME:ml_decoder``: the ML-Decoder head instead of pooling + fc (``create_model(head="ml_decoder")``);
- ``NAME:fused``: :func:`tresnet.deploy.fuse` of the eval model (inference only);
- ``NAME:bf16``: ``fuse(model, dtype=torch.bfloat16)`` (inference only);
- ``NAME:int8``: :func:`tresnet.deploy.quantize` of the eval model, compiled (CPU, inference only);
- ``NAME:onnx``: the fused model exported to ONNX, run by ONNX Runtime on the CPU (inference only);
- ``NAME:onnx_int8``: that file quantized to int8 by ONNX Runtime (CPU, inference only).

Each model runs at its own input side (``native_img_size``) unless one is given for all, except that a timm
model that is the same network as one of ours in the same run (``timm:gernet_s`` beside ``genet_light``,
:func:`same_network_sizes`) runs at ours, so that the pair is compared at one size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tresnet.errors import ConfigError, MissingDependencyError, ModelNotFoundError

IMPLS = ("tresnet", "timm")
MODES = ("infer", "train")
TIMM_PREFIX = "timm:"
INSTALL_HINT = "pip install 'tresnet[bench]'"
PAPER_ALIAS = "paper"  # in a model list: tresnet_m, timm:tresnet_m and the paper's peers


@dataclass(frozen=True)
class ModelSpec:
    """One model to measure: ``label`` as the user wrote it, the architecture ``name``, the ``impl``
    that builds it (``"tresnet"`` or ``"timm"``) and an optional ``variant``."""

    label: str
    name: str
    impl: str
    variant: str | None = None
    checkpoint: str | None = None  # a checkpoint of ours: its model, classes, head and recorded input size


@dataclass(frozen=True)
class BuildOptions:
    """How a target is built: device, input side, precision, memory format."""

    device: torch.device
    img_size: int | None = None
    precision: str = "fp32"
    channels_last: bool = False


@dataclass(frozen=True)
class Variant:
    """A named way of turning a spec into something to run.

    ``build(spec, options)`` returns an ``nn.Module`` (moved to the device by the runner; trainable
    when ``"train"`` is in ``modes``), a plain callable ``f(images) -> logits`` that handles its
    own device (inference only, no parameter or GMAC count), or a :class:`VariantBuild` of either with
    the plain model it was derived from. ``impls`` limits which implementations it applies to (None:
    any). ``requires()``, when given, raises :class:`~tresnet.errors.MissingDependencyError` where a
    package it needs is absent; ``check(spec, options)`` raises :class:`ConfigError` for options it
    cannot run with (a device, a precision). With ``peak_memory_note`` the CPU peak-memory probe is
    skipped and the note recorded instead.
    """

    name: str
    build: Callable[[ModelSpec, BuildOptions], Any]
    modes: frozenset[str] = frozenset({"infer"})
    impls: frozenset[str] | None = None
    description: str = ""
    requires: Callable[[], object] | None = None
    check: Callable[[ModelSpec, BuildOptions], None] | None = None
    peak_memory_note: str | None = None


@dataclass
class VariantBuild:
    """What a variant's build returns when it has more to say than the thing to run.

    ``run``: the module or callable that is timed. ``reference``: the plain eval model ``run`` was
    derived from; the benchmark records the largest difference of ``run``'s logits from it
    (``max_rel_diff``) and then drops it.
    """

    run: Any
    reference: nn.Module | None = None


_VARIANTS: dict[str, Variant] = {}


@functools.cache
def _load_builtin_variants() -> None:
    """Register the built-in variants once, on first use of the registry."""
    import tresnet.bench.variants  # noqa: F401 - registers the variants above


def register_variant(variant: Variant, *, replace: bool = False) -> None:
    """Make ``NAME:<variant.name>`` usable in model lists. Raises :class:`ConfigError` on a clash."""
    _load_builtin_variants()
    if not variant.name.isidentifier():
        raise ConfigError(f"variant name {variant.name!r} must be an identifier")
    if variant.name in _VARIANTS and not replace:
        raise ConfigError(f"variant {variant.name!r} is already registered")
    if not variant.modes or not set(variant.modes) <= set(MODES):
        raise ConfigError(f"variant {variant.name!r}: modes must be a non-empty subset of {MODES}")
    _VARIANTS[variant.name] = variant


def list_variants() -> list[str]:
    """Names of the registered variants."""
    _load_builtin_variants()
    return sorted(_VARIANTS)


def get_variant(name: str) -> Variant:
    """The registered variant ``name``; :class:`ConfigError` listing the known ones if absent."""
    _load_builtin_variants()
    if name not in _VARIANTS:
        known = ", ".join(list_variants()) or "none"
        raise ConfigError(f"unknown model variant {name!r}; registered variants: {known}")
    return _VARIANTS[name]


# --- parsing and availability -----------------------------------------------------------------------

def _timm():
    try:
        import timm
    except ImportError:
        return None
    return timm


def parse_model_spec(text: str) -> ModelSpec:
    """Parse ``[timm:]NAME[:VARIANT]``. Does not check that the model exists (see :func:`check_spec`).

    Raises :class:`ConfigError` for an empty or malformed name.
    """
    label = text.strip()
    rest, impl = label, None
    if rest.startswith(TIMM_PREFIX):
        rest, impl = rest[len(TIMM_PREFIX):], "timm"
    name, _, variant = rest.partition(":")
    if not name or ":" in variant or (rest.endswith(":")):
        raise ConfigError(f"bad model {text!r}: write NAME, timm:NAME or NAME:VARIANT (e.g. tresnet_m, "
                          f"timm:tresnet_m, tresnet_m:bn)")
    if impl is None and _is_checkpoint_path(name):
        return ModelSpec(label=label, name=_checkpoint_model(name), impl="tresnet", variant=variant or None,
                         checkpoint=name)
    if impl is None:
        from tresnet.models import list_models

        impl = "tresnet" if name in list_models() else "timm"
    return ModelSpec(label=label, name=name, impl=impl, variant=variant or None)


_CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".tar")


def _is_checkpoint_path(name: str) -> bool:
    return name.endswith(_CHECKPOINT_SUFFIXES) or "/" in name or Path(name).expanduser().is_file()


def _checkpoint_model(path: str) -> str:
    """The registered model a checkpoint holds (it must name it: ours do)."""
    from tresnet.factory import model_name_from_checkpoint

    return model_name_from_checkpoint(Path(path).expanduser())


def parse_model_list(models: str | Sequence[str]) -> list[ModelSpec]:
    """Parse a comma-separated list (or a sequence) of model names; ``paper`` expands to TResNet-M (ours
    and timm's) and the paper's peers. Raises :class:`ConfigError` for an empty list or a repeated model."""
    from tresnet.bench.published import PAPER_PEERS

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


def check_spec(spec: ModelSpec, options: BuildOptions | None = None) -> None:
    """Check, without building it, that ``spec`` can be built (with ``options``, when given).

    Raises :class:`MissingDependencyError` when it needs timm (or a package its variant needs) and that
    is not installed, :class:`ModelNotFoundError` for an unknown name, :class:`ConfigError` for a bad
    variant or a variant that cannot run with ``options``.
    """
    from tresnet.models import list_models

    if spec.impl == "tresnet":
        if spec.name not in list_models():
            raise ModelNotFoundError(f"unknown tresnet model {spec.name!r}; available: {', '.join(list_models())}")
    else:
        timm = _timm()
        if timm is None:
            ours = "" if spec.label.startswith(TIMM_PREFIX) else f"{spec.name!r} is not a tresnet model and "
            raise MissingDependencyError(f"{ours}timm models ({spec.label!r}) need timm: {INSTALL_HINT}")
        if not timm.is_model(spec.name):
            raise ModelNotFoundError(
                f"unknown model {spec.label!r}: neither a tresnet model ({', '.join(list_models())}) nor a "
                f"timm model (see timm.list_models())")
    if spec.variant is not None:
        _check_variant(spec, get_variant(spec.variant), options)


def _check_variant(spec: ModelSpec, variant: Variant, options: BuildOptions | None) -> None:
    if variant.impls is not None and spec.impl not in variant.impls:
        raise ConfigError(f"variant {spec.variant!r} applies to {', '.join(sorted(variant.impls))} models, "
                          f"not to {spec.label!r}")
    if variant.requires is not None:
        variant.requires()
    if options is not None and variant.check is not None:
        variant.check(spec, options)


# --- building --------------------------------------------------------------------------------------

def build_base_model(spec: ModelSpec, **kwargs) -> nn.Module:
    """A freshly initialised model for ``spec`` (variant ignored), on the CPU, 1000 classes.

    ``kwargs`` go to :func:`tresnet.create_model` or ``timm.create_model``. Raises as :func:`check_spec`.
    """
    check_spec(ModelSpec(spec.label, spec.name, spec.impl))
    if spec.impl == "tresnet":
        from tresnet import create_model

        return create_model(spec.name, checkpoint_path=spec.checkpoint, **kwargs)
    return _timm().create_model(spec.name, pretrained=False, **kwargs)


def native_img_size(spec: ModelSpec, module: nn.Module | None = None) -> int:
    """The input side ``spec``'s model was trained at (224 for most; 240 for EfficientNet-B1)."""
    cfg = getattr(module, "pretrained_cfg", None) if module is not None else None
    if not cfg and spec.checkpoint is not None:
        from tresnet.checkpoint import read_checkpoint_metadata
        from tresnet.factory import recorded_preprocessing

        recorded = recorded_preprocessing(read_checkpoint_metadata(Path(spec.checkpoint).expanduser()))
        cfg = recorded if "input_size" in recorded else None
    if not cfg and spec.impl == "tresnet":
        from tresnet.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(spec.name)
    if not cfg and spec.impl == "timm":
        cfg = _timm().get_pretrained_cfg(spec.name)
        cfg = cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else cfg
    size = (cfg or {}).get("input_size") or (3, 224, 224)
    return int(size[-1])


def timm_name_of(name: str) -> str | None:
    """timm's name of our registered model ``name`` (``gernet_s`` for ``genet_light``; ``tresnet_m`` for
    itself), or None when ``name`` is not one of ours."""
    from tresnet.models import get_pretrained_cfg, list_models

    if name not in list_models():
        return None
    return get_pretrained_cfg(name).get("timm_name", name)


def same_network_sizes(specs: Sequence[ModelSpec]) -> dict[str, tuple[str, int]]:
    """For each timm model in ``specs`` that is the same network as one of ours in ``specs``
    (``timm:gernet_s`` and ``genet_light``) and whose own input side differs from ours: its label ->
    (our model's label, our side). A plain model of ours is preferred over its variants.

    The benchmark measures such a timm model at our side, so that the pair is compared at one size.
    """
    ours: dict[str, ModelSpec] = {}
    for spec in sorted(specs, key=lambda s: s.variant is not None):
        if spec.impl == "tresnet":
            ours.setdefault(timm_name_of(spec.name) or spec.name, spec)
    sizes = {}
    for spec in specs:
        mine = ours.get(spec.name) if spec.impl == "timm" else None
        if mine is not None and native_img_size(mine) != native_img_size(spec):
            sizes[spec.label] = (mine.label, native_img_size(mine))
    return sizes


@dataclass
class BenchTarget:
    """A built model ready to run: ``module`` is the eager ``nn.Module`` (None for a plain callable),
    ``forward`` what the timed steps call (the module, its ``torch.compile`` form, or a callable);
    ``reference`` the plain eval model a variant was derived from (see :class:`VariantBuild`)."""

    spec: ModelSpec
    module: nn.Module | None
    forward: Callable[[torch.Tensor], Any]
    img_size: int
    modes: frozenset[str]
    num_classes: int = 1000
    compiled: bool = False
    info: dict = field(default_factory=dict)
    reference: nn.Module | None = None
    peak_memory_note: str | None = None

    @property
    def label(self) -> str:
        return self.spec.label


def build_target(spec: ModelSpec, options: BuildOptions, *, compile: bool = False) -> BenchTarget:
    """Build ``spec`` on ``options.device`` (channels-last if asked), optionally ``torch.compile``-d.

    The input side is ``options.img_size`` or the model's own. Raises as :func:`check_spec`, and
    :class:`~tresnet.errors.InputSizeError` when one of our models cannot take that side.
    """
    check_spec(spec, options)
    variant = get_variant(spec.variant) if spec.variant is not None else None
    built = build_base_model(spec) if variant is None else variant.build(spec, options)
    reference = None
    if isinstance(built, VariantBuild):
        built, reference = built.run, built.reference
    module = built if isinstance(built, nn.Module) else getattr(built, "module", None)
    img_size = options.img_size or native_img_size(spec, module if isinstance(module, nn.Module) else reference)
    for checked in (module, reference):
        if isinstance(checked, nn.Module) and hasattr(checked, "check_input_size"):
            checked.check_input_size(img_size, img_size)
    if isinstance(built, nn.Module):
        memory_format = torch.channels_last if options.channels_last else torch.preserve_format
        built.to(device=options.device, memory_format=memory_format)
        forward = torch.compile(built) if compile else built
    else:
        if compile:
            raise ConfigError(f"{spec.label}: --compile applies to torch modules, not to this variant")
        forward = built
    if reference is not None:  # stays on the host until the runner compares with it
        reference.eval()
    num_classes = int(getattr(module, "num_classes", 0) or getattr(reference, "num_classes", 0) or 1000)
    return BenchTarget(spec=spec, module=module if isinstance(module, nn.Module) else None, forward=forward,
                       img_size=img_size, modes=frozenset(variant.modes if variant else MODES),
                       num_classes=num_classes, compiled=compile, reference=reference,
                       peak_memory_note=variant.peak_memory_note if variant else None)


# --- static costs ----------------------------------------------------------------------------------

def count_params_m(module: nn.Module) -> float:
    """Parameters of ``module``, in millions."""
    return sum(p.numel() for p in module.parameters()) / 1e6


def count_gmacs(module: nn.Module, img_size: int, *, device: torch.device | str = "cpu",
                channels_last: bool = False, in_chans: int = 3) -> float:
    """Multiply-accumulates of one ``img_size`` image through ``module`` in eval mode, in billions.

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products;
    normalisation and activations are not counted), MACs = FLOPs / 2. Restores the training flag.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = module.training
    module.eval()
    x = torch.rand(1, in_chans, img_size, img_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            module(x)
    finally:
        module.train(was_training)
    return counter.get_total_flops() / 2 / 1e9
