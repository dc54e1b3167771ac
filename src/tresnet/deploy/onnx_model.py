"""An ONNX export run by ONNX Runtime in this process, called like the model it came from.

:func:`onnx_model` writes the model with :func:`tresnet.deploy.export_model` (folded, any batch size, fp32 or
int8 quantized by ONNX Runtime, checked against the float64 result before it is used) to a temporary file and
opens it in an ONNX Runtime CPU session (:func:`tresnet.deploy.onnx_session`). The :class:`OnnxModel` it returns
takes fp32 NCHW images of any batch size and returns fp32 outputs, so that the inference commands and the
benchmark run it as they run a PyTorch model. It is the ``onnx`` int8 backend of
:func:`tresnet.deploy.inference.inference_model`, and the benchmark's ``NAME:onnx`` and ``NAME:onnx_int8``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import cast

import torch
from torch import nn

from tresnet.deploy.deployed import DeployedModel
from tresnet.deploy.export import export_model
from tresnet.deploy.int8 import Calibration
from tresnet.deploy.onnx_runtime import onnx_session


class OnnxModel(DeployedModel):
    """An ONNX Runtime session called like a model: fp32 images in, fp32 outputs out (a tensor, or a list for a
    file with several outputs), on the CPU, any batch size.

    ``number_format`` is the file's (``fp32`` or ``int8``); ``calibrated_on`` the number of calibration images of an
    int8 file; ``img_size`` the image size it was exported and checked at. ``backend`` says what runs it.
    """

    backend = "onnx"
    backend_name = "ONNX Runtime"
    runs_as = "ONNX Runtime model"

    def __init__(self, session, *, number_format: str, img_size: tuple[int, int],
                 calibrated_on: int | None = None) -> None:
        super().__init__(img_size=img_size, calibrated_on=calibrated_on)
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.number_format = number_format

    def forward(self, images: torch.Tensor):
        self.check_images(images)
        array = images.detach().to(torch.float32, memory_format=torch.contiguous_format).numpy()
        outputs = [torch.from_numpy(out).float() for out in self.session.run(None, {self.input_name: array})]
        return outputs[0] if len(outputs) == 1 else outputs

    def extra_repr(self) -> str:
        calibrated = f", calibrated on {self.calibrated_on} images" if self.calibrated_on else ""
        return f"{self.number_format} in {self.backend_name}{calibrated} at {self.img_size[0]}x{self.img_size[1]}"


def onnx_model(model: nn.Module, *, number_format: str = "fp32", img_size: int | tuple[int, int] | None = None,
               calibration: torch.Tensor | str | os.PathLike | None = None, calibration_images: int | None = None,
               threads: int | None = None) -> OnnxModel:
    """``model`` exported to ONNX and opened in ONNX Runtime: an :class:`OnnxModel`; ``model`` is untouched.

    ``number_format`` ``fp32`` or ``int8`` (quantized by ONNX Runtime, calibrated on ``calibration``: a folder of
    images, ``calibration_images`` of them, or a preprocessed batch), at ``img_size`` (default: the batch's
    size, else the model's), as :func:`tresnet.deploy.export_model` writes and checks it; ``threads`` intra-op threads (default: as many
    as PyTorch uses). The file lives only while the session is opened.

    Raises what :func:`tresnet.deploy.export_model` raises: :class:`~tresnet.errors.MissingDependencyError`
    without onnx and onnxruntime, :class:`ConfigError` and :class:`~tresnet.errors.DataError` for bad
    calibration, :class:`~tresnet.deploy.ExportMismatchError` for a file beyond its bound.
    """
    calibration_set: Calibration | None = None  # without it, export_model says that int8 needs one
    if number_format == "int8":
        if calibration is not None:
            calibration_set = Calibration(calibration, calibration_images)
        if img_size is None and isinstance(calibration, torch.Tensor):
            # a ready batch sets the size, as for quantize
            img_size = cast(tuple[int, int], tuple(calibration.shape[-2:]))
    with tempfile.TemporaryDirectory(prefix="tresnet-onnx-") as folder:
        report = export_model(model, Path(folder) / "model.onnx", format="onnx", img_size=img_size,
                              dynamic_batch=True, number_format=number_format, calibration=calibration_set)
        session = onnx_session(report.path, threads=threads or torch.get_num_threads())
    return OnnxModel(session, number_format=number_format, img_size=report.img_size,
                     calibrated_on=report.calibration_images)


__all__ = ["OnnxModel", "onnx_model"]
