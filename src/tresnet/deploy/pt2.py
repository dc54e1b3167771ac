"""PT2 files: a model as a ``torch.export`` ExportedProgram, saved by ``torch.export.save``.

A ``.pt2`` file holds the model's graph of ATen operations and its weights; ``torch.export.load(path).module()``
gives back a module to call like the model, with no Python source of ours (TResNet or GENet) needed to run it.
It is what PyTorch offers in place of TorchScript, whose ``torch.jit`` functions PyTorch 2.14 deprecates.

A dynamic batch is a ``torch.export.Dim`` on the first axis, from 1 up. ``torch.export`` specializes a size of 1
(a batch of 1 is traced as the constant 1), so a dynamic export is traced on a batch of several images: the
export's largest check batch. The extra files of the archive carry the metadata that ONNX keeps in its
``metadata_props`` (:func:`read_pt2_metadata`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from tresnet.deploy.exactness import as_list


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


def write_pt2(prepared: nn.Module, example: torch.Tensor, path: str, *, dynamic_batch: bool) -> None:
    """``prepared`` exported on ``example`` (:func:`export_program`) and saved to ``path``."""
    _save(export_program(prepared, example, dynamic_batch=dynamic_batch), path, {})


# The file is opened here, not named: torch.export warns about a path that does not end in .pt2, such as the
# temporary name an export is checked under.
def _save(program: torch.export.ExportedProgram, path: str | Path, extra_files: dict[str, str]) -> None:
    with warnings.catch_warnings(), open(path, "wb") as file:
        # the archive's note that weights sharing storage are stored once: all are on the CPU here
        warnings.simplefilter("ignore", UserWarning)
        torch.export.save(program, file, extra_files=extra_files)


def _load(path: str | Path, extra_files: dict[str, str] | None = None) -> torch.export.ExportedProgram:
    with open(path, "rb") as file:
        return torch.export.load(file, extra_files=extra_files)


def load_pt2(path: str | Path) -> nn.Module:
    """The module of the ExportedProgram saved at ``path``: called like the exported model, inference only."""
    return _load(path).module()


def run_pt2(path: str, inputs: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """The file at ``path`` loaded back and run on each input: its outputs in fp32."""
    module = load_pt2(path)
    with torch.no_grad():
        return [[o.float() for o in as_list(module(x))] for x in inputs]


def read_pt2_metadata(path: str | Path, key: str) -> dict | None:
    """The metadata entry ``key`` recorded in the PT2 file at ``path`` (its extra file ``<key>.json``), or None."""
    extra_files = {f"{key}.json": ""}
    _load(path, extra_files)
    text = extra_files[f"{key}.json"]
    return json.loads(text) if text else None


def record_pt2_metadata(path: str, texts: dict[str, str]) -> None:
    """Rewrite the PT2 file at ``path`` with ``texts`` (JSON by key) as its extra files ``<key>.json``; the
    program itself is written back as it was loaded."""
    _save(_load(path), path, {f"{key}.json": text for key, text in texts.items()})


__all__ = ["export_program", "load_pt2", "read_pt2_metadata", "record_pt2_metadata", "run_pt2", "write_pt2"]
