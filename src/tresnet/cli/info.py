"""`tresnet info`: list every model (or the ones named) with its parameters, GMACs, input size and published top-1,
grouped by family; with --check, also round-trip each one's weights through our checkpoint format; with --weights,
list the published weights and where they are on this machine."""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

import tresnet
from tresnet.bench.costs import model_costs
from tresnet.errors import TResNetError
from tresnet.models.registry import FAMILIES, MODEL_CONFIGS
from tresnet.weights import PLACES, weights_on_machine


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("info", help="list the models: parameters, GMACs, input size, published top-1",
                              description="Print a table of the models: parameters and GMACs (counted once, then "
                                          "cached in $TRESNET_HOME/model_costs.json until the code changes), input "
                                          "size and published top-1. With --check, also build each model, save and "
                                          "reload its weights in our checkpoint format and check that the outputs "
                                          "match (seconds per model).")
    p.add_argument("--models", default="*", help="comma-separated names or shell patterns (default: all)")
    p.add_argument("--check", action="store_true",
                   help="round-trip each model's weights through our checkpoint format and compare the outputs")
    p.add_argument("--weights", action="store_true",
                   help="instead of the table, list each model's published weights (per tag) and where they are on "
                        "this machine: our cache, the Hugging Face cache, the torch.hub folder")
    p.set_defaults(func=run)


def roundtrip_max_diff(model: torch.nn.Module, input_size: tuple[int, int, int]) -> float:
    """Save ``model`` in our format, load it into a fresh copy, and return the largest output difference."""
    name = model.pretrained_cfg["model"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.safetensors"
        tresnet.save_checkpoint(model, path)
        clone = tresnet.create_model(name, checkpoint_path=path).eval()
    x = torch.rand(1, *input_size)
    with torch.no_grad():
        return (model(x) - clone(x)).abs().max().item()


def _ordered_names(pattern_list: str) -> list[str]:
    """The models matching the comma-separated patterns, grouped by family (registry order), then by name."""
    patterns = [p.strip() for p in pattern_list.split(",") if p.strip()]
    families = list(FAMILIES)
    names = {n for p in patterns for n in tresnet.list_models(p)}
    if not names:
        raise TResNetError(f"no model matches {pattern_list!r}; available: {', '.join(tresnet.list_models())}")
    return sorted(names, key=lambda n: (families.index(MODEL_CONFIGS[n]["family"]), n))


def _top1(top1: float | None, size: int | None, decimals: int) -> str:
    """A top-1 with the side it was evaluated at, e.g. ``75.7 @192``; ``-`` when there is none."""
    return f"{top1:.{decimals}f} @{size}" if top1 is not None and size is not None else "-"


def _check(name: str) -> str:
    """``ok (1.2 s)`` when the round trip of a fresh ``name`` keeps its outputs; :class:`TResNetError` otherwise."""
    start = time.perf_counter()
    model = tresnet.create_model(name).eval()
    diff = roundtrip_max_diff(model, tuple(model.pretrained_cfg["input_size"]))
    if diff != 0.0:
        raise TResNetError(f"checkpoint round trip of {name} changed the outputs by {diff:.3g}")
    return f"ok ({time.perf_counter() - start:.1f} s)"


def show_weights(names: list[str]) -> int:
    """One line per published set of weights of ``names``: where its file is on this machine, or ``-``."""
    found = [(weights, where) for name in names for weights, where in weights_on_machine(name)]
    tags = Counter(weights.model for weights, _ in found)
    labels = [weights.name + (" (default)" if weights.default and tags[weights.model] > 1 else "")
              for weights, _ in found]
    width = max(map(len, labels)) + 2
    print(f"{'weights':<{width}}{'where':<24}file")
    print("-" * (width + 48))
    for label, (_, where) in zip(labels, found, strict=True):
        place, path = (where.place, str(where.path)) if where is not None else ("-", "")
        print(f"{label:<{width}}{place:<24}{path}".rstrip(), flush=True)
    print(f"{sum(where is not None for _, where in found)} of {len(found)} on this machine. Looked in, in order: "
          + "; ".join(f"{place.title} {place.folder()}" for place in PLACES)
          + ". `tresnet validate --model NAME --pretrained [--pretrained-tag TAG]` loads them.")
    return 0


def run(args: argparse.Namespace) -> int:
    names = _ordered_names(args.models)
    if args.weights:
        return show_weights(names)
    header = (f"{'model':<16}{'family':<9}{'params (M)':>11}{'GMACs':>8}{'input':>9}{'top-1 (published)':>19}"
              f"{'top-1 (timm)':>14}" + (f"{'round trip':>14}" if args.check else ""))
    print(header)
    print("-" * len(header), flush=True)
    for name, costs in model_costs(names):
        cfg = tresnet.get_pretrained_cfg(name)
        size = tuple(cfg["input_size"])
        timm_eval = cfg.get("timm_eval") or {}
        check = f"{_check(name):>14}" if args.check else ""
        print(f"{name:<16}{FAMILIES[cfg['family']].title:<9}{costs.params_m:>11.2f}{costs.gmacs:>8.2f}"
              f"{'x'.join(map(str, size[1:])):>9}{_top1(cfg.get('top1'), size[1], 1):>19}"
              f"{_top1(timm_eval.get('top1'), timm_eval.get('img_size'), 3):>14}{check}", flush=True)
    print("top-1: ImageNet top-1 (%) @ the input side it was measured at; published: the paper (or the "
          "official release), timm: timm's evaluation of the same weights")
    return 0
