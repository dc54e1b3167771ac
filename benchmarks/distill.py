"""What does distillation buy a small student? none, kd, th-kd and sh-kd side by side, from the same seeds.

The task: scikit-learn's handwritten digits (the digits demo's data and validation split: 359 val images),
upscaled to 32 px and written as an image folder. The teacher, TResNet-M, trains on the whole training
split (1,438 images); each student, GENet-light, sees only ``--train-per-class`` images of each digit
(20: 200 images, the same for every student). The student is then clearly below the teacher, which is
where distillation has something to give: a small network with little labelled data, and a larger one
trained on more. Both train from scratch with the digits-demo recipe (AdamW, cosine, EMA, label smoothing).

Runs, each with ``tresnet.training.trainer.train`` (the code path of ``tresnet train``):

1. the teacher (``--teacher-epochs``, seed 0);
2. students without distillation, seeds ``--seeds`` (``none``);
3. students with ``--distill kd`` and ``--distill th-kd`` from that teacher, same seeds; th-kd once for each
   teacher-head weight of ``--teacher-head-weights`` (0.02, the default, is the TH-KD example of the paper's
   code, Alibaba-MIIL/HeadSharingKD's README; 1 weighs the term like the kd term);
4. sh-kd: a second TResNet-M trained like the teacher but with the seed-0 ``none`` student's classifier
   copied in and frozen (``--frozen-head-from``; GENet-light's 1,920 features differ from TResNet-M's
   2,048, so a learned projection sits in front), then students distilled from it with ``kd``, same seeds.

The score of a student is the top-1 of its best epoch (model or EMA weights, as ``best.safetensors`` holds),
on the 359 val images: one image is 0.28 points. The table gives the mean and the spread (min..max and the
sample standard deviation) over the seeds, and the training time per epoch (the teacher's forward pass
included for the distilled students). Finished runs are kept in ``--runs`` and reused when the script is run
again with the same settings (delete the folder to start over). Writes ``--json`` and ``--markdown``::

    python benchmarks/distill.py --runs runs/distill

On ImageNet the same comparison is four ``tresnet train`` runs per seed (see docs/distill.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from tresnet.bench import command_line, machine_record
from tresnet.data.digits import load_digits_images
from tresnet.data.splits import stratified_split
from tresnet.files import write_text
from tresnet.training.config import OPTIONS, build_config
from tresnet.training.run_files import BEST_FILE, SUMMARY_FILE
from tresnet.training.trainer import train

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("none", "kd", "th-kd", "sh-kd")
DEFAULT_HEAD_WEIGHT = OPTIONS["teacher_head_weight"].default  # the th-kd row the verdict reads
VAL_FRACTION, SPLIT_SEED = 0.2, 0  # the digits demo's split (digits-demo recipe)
IMG_SIZE = 32


def write_digits_folders(root: Path, train_per_class: int, subset_seed: int = 0) -> tuple[Path, Path]:
    """Two image folders with the demo's val split: ``full`` (the whole training split) and ``small`` (the
    first ``train_per_class`` images of each digit in a seeded shuffle of the training split)."""
    images, labels = load_digits_images(IMG_SIZE)
    train_idx, val_idx = stratified_split(labels.tolist(), VAL_FRACTION, SPLIT_SEED)
    order = torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(subset_seed)).tolist()
    shuffled = [train_idx[i] for i in order]
    small = [i for d in range(10) for i in [j for j in shuffled if int(labels[j]) == d][:train_per_class]]
    for name, train_indices in (("full", train_idx), ("small", small)):
        for split, indices in (("train", train_indices), ("val", val_idx)):
            for i in indices:
                folder = root / name / split / str(int(labels[i]))
                folder.mkdir(parents=True, exist_ok=True)
                pixels = (images[i, 0] * 255).round().to(torch.uint8).numpy()
                Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    return root / "full", root / "small"


def run(output: Path, options: dict) -> dict:
    """Train (or reuse the finished run in ``output`` made with the same options): its summary and metrics."""
    summary_path = output / SUMMARY_FILE
    options_path = output / "benchmark_options.json"
    if summary_path.is_file() and options_path.is_file() and json.loads(options_path.read_text()) == options:
        print(f"  reusing {output}", flush=True)
        return json.loads(summary_path.read_text())
    if output.exists():
        raise SystemExit(f"{output} holds another or an unfinished run: delete it, or pass another --runs")
    start = time.perf_counter()
    summary = train(build_config("digits-demo", {**options, "output": str(output)}))
    write_text(options_path, json.dumps(options, sort_keys=True))
    print(f"  {output.name}: best val top-1 {100 * summary['best_top1']:.2f}% in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    return summary


def seconds_per_epoch(summary: dict, images_per_epoch: int) -> float:
    return images_per_epoch / summary["images_per_s"]


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}


def _common(args: argparse.Namespace) -> dict:
    return {"threads": args.threads, "progress": False, "workers": 0, "img_size": IMG_SIZE}


def train_teachers(args: argparse.Namespace, full: Path, runs: Path) -> dict:
    """The teacher, and sh-kd's teacher (the seed-0 plain student's classifier frozen in)."""
    teacher = {**_common(args), "model": args.teacher, "data": str(full), "epochs": args.teacher_epochs,
               "batch_size": args.batch_size, "seed": 0}
    out = {"teacher": run(runs / "teacher", teacher)}
    sh_options = {**teacher, "frozen_head_from": str(runs / f"none-seed{args.seeds[0]}" / BEST_FILE)}
    out["sh-teacher"] = run(runs / "sh-teacher", sh_options)
    return out


def student_options(args: argparse.Namespace, small: Path, seed: int, method: str, runs: Path,
                    head_weight: float | None = None) -> dict:
    options = {**_common(args), "model": args.student, "data": str(small), "epochs": args.student_epochs,
               "batch_size": args.batch_size, "seed": seed}
    if method in ("kd", "th-kd"):
        options.update(distill=method, teacher_checkpoint=str(runs / "teacher" / BEST_FILE))
    if method == "th-kd":
        options.update(teacher_head_weight=head_weight)
    elif method == "sh-kd":
        options.update(distill="kd", teacher_checkpoint=str(runs / "sh-teacher" / BEST_FILE))
    return options


def measure(args: argparse.Namespace) -> dict:
    runs = Path(args.runs)
    full, small = write_digits_folders(runs / "data", args.train_per_class)
    small_images = 10 * args.train_per_class
    steps = small_images // args.batch_size  # the loader drops the last partial batch
    variants = [("none", None), ("kd", None), *[("th-kd", w) for w in args.teacher_head_weights], ("sh-kd", None)]
    results: dict = {"students": {_label(m, w): {} for m, w in variants}}
    for seed in args.seeds:
        results["students"]["none"][seed] = run(runs / f"none-seed{seed}",
                                                student_options(args, small, seed, "none", runs))
    results["teachers"] = train_teachers(args, full, runs)
    for method, weight in variants[1:]:
        for seed in args.seeds:
            options = student_options(args, small, seed, method, runs, weight)
            label = _label(method, weight)
            results["students"][label][seed] = run(runs / _folder(label, seed), options)
    rows = []
    for method, weight in variants:
        summaries = [results["students"][_label(method, weight)][seed] for seed in args.seeds]
        rows.append({"method": _label(method, weight), "top1": spread([100 * s["best_top1"] for s in summaries]),
                     "seconds_per_epoch": statistics.fmean(seconds_per_epoch(s, steps * args.batch_size)
                                                           for s in summaries),
                     "img_per_s": statistics.fmean(s["images_per_s"] for s in summaries)})
    teachers = {name: {"model": s["model"], "top1": 100 * s["best_top1"], "img_per_s": s["images_per_s"]}
                for name, s in results["teachers"].items()}
    every_run = [*results["teachers"].values(), *(s for by_seed in results["students"].values() for s in by_seed.values())]
    return {"rows": rows, "teachers": teachers, "verdict": verdict(rows),
            "runs_seconds": sum(s["session_seconds"] for s in every_run), "runs": len(every_run)}


def _label(method: str, head_weight: float | None) -> str:
    return f"{method}, beta {head_weight:g}" if head_weight is not None else method


def _folder(label: str, seed: int) -> str:
    return f"{label.replace(', beta ', '-beta')}-seed{seed}"


def verdict(rows: list[dict]) -> dict:
    """Whether the paper's ordering th-kd >= kd > none holds on the means, and whether each step is larger
    than the spread of the seeds (the larger of the two standard deviations)."""
    by = {row["method"]: row["top1"] for row in rows}
    by["th-kd"] = by[_label("th-kd", DEFAULT_HEAD_WEIGHT)]

    def step(a: str, b: str) -> dict:
        gap = by[a]["mean"] - by[b]["mean"]
        wins = sum(x > y for x, y in zip(by[a]["values"], by[b]["values"], strict=True))  # same seed: same start
        return {"gap_points": gap, "beyond_spread": abs(gap) > max(by[a]["std"], by[b]["std"]), "seed_wins": wins,
                "seeds": len(by[a]["values"])}
    kd_over_none, th_over_kd = step("kd", "none"), step("th-kd", "kd")
    holds = kd_over_none["gap_points"] > 0 and th_over_kd["gap_points"] >= 0
    return {"ordering_holds": holds, "kd_minus_none": kd_over_none, "th_kd_minus_kd": th_over_kd,
            "sh_kd_minus_kd": step("sh-kd", "kd")}


def markdown(result: dict, args: argparse.Namespace, record: dict) -> str:
    flags = ", ".join(record["cpu_flags"]) or "none of AVX-512, BF16, VNNI, AMX"
    lines = [f"Measured on {record['cpu']} ({record['cpu_count']} cores; ISA flags: {flags}), torch "
             f"{torch.__version__}, {record['date'][:10]}, {args.threads} math thread(s) per run; "
             f"{result['runs']} training runs, {result['runs_seconds'] / 60:.0f} min in all: `{record['command']}`.", "",
             f"Students: {args.student}, {10 * args.train_per_class} training digits, {args.student_epochs} epochs, "
             f"seeds {', '.join(map(str, args.seeds))}; val: 359 digits (one image = 0.28 points).", "",
             "| method | val top-1 mean | min..max | std | per seed | train s/epoch | img/s |",
             "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        t = row["top1"]
        seeds = ", ".join(f"{v:.2f}" for v in t["values"])
        lines.append(f"| {row['method']} | {t['mean']:.2f} | {t['min']:.2f}..{t['max']:.2f} | {t['std']:.2f} | "
                     f"{seeds} | {row['seconds_per_epoch']:.2f} | {row['img_per_s']:.0f} |")
    lines += ["", "| teacher | model | val top-1 | train img/s |", "|---|---|---|---|"]
    for name, teacher in result["teachers"].items():
        lines.append(f"| {name} | {teacher['model']} | {teacher['top1']:.2f} | {teacher['img_per_s']:.0f} |")
    v = result["verdict"]
    def gap(name: str, text: str) -> str:
        g = v[name]
        return (f"{text} {g['gap_points']:+.2f} points ({'beyond' if g['beyond_spread'] else 'within'} the seeds' "
                f"spread; higher with {g['seed_wins']} of {g['seeds']} seeds)")

    lines += ["", f"th-kd (beta {DEFAULT_HEAD_WEIGHT:g}, the default) >= kd > none on the means: "
                  f"{'holds' if v['ordering_holds'] else 'does not hold'}: {gap('kd_minus_none', 'kd - none')}, "
                  f"{gap('th_kd_minus_kd', 'th-kd - kd')}, {gap('sh_kd_minus_kd', 'sh-kd - kd')}."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/distill", help="folder of the runs (reused when run again)")
    parser.add_argument("--teacher", default="tresnet_m")
    parser.add_argument("--student", default="genet_light")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-per-class", type=int, default=20, help="training digits per class for the students")
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--student-epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--teacher-head-weights", type=float, nargs="+", default=[DEFAULT_HEAD_WEIGHT, 1.0],
                        help="th-kd's teacher-head weights (beta) to measure, one row each; the verdict reads "
                             f"the default, {DEFAULT_HEAD_WEIGHT:g}")
    parser.add_argument("--threads", type=int, default=1, help="math threads of each run")
    parser.add_argument("--json", default=str(RESULTS / "distill.json"))
    parser.add_argument("--markdown", default=str(RESULTS / "distill.md"))
    args = parser.parse_args(argv)
    if len(args.seeds) < 2:
        parser.error("give at least two --seeds: the spread needs them")
    if DEFAULT_HEAD_WEIGHT not in args.teacher_head_weights:
        parser.error(f"--teacher-head-weights must include the default, {DEFAULT_HEAD_WEIGHT:g}: the verdict reads it")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    result = measure(args)
    record = machine_record("distill", command_line("benchmarks/distill.py", argv), settings=vars(args),
                            total_seconds=time.perf_counter() - start, **result)
    table = markdown(result, args, record)
    print("\n" + table)
    write_text(args.json, json.dumps(record, indent=2) + "\n")
    write_text(args.markdown, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
