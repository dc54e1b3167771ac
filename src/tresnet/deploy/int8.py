"""int8 inference on the CPU: post-training static quantization calibrated on the user's images.

:func:`quantize` uses PyTorch's own quantization flow, PT2E (``torch.export`` -> ``prepare_pt2e`` ->
calibration -> ``convert_pt2e``, from the ``torchao`` package) with its x86 quantizer, and compiles the
result with ``torch.compile`` (Inductor, weights frozen), which runs the quantized convs as oneDNN int8
kernels (VNNI / AMX where the CPU has them). It is the ``pt2e`` int8 backend of ``validate`` and
``predict``; the ``onnx`` one is ONNX Runtime's static quantization (:func:`quantize_onnx`, run by
:func:`tresnet.deploy.onnx_model`), which is also what ``tresnet export --number-format int8 --format onnx``
writes, since a compiled PyTorch model is not a file another runtime can load. Which is faster depends on
the CPU (:func:`tresnet.deploy.inference.choose_int8_backend`): on the 2-core Sapphire Rapids machine of
``docs/deploy.md`` (AMX) PT2E ran TResNet-M 1.6x as fast as ONNX Runtime, on AMD EPYCs without AMX ONNX
Runtime was the faster.

What is quantized: the weights per output channel (symmetric int8), the activations per tensor (uint8,
ranges from a histogram of the calibration images' activations), every conv and linear layer except
those :data:`KEEP_FLOAT` names. What stays in float, and why:

- the classifier (``head``): one layer, a negligible share of the FLOPs, and the one whose rounding
  moves the logits directly;
- the squeeze-and-excitation units (``se``): 1x1 convs on pooled vectors, a negligible share of the
  FLOPs, whose sigmoid gates multiply whole feature maps (a gate's rounding error scales a channel).

The first conv (TResNet's space-to-depth stem, GENet's 3x3 stem) is quantized: its input, the image, is
well described by one range, and keeping it in float measured no better accuracy here while costing
speed. The calibration images should be like the ones the model will see (a few hundred training
images); their count is :data:`DEFAULT_CALIBRATION_IMAGES` unless told.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import cast

import torch
from torch import nn

from tresnet.data.images import find_images, load_image
from tresnet.data.transforms import create_eval_transform
from tresnet.deploy.deployed import DeployedModel
from tresnet.deploy.fusion import fuse
from tresnet.deploy.onnx_runtime import require_onnx
from tresnet.errors import ConfigError, DataError, MissingDependencyError

DEFAULT_CALIBRATION_IMAGES = 128


@dataclass(frozen=True)
class Calibration:
    """The images an int8 model is calibrated on: a folder of images (``count`` of them, taken evenly; None:
    :data:`DEFAULT_CALIBRATION_IMAGES`) or a preprocessed batch (``count`` is then ignored)."""

    images: torch.Tensor | str | os.PathLike
    count: int | None = None
CALIBRATION_BATCH = 16
# Modules kept in float: the classifier and the squeeze-and-excitation units (module docstring).
KEEP_FLOAT = ("head", "se")
# Logs, on import, where it found CUDA; Inductor imports it while compiling (see quantize).
CPP_EXTENSION_LOGGER = "torch.utils.cpp_extension"


@contextmanager
def quiet_logger(name: str, level: int = logging.ERROR) -> Iterator[None]:
    """Within the block, the logger ``name`` passes only records of ``level`` and above; its level is restored
    after."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def require_torchao() -> ModuleType:
    """The ``torchao`` package (PT2E quantization); :class:`MissingDependencyError` saying how to install it."""
    try:
        # torchao's import registers an Enum with torch's pytree, which logs a deprecation notice meant for
        # torchao's developers; it is kept off the user's terminal
        with quiet_logger("torch.utils._pytree"):
            import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401
            import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(
            f"int8 quantization needs the package torchao, PyTorch's quantization library ({e.name or e} is "
            f"missing): pip install 'tresnet[int8]'"
        ) from e
    import torchao

    return torchao


def _evenly_spaced(items: Sequence, count: int) -> list:
    if count >= len(items):
        return list(items)
    return [items[(i * len(items)) // count] for i in range(count)]


def load_calibration_images(folder: str | os.PathLike, model: nn.Module, *, img_size: int | None = None,
                       count: int = DEFAULT_CALIBRATION_IMAGES) -> torch.Tensor:
    """``count`` images of ``folder`` (searched recursively, taken evenly over the sorted files), with the
    model's own eval preprocessing, as one ``(N, 3, H, W)`` fp32 batch.

    Raises :class:`~tresnet.errors.DataError` for a folder that does not exist or holds no image, and for
    an image that cannot be read (calibrating on fewer images than asked would be a silent change), and
    :class:`~tresnet.errors.ConfigError` for a count below 1.
    """
    if count < 1:
        raise ConfigError(f"the number of calibration images must be at least 1, got {count}")
    path = Path(folder).expanduser()
    if not path.exists():
        raise DataError(f"calibration folder {path} does not exist; give a folder of images like the ones the "
                        f"model will see (a few hundred training images)")
    if not path.is_dir():
        raise DataError(f"calibration path {path} is not a folder; give a folder of images (searched recursively)")
    files, _ = find_images([path])
    if not files:
        raise DataError(f"calibration folder {path} holds no image (.jpg, .png, ...); give a folder of images like "
                        f"the ones the model will see")
    cfg = cast(dict, model.pretrained_cfg)
    size = img_size or int(cfg["input_size"][-1])
    transform = create_eval_transform(cfg, size)
    images = []
    for file in _evenly_spaced(files, count):
        try:
            images.append(transform(load_image(file)))
        except DataError as e:
            raise DataError(f"{e}; it is one of the calibration images: remove it from {path} or choose another "
                            f"folder") from e
    return torch.stack(images)


def resolve_calibration(calibration: torch.Tensor | str | os.PathLike, model: nn.Module, *,
                        count: int = DEFAULT_CALIBRATION_IMAGES, size: tuple[int, int] | None = None) -> torch.Tensor:
    """The calibration images as one fp32 CPU batch: a ready ``(N, C, H, W)`` batch as it is (at ``size``
    when given), or ``count`` images of a folder (:func:`load_calibration_images`, at ``size``, which must
    then be square; default the model's).

    Raises :class:`ConfigError` for a batch of another shape and a non-square size for a folder, and
    :func:`load_calibration_images`' errors.
    """
    if isinstance(calibration, torch.Tensor):
        images = calibration.detach().cpu().float()
        if images.dim() != 4 or images.shape[0] < 1 or (size is not None and tuple(images.shape[-2:]) != size):
            at = f" at {size[0]}x{size[1]}" if size is not None else ""
            raise ConfigError(f"calibration images must be an (N, C, H, W) batch{at}, got shape "
                              f"{tuple(images.shape)}")
        return images
    if size is not None and size[0] != size[1]:
        raise ConfigError(f"calibration from a folder needs a square image size, got {size[0]}x{size[1]}")
    return load_calibration_images(calibration, model, img_size=size[0] if size else None, count=count)


def _export(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """``model`` as a ``torch.export`` graph module with a free batch size."""
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    return program.module()


def _quantizer(keep_float: Sequence[str], model: nn.Module):
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    for name, _ in model.named_modules():
        if name and name.split(".")[-1] in keep_float:
            quantizer.set_module_name_qconfig(name, None)
    return quantizer


class Int8Model(DeployedModel):
    """A quantized model ready to run: fp32 images in, fp32 outputs out, on the CPU, any batch size.

    ``graph`` is the converted PT2E graph (quantize / dequantize around int8 ops); ``compiled`` is it under
    ``torch.compile`` (the int8 kernels), or ``graph`` itself when compiling was turned off (a reference
    run: the same numbers as float ops on dequantized values, slowly). ``backend`` (``pt2e``) and
    ``backend_name`` say what runs it, as :class:`~tresnet.deploy.OnnxModel`'s do for ONNX Runtime.
    """

    backend = "pt2e"
    backend_name = "PT2E (torch.compile)"
    runs_as = "int8 model"

    def __init__(self, graph: nn.Module, compiled, *, calibrated_on: int, img_size: tuple[int, int]) -> None:
        super().__init__(img_size=img_size, calibrated_on=calibrated_on)
        self.graph = graph
        self._compiled = compiled

    def forward(self, images: torch.Tensor):
        self.check_images(images)
        from torch._inductor import config as inductor_config

        # The compiled code is specialised to the kind of tensor it first saw; each call feeds it the same
        # kind (a fresh contiguous fp32 tensor, outside inference mode: a view, a channels-last batch or an
        # inference-mode tensor would each compile it again), with a batch size it may not specialise on
        # (unbacked: otherwise batch 1, and sizes past a conv heuristic's threshold, compile again).
        # Freezing (the int8 weights packed once, as constants) is an Inductor setting read whenever it
        # compiles, so it is set around every call.
        with torch.inference_mode(False), torch.no_grad(), inductor_config.patch(freezing=True):
            x = images.detach().to(torch.float32, memory_format=torch.contiguous_format, copy=True)
            torch._dynamo.decorators.mark_unbacked(x, 0)
            out = self._compiled(x)
        if isinstance(out, (list, tuple)):
            return type(out)(o.float() for o in out)
        return out.float()

    def extra_repr(self) -> str:
        return f"int8, calibrated on {self.calibrated_on} images at {self.img_size[0]}x{self.img_size[1]}"


def quantize(model: nn.Module, calibration: torch.Tensor | str | os.PathLike, *, img_size: int | None = None,
             calibration_images: int = DEFAULT_CALIBRATION_IMAGES, keep_float: Sequence[str] = KEEP_FLOAT,
             compile: bool = True) -> Int8Model:
    """An int8 copy of ``model`` (eval mode, CPU), calibrated on ``calibration``; ``model`` is untouched.

    ``calibration`` is a folder of images (``calibration_images`` of them are used, with the model's eval
    preprocessing at ``img_size``, default the model's) or a ready ``(N, C, H, W)`` batch of preprocessed
    images. The copy takes fp32 images of any batch size at that image size and returns fp32 outputs.
    With ``compile`` (the default) the first call compiles the model (a minute for TResNet-M on two
    cores; a C++ compiler must be installed, as for any ``torch.compile`` on the CPU); this function makes
    that first call. Modules whose last name is in ``keep_float`` stay in float (:data:`KEEP_FLOAT`).

    Raises :class:`~tresnet.errors.MissingDependencyError` without torchao, :class:`DataError` for
    calibration images that cannot be found or read, :class:`ConfigError` for a bad batch or count and
    :class:`~tresnet.errors.InputSizeError` for a size the model cannot take.
    """
    require_torchao()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    images = resolve_calibration(calibration, model, count=calibration_images,
                                 size=(img_size, img_size) if img_size is not None else None)
    size = (int(images.shape[-2]), int(images.shape[-1]))
    check = getattr(model, "check_input_size", None)
    if check is not None:
        check(*size)
    # BatchNorm folded by our own exact rewrite first (PT2E's folding needs plain BatchNorm parameters)
    base = fuse(copy.deepcopy(model).cpu().float())
    # torch.export's and torchao's notes to their own developers (a tensor built from a tensor, the exported
    # graph's train/eval mode), and the C++ extension loader's "No CUDA runtime is found, using CUDA_HOME=..."
    # when Inductor compiles on a machine with a CUDA toolkit and no GPU: none is addressed to the user
    with warnings.catch_warnings(), quiet_logger(CPP_EXTENSION_LOGGER):
        warnings.simplefilter("ignore", UserWarning)
        graph = _export(base, images[:2].clone())
        prepared = prepare_pt2e(graph, _quantizer(keep_float, base))
        with torch.no_grad():
            for batch in images.split(CALIBRATION_BATCH):
                prepared(batch)
        converted = convert_pt2e(prepared)
        # dynamic: one compilation serves every batch size (measured as fast as a static one at batch 8)
        compiled = torch.compile(converted, dynamic=True) if compile else converted
        int8 = Int8Model(converted, compiled, calibrated_on=len(images), img_size=size)
        int8(images[: min(len(images), 2)])  # compiled now rather than at the caller's first batch
    return int8


def _excluded_onnx_nodes(model_proto, keep_float: Sequence[str]) -> list[str]:
    """Names of the ONNX nodes that belong to modules named in ``keep_float`` (the exporter names nodes by
    module path: ``/body/layer1/layer1.0/se/fc1/Conv``)."""
    parts = {f"/{name}/" for name in keep_float} | {f".{name}/" for name in keep_float}
    return [node.name for node in model_proto.graph.node if any(part in node.name for part in parts)]


def quantize_onnx(float_path: str | os.PathLike, output: str | os.PathLike, images: torch.Tensor, *,
                  keep_float: Sequence[str] = KEEP_FLOAT, batch_size: int = CALIBRATION_BATCH) -> None:
    """Write ``output``, the int8 form of the fp32 ONNX file ``float_path``, calibrated on ``images``.

    ONNX Runtime's static quantization in QDQ form: weights int8 per output channel, activations uint8
    per tensor (min-max ranges over ``images``), the nodes of ``keep_float`` modules left in float. With
    a fixed batch size in the file, calibration feeds that many images at a time. ``images`` are
    preprocessed ``(N, C, H, W)`` fp32 tensors. Writes ``output`` directly (callers write to a temporary
    name and rename); the shape-inferred copy it makes on the way is deleted.
    """
    onnx, _ = require_onnx()
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    proto = onnx.load(str(float_path), load_external_data=False)
    input_name = proto.graph.input[0].name
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    step = batch_size if dim.dim_param or not dim.dim_value else int(dim.dim_value)
    batches = [images[i:i + step] for i in range(0, len(images) - step + 1, step)] or [images[:step]]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch.contiguous().numpy()}

    with tempfile.TemporaryDirectory(prefix="tresnet-quantize-", dir=Path(output).parent) as folder:
        inferred = Path(folder) / "inferred.onnx"
        quant_pre_process(str(float_path), str(inferred), skip_symbolic_shape=False)
        excluded = _excluded_onnx_nodes(onnx.load(str(inferred), load_external_data=False), keep_float)
        quantize_static(str(inferred), str(output), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=excluded)


__all__ = ["DEFAULT_CALIBRATION_IMAGES", "Calibration", "KEEP_FLOAT", "Int8Model", "load_calibration_images", "quantize", "quantize_onnx",
           "quiet_logger", "resolve_calibration", "require_torchao"]
