"""A model's PT2 export loaded back in this process, called like the model.

:func:`pt2_model` writes the model with :func:`tresnet.deploy.export_model` (``format="pt2"`` or ``"aoti"``: folded,
any batch size, checked against the float64 result before it is used) to a temporary file and loads it back as a
deployment would (:func:`tresnet.deploy.load_pt2`): ``torch.export.load(path).module()``, or the AOTInductor
package's compiled model. It is the benchmark's ``NAME:pt2`` and ``NAME:aoti``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from torch import nn

from tresnet.deploy.export import export_model
from tresnet.deploy.pt2 import load_pt2


def pt2_model(model: nn.Module, *, format: str = "pt2", img_size: int | tuple[int, int] | None = None,
              number_format: str = "fp32") -> Callable:
    """``model`` exported to a PT2 file with a dynamic batch and loaded back (inference only, on the CPU):
    ``format`` ``pt2``, the ExportedProgram's module, or ``aoti``, the program compiled by AOTInductor (about a
    minute for a small model); ``model`` is untouched.

    ``number_format`` ``fp32``, ``fp16`` (it then takes fp16 images) or ``bf16``, at ``img_size`` (default: the
    model's), as :func:`tresnet.deploy.export_model` writes and checks it. Raises what that raises, such as
    :class:`~tresnet.deploy.ExportMismatchError` for a file beyond its bound.
    """
    with tempfile.TemporaryDirectory(prefix="tresnet-pt2-") as folder:
        report = export_model(model, Path(folder) / "model.pt2", format=format, img_size=img_size,
                              dynamic_batch=True, number_format=number_format)
        return load_pt2(report.path)


__all__ = ["pt2_model"]
