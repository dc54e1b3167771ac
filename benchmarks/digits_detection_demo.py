"""The detection demo as a new user runs it, timed from the command's start (start-up included), then validated
and drawn as the docs show it:

    tresnet train --task detection --data digits-detection --output OUT
    tresnet validate --data digits-detection --checkpoint OUT/best.safetensors --detections DETS --json REPORT
    tresnet predict --data digits-detection --checkpoint OUT/best.safetensors --save-images DRAWN

Writes, under ``--results``, ``digits_detection_demo.json`` (the run's summary, its per-epoch AP and AP50, the
validation report with COCOeval's 12 numbers, pycocotools' own figures on the detections file, the wall-clock
time, the machine) and ``digits_detection_demo.md`` (the table the detection guide shows); copies the run's
``metrics.png`` to ``docs/img/digits_detection_metrics.png`` and a few drawn canvases, side by side, to
``docs/img/digits_detection_predictions.png``. The issue's target: AP50 of at least 90 within 10 minutes on a
2-core CPU.

    python benchmarks/digits_detection_demo.py            # about 10 minutes on a 2-core EPYC
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torchvision.io import decode_png, write_png

from digits_multilabel_demo import run_command
from tresnet.bench import machine_record
from tresnet.files import write_text
from tresnet.tasks.detection_metrics import coco_stats

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PLOT = ROOT / "docs" / "img" / "digits_detection_metrics.png"
PICTURE = ROOT / "docs" / "img" / "digits_detection_predictions.png"
TARGET_AP50, TARGET_SECONDS = 0.90, 600
STATS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar1", "ar10", "ar100", "ar_small", "ar_medium",
         "ar_large")


def pycocotools_stats(annotations: Path, detections: Path) -> list[float]:
    """COCOeval's 12 numbers of a results file against an annotation file, as written (what any COCO tool reads)."""
    return list(coco_stats(json.loads(annotations.read_text()), json.loads(detections.read_text())))


def side_by_side(drawn: Path, count: int = 4) -> None:
    """The first ``count`` drawn canvases in one row, for the docs."""
    pictures = [decode_png(torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8))
                for path in sorted(drawn.glob("*.png"))[:count]]
    PICTURE.parent.mkdir(parents=True, exist_ok=True)
    write_png(torch.cat(pictures, dim=2), str(PICTURE))


def markdown(record: dict) -> str:
    summary, report = record["summary"], record["validation"]
    met = report["ap50"] >= 100 * TARGET_AP50 and record["wall_seconds"] <= TARGET_SECONDS
    lines = [f"Measured on {record['cpu']} ({record['cpu_count']} cores; ISA flags: "
             f"{', '.join(record['cpu_flags']) or 'none'}), two math threads (the recipe's), {record['date'][:10]}: "
             f"**AP50 {report['ap50']:.1f}, AP (0.5:0.95) {report['ap']:.1f}** ({summary['best_weights']} weights of "
             f"epoch {summary['best_epoch']}) in **{int(record['wall_seconds'] // 60)} min "
             f"{record['wall_seconds'] % 60:.0f} s** wall-clock, start-up included (target: AP50 of at least "
             f"{100 * TARGET_AP50:.0f} within {TARGET_SECONDS // 60} minutes: {'met' if met else '**not met**'}); "
             f"training ran at {summary['images_per_s']:.0f} img/s. pycocotools on the `--detections` file gives "
             f"AP {100 * record['pycocotools'][0]:.1f}, AP50 {100 * record['pycocotools'][1]:.1f}.", "",
             "| epoch | train loss | val AP | val AP50 | seconds |", "|---|---|---|---|---|"]
    for row in record["epochs"]:
        lines.append(f"| {row['epoch']} | {float(row['train_loss']):.4f} | {100 * float(row['val_ap']):.2f} | "
                     f"{100 * float(row['val_ap50']):.2f} | {float(row['epoch_seconds']):.1f} |")
    lines += ["", "COCOeval's 12 numbers of `tresnet validate` on the 500 validation canvases:", "",
              "| " + " | ".join(STATS) + " |", "|" + "---|" * len(STATS),
              "| " + " | ".join(f"{report[name]:.1f}" for name in STATS) + " |", "",
              "![AP per epoch](img/digits_detection_metrics.png)", "", f"Reproduce: `{record['command']}`"]
    return "\n".join(lines) + "\n"


def run(folder: Path) -> dict:
    """The demo, its validation (with the detections file, and the val canvases written as COCO files) and its
    drawn predictions; what the record keeps."""
    output = folder / "run"
    load_before = os.getloadavg()[0]
    seconds, printed = run_command(["train", "--task", "detection", "--data", "digits-detection", "--output",
                                    str(output), "--no-progress"])
    print(printed)
    checkpoint = output / "best.safetensors"
    report, detections = folder / "report.json", folder / "detections.json"
    print(run_command(["validate", "--data", "digits-detection", "--checkpoint", str(checkpoint), "--detections",
                       str(detections), "--json", str(report), "--no-progress"])[1])
    run_command(["data", "digits-detection", "--output", str(folder / "val"), "--checkpoint", str(checkpoint)])
    run_command(["predict", "--data", "digits-detection", "--checkpoint", str(checkpoint), "--save-images",
                 str(folder / "drawn")])
    side_by_side(folder / "drawn")
    if (output / "metrics.png").is_file():
        shutil.copyfile(output / "metrics.png", PLOT)
    return dict(load_avg_1min_before=load_before, load_avg_1min_after=os.getloadavg()[0], wall_seconds=seconds,
                summary=json.loads((output / "summary.json").read_text()),
                epochs=[{k: v for k, v in row.items() if v != ""} for row in csv.DictReader((output / "metrics.csv").open())],
                validation=json.loads(report.read_text()),
                pycocotools=pycocotools_stats(folder / "val" / "instances.json", detections))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rewrite", action="store_true",
                        help="rewrite the Markdown table from the saved JSON instead of running the demo")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not args.rewrite:
        with tempfile.TemporaryDirectory(prefix="tresnet-demo-") as folder:
            measured = run(Path(folder))
        record = machine_record("digits_detection_demo",
                                "tresnet train --task detection --data digits-detection --output runs/det", **measured)
        write_text(args.results / "digits_detection_demo.json", json.dumps(record, indent=2) + "\n")
    record = json.loads((args.results / "digits_detection_demo.json").read_text())
    table = markdown(record)
    write_text(args.results / "digits_detection_demo.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
