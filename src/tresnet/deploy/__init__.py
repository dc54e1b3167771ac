"""Deployment: BatchNorm folded into convs (:func:`fuse`, fp32 or bfloat16), int8 quantization calibrated on
images (:func:`quantize`, PT2E; or :func:`onnx_model`, ONNX Runtime), and ONNX / PT2 / TorchScript export checked
against the float64 result (:func:`export_model`; a PT2 file loaded back by :func:`load_pt2`)."""

from tresnet.deploy.deployed import DeployedModel
from tresnet.deploy.detection_export import DetectorNetwork, detect_with, export_detector
from tresnet.deploy.exactness import BOUNDS, Agreement, check_against_exact
from tresnet.deploy.export import export_model, prepare_for_export
from tresnet.deploy.export_files import (
    EXPORT_NUMBER_FORMATS,
    FORMATS,
    ExportError,
    ExportMismatchError,
    ExportReport,
)
from tresnet.deploy.fusion import fuse
from tresnet.deploy.int8 import (
    DEFAULT_CALIBRATION_IMAGES,
    KEEP_FLOAT,
    Calibration,
    Int8Model,
    load_calibration_images,
    quantize,
    quantize_onnx,
    require_torchao,
)
from tresnet.deploy.onnx_model import OnnxModel, onnx_model
from tresnet.deploy.onnx_runtime import onnx_session, require_onnx
from tresnet.deploy.pt2 import load_pt2, read_pt2_metadata
from tresnet.deploy.pt2_model import pt2_model
from tresnet.layers.fused import fold_batchnorm

__all__ = [
    "BOUNDS",
    "DEFAULT_CALIBRATION_IMAGES",
    "EXPORT_NUMBER_FORMATS",
    "FORMATS",
    "KEEP_FLOAT",
    "Agreement",
    "Calibration",
    "ExportError",
    "DeployedModel",
    "DetectorNetwork",
    "detect_with",
    "export_detector",
    "ExportMismatchError",
    "ExportReport",
    "Int8Model",
    "OnnxModel",
    "load_calibration_images",
    "check_against_exact",
    "export_model",
    "fold_batchnorm",
    "fuse",
    "load_pt2",
    "onnx_model",
    "onnx_session",
    "prepare_for_export",
    "pt2_model",
    "quantize",
    "quantize_onnx",
    "read_pt2_metadata",
    "require_onnx",
    "require_torchao",
]
