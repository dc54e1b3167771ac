"""Measuring models the paper's way: throughput, largest batch, memory, reports and plots.

``run_benchmark(BenchConfig(models="tresnet_m,timm:tresnet_m,resnet50"))`` returns one
:class:`BenchRow` per model; :mod:`tresnet.bench.report` turns rows into a table, JSON, CSV and a plot.
``NAME:fused``, ``NAME:bf16``, ``NAME:int8``, ``NAME:onnx``, ``NAME:onnx_int8`` and ``NAME:pt2`` measure the deployment
paths (:mod:`tresnet.bench.forms`), against the compute ceiling of their number format
(:mod:`tresnet.bench.ceiling`: the measured rate of a matrix product and a convolution per format).
``tresnet benchmark`` is the command-line face of the same.
"""

from tresnet.bench.batch_search import BatchSearchResult, largest_batch
from tresnet.bench.ceiling import estimate_peaks, gemm_gflop_per_s, parse_peak_gflops
from tresnet.bench.forms import Form, FormBuild, list_forms, register_form
from tresnet.bench.machine import command_line, cpu_flags, cpu_line, cpu_name, describe_device, machine_record
from tresnet.bench.memory import SavedMemory, saved_memory
from tresnet.bench.published import PAPER_PEERS, PEER_RESULTS, PublishedResult, published_top1
from tresnet.bench.report import (
    format_ceilings,
    format_ratios,
    format_table,
    markdown_table,
    plot_results,
    ratio_rows,
    write_csv,
    write_json,
)
from tresnet.bench.rows import BenchRow, ModeResult
from tresnet.bench.runner import BenchConfig, run_benchmark
from tresnet.bench.specs import BuildOptions, ModelSpec, build_base_model, parse_model_list, parse_model_spec
from tresnet.bench.targets import BenchTarget

__all__ = [
    "PAPER_PEERS", "PEER_RESULTS", "BatchSearchResult", "BenchConfig", "BenchRow", "BenchTarget", "BuildOptions",
    "ModeResult", "ModelSpec", "PublishedResult", "SavedMemory", "Form", "FormBuild", "build_base_model",
    "command_line", "cpu_flags", "cpu_line", "cpu_name", "describe_device", "estimate_peaks", "format_ceilings", "format_ratios", "format_table",
    "gemm_gflop_per_s", "largest_batch", "list_forms", "machine_record", "markdown_table", "parse_model_list",
    "parse_model_spec", "parse_peak_gflops", "plot_results", "published_top1", "ratio_rows", "register_form",
    "run_benchmark", "saved_memory", "write_csv", "write_json",
]
