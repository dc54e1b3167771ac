"""`tresnet info`: build every model (or the ones named), round-trip a checkpoint, print a table grouped by family."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import tresnet
from tresnet.bench.targets import count_gmacs
from tresnet.errors import TResNetError
from tresnet.models.registry import FAMILIES, MODEL_CONFIGS


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("info", help="list the models: parameters, GMACs, input size; check checkpoints",
                              description="Build each model, save and reload its weights in our checkpoint "
                                          "format (checking the outputs match), and print a table.")
    p.add_argument("--models", default="*", help="comma-separated names or shell patterns (default: all)")
    p.add_argument("--no-roundtrip", action="store_true", help="skip the checkpoint round trip")
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


def run(args: argparse.Namespace) -> int:
    names = _ordered_names(args.models)
    header = (f"{'model':<16}{'family':<9}{'params (M)':>11}{'GMACs':>8}{'input':>9}{'top-1 (published)':>19}"
              f"{'top-1 (timm)':>14}{'round trip':>12}")
    print(header)
    print("-" * len(header))
    for name in names:
        start = time.perf_counter()
        model = tresnet.create_model(name).eval()
        cfg = model.pretrained_cfg
        size = tuple(cfg["input_size"])
        params = sum(p.numel() for p in model.parameters()) / 1e6
        gmacs = count_gmacs(model, size[1])
        check = "skipped"
        if not args.no_roundtrip:
            diff = roundtrip_max_diff(model, size)
            check = "ok" if diff == 0.0 else f"DIFF {diff:.1e}"
            if diff != 0.0:
                raise TResNetError(f"checkpoint round trip of {name} changed the outputs by {diff:.3g}")
        timm_eval = cfg.get("timm_eval") or {}
        print(f"{name:<16}{FAMILIES[cfg['family']].title:<9}{params:>11.2f}{gmacs:>8.2f}"
              f"{'x'.join(map(str, size[1:])):>9}{_top1(cfg.get('top1'), size[1], 1):>19}"
              f"{_top1(timm_eval.get('top1'), timm_eval.get('img_size'), 3):>14}{check:>12}"
              f"   ({time.perf_counter() - start:.1f} s)")
    print("top-1: ImageNet top-1 (%) @ the input side it was measured at; published: the paper (or the "
          "official release), timm: timm's evaluation of the same weights")
    return 0
