"""PT2 files: a model as a ``torch.export`` ExportedProgram (``pt2``), or that program compiled ahead of time by
AOTInductor (``aoti``).

A ``pt2`` file (``torch.export.save``) holds the model's graph of ATen operations and its weights;
``torch.export.load(path).module()`` gives back a module to call like the model, with no Python source of ours
(TResNet or GENet) needed to run it. It is what PyTorch offers in place of TorchScript, whose ``torch.jit``
functions PyTorch 2.14 deprecates. An ``aoti`` file (``torch._inductor.aoti_compile_and_package``) is the same
program compiled to a shared library of C++ kernels for this machine's CPU, loaded back by
``torch._inductor.aoti_load_package(path)``; compiling needs a C++ compiler and takes about a minute for a small
model.

A dynamic batch is a ``torch.export.Dim`` on the first axis, from 1 up. ``torch.export`` specializes a size of 1
(a batch of 1 is traced as the constant 1), so a dynamic export is traced on a batch of several images. The
metadata that ONNX keeps in its ``metadata_props`` is saved with the program: an extra file ``<key>.json`` of a
``pt2`` archive, an entry of an ``aoti`` package's metadata (:func:`read_pt2_metadata` reads either).
"""

from __future__ import annotations

import json
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tresnet.deploy.exactness import as_list

PROGRAM_FORMATS = ("pt2", "aoti")  # the export formats that torch.export writes
_AOTI_PACKAGE_FOLDER = "/data/aotinductor/"  # where an AOTInductor package keeps its compiled model


def _first_line(error: Exception) -> str:
    """The first line of ``torch.export``'s message: the last one only says where to read more."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def export_program(prepared: nn.Module, example: torch.Tensor, *, dynamic_batch: bool) -> torch.export.ExportedProgram:
    """``prepared`` exported by ``torch.export`` on ``example``, its batch axis free (1 up) with ``dynamic_batch``.

    ``example`` must have at least 2 images when the batch is dynamic (a batch of 1 is specialized). A refusal of
    ``torch.export`` is raised as a ``RuntimeError`` of its first line, the one that says what it could not export.
    """
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", UserWarning)  # notes on what the tracer treats as constant
            return torch.export.export(prepared, (example,), dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as e:  # noqa: BLE001 - the exporter's refusal, in its own words
        raise RuntimeError(_first_line(e)) from e


# Files are opened here, not named: torch.export and AOTInductor want a path ending in .pt2 or an open file, and
# an export is checked under a temporary name.
def write_program(prepared: nn.Module, example: torch.Tensor, path: str, *, format: str, dynamic_batch: bool,
                  metadata: dict[str, dict | None]) -> None:
    """``prepared`` exported on ``example`` (:func:`export_program`) and written to ``path`` as ``format``
    (:data:`PROGRAM_FORMATS`), with each ``metadata`` entry (None skipped) as JSON."""
    program = export_program(prepared, example, dynamic_batch=dynamic_batch)
    texts = {key: json.dumps(value) for key, value in metadata.items() if value is not None}
    with warnings.catch_warnings(), open(path, "w+b") as file:
        # the archive's note that weights sharing storage are stored once: all are on the CPU here
        warnings.simplefilter("ignore", UserWarning)
        if format == "aoti":
            torch._inductor.aoti_compile_and_package(program, package_path=file,
                                                     inductor_configs={"aot_inductor.metadata": texts})
        else:
            torch.export.save(program, file, extra_files={f"{key}.json": text for key, text in texts.items()})


def load_pt2(path: str | Path) -> Callable:
    """What the PT2 file at ``path`` runs, called like the exported model (inference only, on the CPU): the
    ExportedProgram's module (``torch.export.load(path).module()``), or an AOTInductor package's compiled model."""
    aoti = _is_aoti_package(path)
    with open(path, "rb") as file:
        return torch._inductor.aoti_load_package(file) if aoti else torch.export.load(file).module()


def run_program(path: str, inputs: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """The PT2 file at ``path`` loaded back (:func:`load_pt2`) and run on each input: its outputs in fp32."""
    run = load_pt2(path)
    with torch.no_grad():
        return [[o.float() for o in as_list(run(x))] for x in inputs]


def read_pt2_metadata(path: str | Path, key: str) -> dict | None:
    """The metadata entry ``key`` recorded in the PT2 file at ``path``, or None: a ``pt2`` archive's extra file
    ``<key>.json``, an ``aoti`` package's metadata entry ``key``."""
    aoti = _is_aoti_package(path)
    extra_files = {f"{key}.json": ""}
    with open(path, "rb") as file:
        if aoti:
            text = torch._inductor.aoti_load_package(file).get_metadata().get(key, "")
        else:
            torch.export.load(file, extra_files=extra_files)
            text = extra_files[f"{key}.json"]
    return json.loads(text) if text else None


def _is_aoti_package(path: str | Path) -> bool:
    """Whether the PT2 archive at ``path`` holds a model compiled by AOTInductor rather than an ExportedProgram."""
    with zipfile.ZipFile(path) as archive:
        return any(_AOTI_PACKAGE_FOLDER in name for name in archive.namelist())


__all__ = ["PROGRAM_FORMATS", "export_program", "load_pt2", "read_pt2_metadata", "run_program", "write_program"]
