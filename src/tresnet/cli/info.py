"""`tresnet info`: build every variant (or the ones named), round-trip a checkpoint, print a table."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import tresnet
from tresnet.bench.targets import count_gmacs
from tresnet.errors import TResNetError


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


def run(args: argparse.Namespace) -> int:
    patterns = [p.strip() for p in args.models.split(",") if p.strip()]
    names = sorted({n for p in patterns for n in tresnet.list_models(p)})
    if not names:
        raise TResNetError(f"no model matches {args.models!r}; available: {', '.join(tresnet.list_models())}")
    header = f"{'model':<16}{'params (M)':>12}{'GMACs':>9}{'input':>10}{'top-1 (paper)':>15}{'round trip':>16}"
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
        print(f"{name:<16}{params:>12.2f}{gmacs:>9.2f}{'x'.join(map(str, size[1:])):>10}"
              f"{cfg['top1']:>15.1f}{check:>16}   ({time.perf_counter() - start:.1f} s)")
    return 0
