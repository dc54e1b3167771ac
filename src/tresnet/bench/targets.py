"""What a benchmark runs: a spec (:mod:`tresnet.bench.specs`) built in its form (:mod:`tresnet.bench.forms`) into
a target, with its static costs (parameters, GMACs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tresnet.bench.forms import Form, FormBuild, get_form
from tresnet.bench.specs import MODES, BuildOptions, ModelSpec, build_base_model, check_model, native_img_size
from tresnet.errors import ConfigError
from tresnet.tasks import Task, get_task


def check_spec(spec: ModelSpec, options: BuildOptions | None = None) -> None:
    """Check, without building it, that ``spec`` can be built in its form (with ``options``, when given).

    Raises :class:`~tresnet.errors.MissingDependencyError` when it needs timm (or a package its form needs)
    and that is not installed, :class:`~tresnet.errors.ModelNotFoundError` for an unknown name,
    :class:`ConfigError` for an unknown form or a form that cannot run with ``options``.
    """
    check_model(spec)
    if spec.form is not None:
        _check_form(spec, get_form(spec.form), options)


def _check_form(spec: ModelSpec, form: Form, options: BuildOptions | None) -> None:
    if form.impls is not None and spec.impl not in form.impls:
        raise ConfigError(f"form {spec.form!r} applies to {', '.join(sorted(form.impls))} models, "
                          f"not to {spec.label!r}")
    if form.requires is not None:
        form.requires()
    if options is not None and form.check is not None:
        form.check(spec, options)


@dataclass
class BenchTarget:
    """A built model ready to run: ``module`` is the eager ``nn.Module`` (None for a plain callable),
    ``forward`` what the timed steps call (the module, its ``torch.compile`` form, or a callable);
    ``reference`` the plain eval model a form was derived from (see :class:`FormBuild`)."""

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
    task: Task | None = None  # the task of its batches and loss (a detector's); None: classification

    @property
    def label(self) -> str:
        return self.spec.label


def build_target(spec: ModelSpec, options: BuildOptions, *, compile: bool = False) -> BenchTarget:
    """Build ``spec`` on ``options.device`` (channels-last if asked), optionally ``torch.compile``-d.

    The input side is ``options.img_size`` or the model's own. Raises as :func:`check_spec`, and
    :class:`~tresnet.errors.InputSizeError` when one of our models cannot take that side.
    """
    check_spec(spec, options)
    form = get_form(spec.form) if spec.form is not None else None
    built = build_base_model(spec) if form is None else form.build(spec, options)
    reference = None
    if isinstance(built, FormBuild):
        built, reference = built.run, built.reference
    module = built if isinstance(built, nn.Module) else getattr(built, "module", None)
    img_size = options.img_size or native_img_size(spec, module if isinstance(module, nn.Module) else reference)
    for checked in (module, reference):
        if isinstance(checked, nn.Module) and hasattr(checked, "check_input_size"):
            cast(Any, checked).check_input_size(img_size, img_size)
    if isinstance(built, nn.Module):
        memory_format = torch.channels_last if options.channels_last else torch.preserve_format
        # torch's stubs lack to(device, memory_format=)
        built.to(device=options.device, memory_format=memory_format)  # type: ignore[call-overload]
        forward = torch.compile(built) if compile else built
    else:
        if compile:
            raise ConfigError(f"{spec.label}: --compile applies to torch modules, not to this form")
        forward = built
    if reference is not None:  # stays on the host until the runner compares with it
        reference.eval()
    num_classes = int(getattr(module, "num_classes", 0) or getattr(reference, "num_classes", 0) or 1000)
    return BenchTarget(spec=spec, module=module if isinstance(module, nn.Module) else None, forward=forward,
                       img_size=img_size, modes=frozenset(form.modes if form else MODES),
                       num_classes=num_classes, compiled=compile, reference=reference,
                       peak_memory_note=form.peak_memory_note if form else None,
                       task=get_task(form.task) if form is not None and form.task else None)


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
