"""Parameters and GMACs of the registered models, counted once and kept in a small cache file.

Counting means building the model (its weight initialisation is most of the time: about a second for
TResNet-XL) and running the FLOP counter (:func:`tresnet.bench.targets.count_gmacs`) once, on the meta device,
where no arithmetic is done. ``tresnet info`` lists ten models, so the counts are cached in
``$TRESNET_HOME/model_costs.json`` (:func:`default_cache_path`) under a fingerprint of everything they depend
on: the versions of tresnet and torch and the source of the model code (``tresnet/models``,
``tresnet/layers``, this module). A change to any of these counts every model again; a cache that cannot be
read or written is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import torch

from tresnet.bench.targets import count_gmacs, count_params_m
from tresnet.errors import TResNetError
from tresnet.factory import create_model
from tresnet.files import write_text
from tresnet.version import __version__
from tresnet.weights import cache_dir

CACHE_FILE = "model_costs.json"
_PACKAGE = Path(__file__).resolve().parent.parent
# What the counts depend on besides the versions: the networks, and how they are counted.
_SOURCES = ("models", "layers", "bench/costs.py", "bench/targets.py")


@dataclass(frozen=True)
class ModelCosts:
    """``params_m``: parameters in millions (at the registered number of classes); ``gmacs``: multiply-accumulates
    of one image at ``img_size``, in billions (:func:`tresnet.bench.targets.count_gmacs`)."""

    params_m: float
    gmacs: float
    img_size: int


def default_cache_path() -> Path:
    """``model_costs.json`` in the pretrained-weights cache (``$TRESNET_HOME``, else ``~/.cache/tresnet``)."""
    return cache_dir() / CACHE_FILE


def code_fingerprint() -> str:
    """A digest of the tresnet and torch versions and of the source files the counts depend on."""
    digest = hashlib.sha256(f"{__version__} {torch.__version__}".encode())
    for source in _SOURCES:
        path = _PACKAGE / source
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(str(file.relative_to(_PACKAGE)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def count_model_costs(name: str) -> ModelCosts:
    """Build the registered model ``name`` with fresh weights and count its parameters and GMACs at its own input
    size (the GMACs on the meta device). Raises :class:`~tresnet.errors.ModelNotFoundError` for an unknown name."""
    model = create_model(name)
    img_size = int(cast(dict, model.pretrained_cfg)["input_size"][-1])
    params_m = count_params_m(model)
    gmacs = count_gmacs(model.to("meta"), img_size, device="meta")
    return ModelCosts(params_m=params_m, gmacs=gmacs, img_size=img_size)


def _read_cache(path: Path, fingerprint: str) -> dict[str, ModelCosts]:
    """The counts cached in ``path`` under ``fingerprint``; empty when the file is missing, unreadable or stale."""
    try:
        found = json.loads(path.read_text())
        if found.get("fingerprint") != fingerprint:
            return {}
        return {name: ModelCosts(**costs) for name, costs in found["models"].items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def _write_cache(path: Path, fingerprint: str, costs: dict[str, ModelCosts]) -> None:
    """Write the counts atomically; a folder that cannot be written only costs the next run its time."""
    record = {"fingerprint": fingerprint, "models": {name: asdict(c) for name, c in sorted(costs.items())}}
    try:
        write_text(path, json.dumps(record, indent=1) + "\n")
    except (OSError, TResNetError):
        pass


def model_costs(names: Iterable[str], *, cache: str | os.PathLike | None = "default") -> Iterator[
        tuple[str, ModelCosts]]:
    """``(name, ModelCosts)`` for each of ``names`` in order, as soon as each is known: from the cache file
    when it holds counts of the current code (:func:`code_fingerprint`), else counted
    (:func:`count_model_costs`) and added to it. ``cache``: the file (``"default"``:
    :func:`default_cache_path`; None: count every model, keep nothing).

    Raises :class:`~tresnet.errors.ModelNotFoundError` for an unknown name.
    """
    path = default_cache_path() if cache == "default" else (Path(cache) if cache is not None else None)
    fingerprint = code_fingerprint() if path is not None else ""
    known = _read_cache(path, fingerprint) if path is not None else {}
    for name in names:
        if name not in known:
            known[name] = count_model_costs(name)
            if path is not None:
                _write_cache(path, fingerprint, known)
        yield name, known[name]


__all__ = ["CACHE_FILE", "ModelCosts", "code_fingerprint", "count_model_costs", "default_cache_path", "model_costs"]
