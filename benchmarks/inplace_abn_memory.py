"""In-place ABN against plain BatchNorm and timm's TResNet: memory kept for backward, peak memory, step time.

For each variant, in one run:
- bytes kept for backward per image: every tensor autograd saves in a training forward, each storage
  once, parameters excluded (``tresnet.bench.memory.saved_tensor_bytes``);
- peak memory of one training step (forward, loss, backward, SGD step): on CPU the peak resident set
  of a fresh process running that step, less its resident set just before it; on CUDA
  ``torch.cuda.max_memory_allocated`` over the step, less what was allocated before it;
- training step time: the variants are timed in turns (one step each, round after round) so that drift
  on a shared machine hits all alike; the median and the spread (min-max) are reported.

    python benchmarks/inplace_abn_memory.py --img-size 224 --batch-size 16 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

MIB = 2**20
VARIANTS = {
    "tresnet_m (in-place ABN)": ("tresnet", "inplace_abn"),
    "tresnet_m (ABN, mem.-eff.)": ("tresnet", "memory_efficient"),
    "tresnet_m (plain BN)": ("tresnet", "bn"),
    "timm tresnet_m": ("timm", None),
}


def build(impl: str, norm: str | None, device: str) -> torch.nn.Module:
    if impl == "timm":
        import timm

        model = timm.create_model("tresnet_m")
    else:
        import tresnet

        if norm == "memory_efficient":
            model = tresnet.create_model("tresnet_m", memory_efficient=True)
        else:
            model = tresnet.create_model("tresnet_m", norm=norm)
    return model.to(device).train()


def step(model, optimizer, x, y) -> None:
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_step_memory(impl: str, norm: str | None, img_size: int, batch: int, device: str) -> dict:
    """Run in a fresh process: memory before one training step, and the peak during it."""
    model = build(impl, norm, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, 3, img_size, img_size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(model, optimizer, x, y)
        torch.cuda.synchronize()
        return {"before_bytes": before, "peak_bytes": torch.cuda.max_memory_allocated()}
    from tresnet.bench.memory import image_peak_rss_bytes

    before = rss_bytes()
    step(model, optimizer, x, y)
    return {"before_bytes": before, "peak_bytes": image_peak_rss_bytes()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16, help="batch of the timed and peak-memory steps")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--timer", choices=("wall", "cpu"), default="wall",
                        help="wall time, or the process's CPU time (steadier on a shared CPU, with --threads 1)")
    parser.add_argument("--json", help="also write the rows (and the machine) to this JSON file")
    parser.add_argument("--_peak", nargs=2, help=argparse.SUPPRESS)  # internal: one variant's peak, in a child
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.timer == "cpu" else time.perf_counter
    if args._peak:
        impl, norm = args._peak
        result = peak_step_memory(impl, None if norm == "-" else norm, args.img_size, args.batch_size, args.device)
        print(json.dumps(result))
        return 0

    from tresnet.bench.memory import saved_bytes_per_image

    rows = {}
    for label, (impl, norm) in VARIANTS.items():
        model = build(impl, norm, args.device)
        saved = saved_bytes_per_image(model, args.img_size, batch_size=2, device=args.device)
        child = subprocess.run(
            [sys.executable, __file__, "--img-size", str(args.img_size), "--batch-size", str(args.batch_size),
             "--device", args.device, "--threads", str(args.threads or 0), "--_peak", impl, norm or "-"],
            capture_output=True, text=True, check=True,
        )
        peak = json.loads(child.stdout.strip().splitlines()[-1])
        rows[label] = {"variant": label, "saved_mib_per_image": saved / MIB,
                       "peak_step_mib": (peak["peak_bytes"] - peak["before_bytes"]) / MIB,
                       "peak_total_mib": peak["peak_bytes"] / MIB}
        del model

    models = {label: build(impl, norm, args.device) for label, (impl, norm) in VARIANTS.items()}
    optimizers = {label: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for label, m in models.items()}
    x = torch.rand(args.batch_size, 3, args.img_size, args.img_size, device=args.device)
    y = torch.randint(0, 1000, (args.batch_size,), device=args.device)
    times = {label: [] for label in models}
    for round_index in range(args.repeats + 1):
        for label, model in models.items():
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = clock()
            step(model, optimizers[label], x, y)
            if args.device == "cuda":
                torch.cuda.synchronize()
            if round_index:  # round 0 warms up
                times[label].append(clock() - start)
    timm_label = "timm tresnet_m"
    for label, row in rows.items():
        row["step_s_median"] = statistics.median(times[label])
        row["step_s_min"], row["step_s_max"] = min(times[label]), max(times[label])
        row["img_per_s"] = args.batch_size / row["step_s_median"]
    for row in rows.values():
        row["saved_vs_timm"] = row["saved_mib_per_image"] / rows[timm_label]["saved_mib_per_image"]
        row["speed_vs_timm"] = row["img_per_s"] / rows[timm_label]["img_per_s"]

    print(f"TResNet-M, {args.img_size}x{args.img_size}, fp32, {args.device}, training step at batch {args.batch_size}, "
          f"{torch.get_num_threads()} thread(s), {args.timer} time")
    header = (f"{'variant':<28}{'kept/img MiB':>13}{'vs timm':>9}{'step peak MiB':>15}{'step s (min-max)':>22}"
              f"{'img/s':>8}{'vs timm':>9}")
    print(header)
    print("-" * len(header))
    for row in rows.values():
        spread = f"{row['step_s_median']:.2f} ({row['step_s_min']:.2f}-{row['step_s_max']:.2f})"
        print(f"{row['variant']:<28}{row['saved_mib_per_image']:>13.1f}{row['saved_vs_timm']:>8.2f}x"
              f"{row['peak_step_mib']:>15.0f}{spread:>22}{row['img_per_s']:>8.2f}{row['speed_vs_timm']:>8.2f}x")
    if args.json:
        from tresnet.checkpoint import atomic_write

        payload = {"benchmark": "inplace_abn_memory", "img_size": args.img_size, "batch_size": args.batch_size,
                   "device": args.device, "threads": torch.get_num_threads(), "timer": args.timer,
                   "command": "python " + " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
                   "cpu_count": os.cpu_count(), "torch": torch.__version__,
                   "device_name": torch.cuda.get_device_name() if args.device == "cuda" else platform.machine(),
                   "rows": list(rows.values())}
        atomic_write(args.json, lambda tmp: open(tmp, "w").write(json.dumps(payload, indent=2) + "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
