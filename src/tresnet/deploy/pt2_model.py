"""A model's PT2 export loaded back in this process: the ExportedProgram's module, called like the model.

:func:`pt2_model` writes the model with :func:`tresnet.deploy.export_model` (``format="pt2"``: folded, any batch
size, checked against the float64 result before it is used) to a temporary file and loads it back with
``torch.export.load(path).module()``, as a deployment would. It is the benchmark's ``NAME:pt2``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from torch import nn

from tresnet.deploy.export import export_model
from tresnet.deploy.pt2 import load_pt2


def pt2_model(model: nn.Module, *, img_size: int | tuple[int, int] | None = None,
              number_format: str = "fp32") -> nn.Module:
    """``model`` exported to a PT2 file with a dynamic batch and loaded back: the ExportedProgram's module (inference
    only, on the CPU); ``model`` is untouched.

    ``number_format`` ``fp32``, ``fp16`` (it then takes fp16 images) or ``bf16``, at ``img_size`` (default: the
    model's), as :func:`tresnet.deploy.export_model` writes and checks it. Raises what that raises, such as
    :class:`~tresnet.deploy.ExportMismatchError` for a file beyond its bound.
    """
    with tempfile.TemporaryDirectory(prefix="tresnet-pt2-") as folder:
        report = export_model(model, Path(folder) / "model.pt2", format="pt2", img_size=img_size,
                              dynamic_batch=True, number_format=number_format)
        return load_pt2(report.path)


__all__ = ["pt2_model"]
