"""ONNX Runtime plumbing shared by export, int8 quantization and the ONNX Runtime model: the optional packages,
and a CPU session."""

from __future__ import annotations

import os
from types import ModuleType

from tresnet.errors import MissingDependencyError


def require_onnx() -> tuple[ModuleType, ModuleType]:
    """``(onnx, onnxruntime)``; :class:`~tresnet.errors.MissingDependencyError` saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise MissingDependencyError(
            f"ONNX export needs the packages onnx and onnxruntime ({e.name or e} is missing): "
            f"pip install 'tresnet[export]'"
        ) from e
    return onnx, onnxruntime


def onnx_session(path: str | os.PathLike, *, threads: int | None = None):
    """An ONNX Runtime CPU session for ``path`` (all graph optimisations; ``threads`` intra-op threads).

    Its threads do not spin-wait between runs (ONNX Runtime's default): spinning threads keep the cores busy
    after a run and slow whatever runs next, such as the other paths of an interleaved benchmark.
    """
    _, ort = require_onnx()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


__all__ = ["onnx_session", "require_onnx"]
