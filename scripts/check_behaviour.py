"""Check that a change of the engine leaves training and validation bit-identical.

Runs three short seeded runs on one thread with deterministic algorithms, through the command line a user
types: a digits classification run, a digits-multilabel run with ASL, and a th-kd distillation run (the
first run's weights as the teacher, with the teacher-head blend reported); then validates the first two
runs' best weights. What it keeps of each: the SHA-256 of every weights file's tensors and metadata, ``summary.json`` and
``metrics.csv`` without their timings, and the ``validate --json`` results without theirs.

    python3 scripts/check_behaviour.py record benchmarks/results/behaviour-<cpu>.json   # before the change
    python3 scripts/check_behaviour.py check benchmarks/results/behaviour-<cpu>.json    # after it

``check`` exits 1 and lists each difference (a setting a report gained on purpose since the reference, with its
default value, is not one: :data:`ADDED_SETTINGS`). Weights are compared bit for bit, so record and check on the
same machine (CPU kind and torch version): the recorded file names both, and ``check`` refuses another.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open

TIMINGS = {"images_per_s", "seconds", "session_seconds", "train_img_per_s", "epoch_seconds", "img_per_s",
           "seconds_total", "device"}
SHORT = ["--epochs", "2", "--max-steps-per-epoch", "6", "--max-val-images", "128", "--seed", "3",
         "--deterministic", "--threads", "1", "--workers", "0", "--no-progress", "--device", "cpu"]
RUNS = {
    "digits": ["--data", "digits"],
    "digits-multilabel-asl": ["--task", "multilabel", "--data", "digits-multilabel", "--loss", "asl"],
    "digits-th-kd": ["--data", "digits", "--distill", "th-kd", "--teacher-checkpoint", "{digits}/best.safetensors",
                     "--teacher-head-blend", "0.5"],
}
VALIDATIONS = {"digits": ["--data", "digits"], "digits-multilabel-asl": ["--data", "digits-multilabel"]}


def _tresnet(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # validate has no --threads: one math thread for it too
    done = subprocess.run([sys.executable, "-m", "tresnet", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"tresnet {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _weights_sha256(path: Path) -> str:
    """SHA-256 of the tensors (names, dtypes, shapes and bytes, in name order) and the sorted metadata: the file's
    own bytes are not stable, as safetensors writes the metadata in a random order."""
    digest = hashlib.sha256()
    with safe_open(path, framework="pt") as f:
        digest.update(json.dumps(f.metadata(), sort_keys=True).encode())
        for name in sorted(f.keys()):
            tensor = f.get_tensor(name).contiguous().reshape(-1)
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _figures(row: dict) -> dict:
    """A metrics.csv row without its timings and its empty cells: an empty cell is no figure (the columns are the
    run's task's own since the tasks became objects; earlier versions wrote every task's, empty where they did
    not apply)."""
    return {k: v for k, v in _without_timings(row).items() if v != ""}


def _run_record(folder: Path) -> dict:
    with open(folder / "metrics.csv", newline="") as f:
        rows = [_figures(row) for row in csv.DictReader(f)]
    return {
        "weights_sha256": {p.name: _weights_sha256(p) for p in sorted(folder.glob("*.safetensors"))},
        "summary": _without_timings(json.loads((folder / "summary.json").read_text())),
        "metrics_csv": rows,
    }


def measure(work: Path) -> dict:
    """Train the three runs in ``work`` and validate two of them; what is compared, by run name."""
    record = {}
    for name, args in RUNS.items():
        output = work / name
        args = [a.format(digits=work / "digits") for a in args]
        _tresnet("train", *args, *SHORT, "--output", str(output))
        record[name] = _run_record(output)
    for name, args in VALIDATIONS.items():
        json_path = work / f"{name}-validate.json"
        _tresnet("validate", *args, "--checkpoint", str(work / name / "best.safetensors"), "--json", str(json_path),
                 "--no-progress", "--device", "cpu")
        report = _without_timings(json.loads(json_path.read_text()))
        report.pop("checkpoint")  # a path in a temporary folder
        record[name]["validate"] = report
    return record


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "torch": torch.__version__, "python": platform.python_version()}


# Keys a report gained on purpose after the reference was recorded: each states a setting of the run, not a
# figure it computed. number_format: validate's report names the deployed number format since autocast precision
# and number format became two words.
ADDED_SETTINGS = {"number_format": "fp32"}


def _differences(expected, actual, where: str = "") -> list[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = []
        for key in sorted(set(expected) | set(actual)):
            if key not in expected and key in ADDED_SETTINGS and actual[key] == ADDED_SETTINGS[key]:
                continue
            if key not in actual or key not in expected:
                out.append(f"{where}/{key}: {'missing' if key not in actual else 'new'}")
            else:
                out += _differences(expected[key], actual[key], f"{where}/{key}")
        return out
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [d for i, (e, a) in enumerate(zip(expected, actual, strict=True)) for d in _differences(e, a, f"{where}[{i}]")]
    return [] if expected == actual else [f"{where}: expected {expected!r}, got {actual!r}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("record", "check"))
    parser.add_argument("reference", type=Path, help="the JSON file recorded (record) or to compare with (check)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        if args.action == "check":
            reference = json.loads(args.reference.read_text())
            if reference["machine"] != machine():
                raise SystemExit(f"{args.reference} was recorded on {reference['machine']}, this is {machine()}: "
                                 f"record a reference here before the change")
        runs = measure(Path(work))
    if args.action == "record":
        args.reference.parent.mkdir(parents=True, exist_ok=True)
        args.reference.write_text(json.dumps({"machine": machine(), "runs": runs}, indent=2) + "\n")
        print(f"recorded {len(runs)} runs in {args.reference}")
        return 0
    for run in reference["runs"].values():
        run["metrics_csv"] = [_figures(row) for row in run["metrics_csv"]]
    differences = _differences(reference["runs"], runs)
    for line in differences:
        print(line)
    print(f"{len(differences)} difference(s) from {args.reference}" if differences
          else f"identical to {args.reference}: {', '.join(runs)}")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
