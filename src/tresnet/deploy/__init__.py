"""Deployment: BatchNorm folded into convs (:func:`fuse`), and ONNX / TorchScript export checked against PyTorch."""

from tresnet.deploy.export import (
    FORMATS,
    ExportError,
    ExportMismatchError,
    ExportReport,
    export_model,
    onnx_session,
    prepare_for_export,
    require_onnx,
)
from tresnet.deploy.fusion import fold_batchnorm, fuse

__all__ = [
    "FORMATS",
    "ExportError",
    "ExportMismatchError",
    "ExportReport",
    "export_model",
    "fold_batchnorm",
    "fuse",
    "onnx_session",
    "prepare_for_export",
    "require_onnx",
]
