"""Subprocess entry point of :func:`tresnet.bench.batch_search.probe_peak_rss`.

``python -m tresnet.bench.probe '<json request>'`` builds one model on the CPU, runs a few batches of
inference and/or training and prints one JSON line with the process's peak resident memory after each.
A fresh process is needed because the peak resident size of a process never goes down. The runner
skips forms whose build holds more than what runs (``NAME:fused``, ``NAME:onnx``: see
:class:`~tresnet.bench.targets.Form`'s ``peak_memory_note``).
"""

from __future__ import annotations

import json
import sys

import torch

from tresnet.bench.batch_search import FIRST_STEP_IMAGES
from tresnet.bench.memory import image_peak_rss_bytes
from tresnet.bench.specs import BuildOptions, parse_model_spec
from tresnet.bench.targets import build_target, check_spec
from tresnet.bench.timing import make_step
from tresnet.errors import TResNetError


def run_probe(request: dict) -> dict:
    """Run the request (see :func:`~tresnet.bench.batch_search.probe_peak_rss`); return the peaks in bytes."""
    if request.get("threads"):
        torch.set_num_threads(int(request["threads"]))
    device = torch.device("cpu")
    spec = parse_model_spec(request["model"])
    check_spec(spec)  # imports the model's library (timm, for its models) before the baseline is taken
    reply = {"baseline_rss_bytes": image_peak_rss_bytes()}
    options = BuildOptions(device=device, img_size=request["img_size"], precision=request["precision"],
                           channels_last=request["channels_last"])
    target = build_target(spec, options)
    for mode in ("infer", "train"):
        if mode not in request["modes"]:
            continue
        step = make_step(target, mode, request["batch_size"], device=device, precision=request["precision"],
                         channels_last=request["channels_last"])
        if mode == "infer":  # inference keeps no state: one batch shows its peak
            step()
        else:
            # Training peaks from the second step on, once the optimizer's momentum sits beside the gradients.
            # The first step, which only creates that state, runs on FIRST_STEP_IMAGES images of the batch
            # (None: all of it): the same peak within the probes' own run-to-run spread
            # (benchmarks/probe_first_step.py) in about half the time at large batches.
            step(request.get("first_step_images", FIRST_STEP_IMAGES))
            for _ in range(request.get("steps", 2) - 1):
                step()
        del step
        reply[f"{mode}_peak_rss_bytes"] = image_peak_rss_bytes()
    return reply


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        reply = run_probe(json.loads(argv[0]))
    except TResNetError as error:
        print(json.dumps({"error": str(error)}))
        return 1
    print(json.dumps(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
