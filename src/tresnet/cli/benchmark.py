"""`tresnet benchmark`: images/s in inference and training, largest batch, memory, against the paper's peers."""

from __future__ import annotations

import argparse
import sys
import textwrap
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from tresnet.bench.forms import BUILTIN_FORMS, INT8_BACKEND_FORMS, get_form, list_forms
from tresnet.bench.report import (
    format_ceilings,
    format_ratios,
    format_table,
    markdown_table,
    plot_results,
    write_csv,
    write_json,
)
from tresnet.bench.runner import RUN_MODES, BenchConfig, BusyMachineWarning, run_benchmark
from tresnet.cli._common import add_device_argument, add_precision_argument, say
from tresnet.deploy.inference import choose_int8_backend, cpu_has_amx, installed_int8_backends
from tresnet.errors import ConfigError
from tresnet.models.detection import DETECTOR_HEADS
from tresnet.tasks import get_task, list_tasks

EPILOG_MODELS = """\
models: a plain NAME is one of ours (tresnet_m, tresnet_l, ...) else a timm model; timm:NAME forces
timm's implementation; 'paper' expands to tresnet_m, timm:tresnet_m and the paper's peers (resnet50,
resnet50d, resnext50_32x4d, efficientnet_b1, seresnext50_32x4d, mixnet_l, gernet_s/m/l). timm models
need: pip install 'tresnet[bench]'. Forms of our models:
"""

EPILOG_REST = """\
The deployment forms report max rel diff: their largest difference from the plain model's logits,
relative to the largest logit. With --mode both they are timed in inference only. The int8 paths are
calibrated on random images, which changes their accuracy, not their speed. On the CPU, a run with a
deployment form also reports every row's inference GFLOP/s (the plain model's MACs x 2 x images/s) and
its share of the compute ceiling of the row's number format (fp32, bf16 or int8): the best rate of a large
matrix product or convolution in that format on the run's threads, measured before and after the timing by the run's clock,
or the fastest row's rate where that is higher, so that no row reads above 100% (unless given with
--peak-gflops). NAME:int8 is the pt2e int8 backend of validate and predict, NAME:onnx_int8 the onnx one; a
note says which --int8-backend auto takes on this CPU. NAME:pt2 is what `tresnet export --format pt2` writes,
loaded back (torch.export.load(path).module()).
A wall-clock CPU run warns when the load average exceeds the cores its threads leave free: other work then
skews the speeds and their ratios; use --threads 1 --timer cpu on a shared machine.
Sizes: each model runs at its own input size, except that a timm model that is the same network as one of
ours in the run (timm:tresnet_m with tresnet_m, timm:gernet_s with genet_light) runs at ours, so that the
pair compares at one size; --img-size N sets one size for all.

examples:
  tresnet benchmark --models tresnet_m,timm:tresnet_m,resnet50 --json out.json --plot out.png
  tresnet benchmark --models paper --device cuda --precision amp --batch-size auto
  tresnet benchmark --models tresnet_m,resnet50 --batch-size auto --memory-budget 8 --mode train
  tresnet benchmark --models tresnet_m,tresnet_m:fused,tresnet_m:onnx --device cpu --mode infer
  tresnet benchmark --models tresnet_m,tresnet_m:bf16,tresnet_m:int8 --device cpu --peak-gflops fp32=310,bf16=2150
  tresnet benchmark --models genet_light,timm:gernet_s,genet_light:fused,tresnet_m --device cpu
  tresnet benchmark --task detection --models tresnet_m,genet_normal,resnet50 --img-size 512 --batch-size auto
"""


def _forms_help(width: int = 104) -> str:
    """One entry per registered form, ``NAME:form`` and its description (the registry's own words),
    the built-in ones first in their order."""
    builtin = [form.name for form in BUILTIN_FORMS]
    names = builtin + [name for name in list_forms() if name not in builtin]
    return "".join(textwrap.fill(get_form(name).description, width, initial_indent=f"  {'NAME:' + name:<22} ",
                                 subsequent_indent=" " * 25) + "\n" for name in names)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``benchmark`` subcommand and its options on ``subparsers``."""
    p = subparsers.add_parser(
        "benchmark", help="measure images/s (inference, training), largest batch and memory",
        description="Measure TResNet and other models the paper's way: synthetic inputs on the device, "
                    "warm-up, timed repetitions taken in turns across models; median images/s and spread.",
        epilog=EPILOG_MODELS + _forms_help() + EPILOG_REST, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tresnet_m,timm:tresnet_m,resnet50",
                   help="comma-separated models (default: %(default)s)")
    p.add_argument("--task", choices=list_tasks(), default=None,
                   help="detection: measure each model as the backbone of a detector (NAME:fcos; resnet50: "
                        "torchvision's fcos_resnet50_fpn built the same way), trained on random boxes "
                        "(default: the models as classifiers)")
    p.add_argument("--head", choices=DETECTOR_HEADS, default=None,
                   help="--task detection: the detector (default fcos)")
    p.add_argument("--mode", default="both",
                   help="infer, train or both (default: %(default)s; inference-only forms such as NAME:fused "
                        "and NAME:onnx are then timed in inference only)")
    add_device_argument(p)
    add_precision_argument(p)
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for models and inputs")
    p.add_argument("--compile", action="store_true", help="torch.compile each model (compile time not timed)")
    p.add_argument("--batch-size", default=None,
                   help="images per batch, or 'auto': 90%% of the largest training batch that fits "
                        "(default: 8 on the CPU, 128 on CUDA)")
    p.add_argument("--memory-budget", type=float, default=None, metavar="GIB",
                   help="memory a model may use, in GiB: needed by --batch-size auto on the CPU (peak "
                        "resident memory of the process); on CUDA it caps the search (default: the device)")
    p.add_argument("--max-batch", type=int, default=4096, help="upper bound of the batch search (default: 4096)")
    p.add_argument("--img-size", type=int, default=None,
                   help="input side in pixels, for every model (default: each model's own, e.g. 224, 240 for "
                        "efficientnet_b1, 192 for genet_light; a timm model that is one of ours in the run takes "
                        "ours)")
    p.add_argument("--warmup", type=int, default=2, help="untimed turns per model and mode (default: 2)")
    p.add_argument("--repeats", type=int, default=10,
                   help="timed turns per model and mode; the median is reported (default: 10)")
    p.add_argument("--iters", type=int, default=None,
                   help="batches per timed turn (default: 1 on the CPU, 10 on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--timer", default="wall",
                   help="wall (elapsed time, default) or cpu: CPU time of the process, for a shared CPU "
                        "machine (use with --threads 1)")
    p.add_argument("--no-peak-memory", action="store_true",
                   help="on the CPU, skip the peak-memory measurement (a subprocess per model)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and weights (default: 0)")
    p.add_argument("--peak-gflops", default=None, metavar="GFLOPS",
                   help="the compute ceiling to compare speeds with, in GFLOP/s: fp32=X,bf16=Y,int8=Z (formats "
                        "left out are measured), one number for all, or auto (measure); default: measured in a "
                        "CPU run with a deployment form only")
    p.add_argument("--json", metavar="PATH", help="write the rows as JSON")
    p.add_argument("--csv", metavar="PATH", help="write the rows as CSV")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of top-1 against images/s")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table as well")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _models_of(args: argparse.Namespace) -> str:
    """``--models``; for a task whose heads are forms of the benchmark (a detector's), each model in the form of
    ``--head`` (default: the task's first)."""
    task = get_task(args.task) if args.task is not None else None
    if task is None or task.heads[0] not in list_forms():
        if args.head is not None:
            raise ConfigError("--head chooses the detector of --task detection: pass --task detection too")
        return args.models
    head = task.check_head(args.head) or task.heads[0]
    named = [model.strip() for model in args.models.split(",") if model.strip()]
    formed = [model for model in named if ":" in model.removeprefix("timm:")]
    if formed:
        raise ConfigError(f"--task {task.name} measures each model with the {head} head: {formed[0]} names a form "
                          f"already; list plain models, or name NAME:{head} forms without --task")
    return ",".join(f"{model}:{head}" for model in named)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by ``args``, print the table and ratios, write the files asked for.

    Raises :class:`~tresnet.errors.TResNetError` subclasses for bad options or models (printed as one
    line by the dispatcher).
    """
    config = BenchConfig(
        models=_models_of(args), mode=args.mode, device=args.device, precision=args.precision,
        channels_last=args.channels_last, compile=args.compile, batch_size=args.batch_size,
        memory_budget_gib=args.memory_budget, max_batch=args.max_batch, img_size=args.img_size,
        warmup=args.warmup, repeats=args.repeats, iters=args.iters, threads=args.threads, timer=args.timer,
        peak_memory=not args.no_peak_memory, seed=args.seed, peak_gflops=args.peak_gflops)
    with _warnings_as_lines():
        rows = run_benchmark(config, progress=not args.no_progress)
    print(_heading(rows[0]))
    print(format_table(rows))
    ceilings = format_ceilings(rows)
    if ceilings:
        print(ceilings)
    ratios = format_ratios(rows)
    if ratios:
        print()
        print(ratios)
    if args.markdown:
        print()
        print(markdown_table(rows))
    for row in rows:
        if row.img_size_from:
            say("benchmark", "note", f"{row.model} measured at {row.img_size} px, the size of {row.img_size_from} "
                                     f"(the same network); --img-size N sets one size for all")
    untrained = [r.model for r in rows if "train" in RUN_MODES[config.mode] and r.train.batch_size is None]
    if untrained:
        say("benchmark", "note", f"{', '.join(untrained)}: inference-only, timed in inference only")
    _note_int8_backend(rows)
    for path, write in ((args.json, write_json), (args.csv, write_csv), (args.plot, plot_results)):
        if path:
            print(f"wrote {write(rows, path)}", file=sys.stderr)
    return 0


@contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """The benchmark's busy-machine warning as one ``tresnet benchmark: warning: ...`` line on stderr."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, BusyMachineWarning):
            say("benchmark", "warning", str(message))
        else:
            default(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def _note_int8_backend(rows) -> None:
    """With an int8 path in the table: which int8 backend validate and predict take here by default."""
    if not any(r.form in INT8_BACKEND_FORMS.values() for r in rows):
        return
    auto = choose_int8_backend(amx=cpu_has_amx(), installed=installed_int8_backends())
    say("benchmark", "note", f"int8 backends: NAME:{INT8_BACKEND_FORMS['pt2e']} is pt2e, "
                             f"NAME:{INT8_BACKEND_FORMS['onnx']} is onnx; on this CPU "
                             f"({'AMX' if cpu_has_amx() else 'no AMX'}) --number-format int8 takes {auto} "
                             f"(--int8-backend auto)")


def _heading(first) -> str:
    """The settings line above the table: device, precision, memory format, clock and repetitions."""
    settings = [first.device_name, first.precision]
    if first.channels_last:
        settings.append("channels-last")
    if first.compiled:
        settings.append("torch.compile")
    clock = "CPU time of the process" if first.timer == "cpu" else "wall-clock time"
    return (f"tresnet benchmark: {', '.join(settings)}; {clock}, median of {first.repeats} turns x "
            f"{first.iters} batch(es), ±% = interquartile range")
