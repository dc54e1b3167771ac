"""The deployment variants NAME:fused and NAME:onnx: they run, are inference-only and match the plain model."""

from __future__ import annotations

import sys

import pytest
import torch

from helpers import requires_onnx, tiny_bench_config
from tresnet.bench import list_variants, run_benchmark
from tresnet.bench.targets import BuildOptions, check_spec, parse_model_spec
from tresnet.bench.variants import DEPLOY_PEAK_NOTE
from tresnet.cli.main import main
from tresnet.errors import ConfigError, MissingDependencyError


def test_builtin_variants_are_registered_in_one_place():
    assert {"bn", "memory_efficient", "fused", "onnx"} <= set(list_variants())


def test_fused_runs_inference_only_and_matches_the_plain_model():
    plain, fused = run_benchmark(tiny_bench_config("tresnet_m,tresnet_m:fused", mode="both"))
    assert plain.infer.img_per_s > 0 and plain.train.img_per_s > 0 and plain.max_rel_diff is None
    assert fused.variant == "fused" and fused.infer.img_per_s > 0
    assert fused.train.batch_size is None and fused.train.img_per_s is None  # inference only
    assert fused.max_rel_diff < 1e-4
    assert fused.gmacs == pytest.approx(plain.gmacs)  # the same network, counted on the plain model


def test_deployment_variants_skip_the_peak_memory_probe_with_a_note():
    (row,) = run_benchmark(tiny_bench_config("tresnet_m:fused", mode="infer", peak_memory=True))
    assert row.peak_mem_method == DEPLOY_PEAK_NOTE and row.infer.peak_mem_mib is None
    with pytest.raises(ConfigError, match="--batch-size auto needs the peak memory of tresnet_m:fused"):
        run_benchmark(tiny_bench_config("tresnet_m:fused", mode="infer", batch_size="auto", memory_budget_gib=2))


def test_an_inference_only_variant_cannot_train():
    with pytest.raises(ConfigError, match="tresnet_m:fused cannot run train .*use --mode infer or both"):
        run_benchmark(tiny_bench_config("tresnet_m,tresnet_m:fused", mode="train"))


@requires_onnx
def test_onnx_runs_inference_only_and_matches_the_plain_model():
    plain, onnx = run_benchmark(tiny_bench_config("tresnet_m,tresnet_m:onnx", mode="both"))
    assert onnx.variant == "onnx" and onnx.infer.img_per_s > 0
    assert onnx.train.img_per_s is None and plain.train.img_per_s > 0
    assert onnx.max_rel_diff < 1e-4


@requires_onnx
def test_onnx_runs_on_the_cpu_in_fp32_only():
    spec = parse_model_spec("tresnet_m:onnx")
    with pytest.raises(ConfigError, match="ONNX Runtime on the CPU.*use --device cpu"):
        check_spec(spec, BuildOptions(device=torch.device("cuda")))
    with pytest.raises(ConfigError, match="runs in fp32.*use --precision fp32"):
        run_benchmark(tiny_bench_config("tresnet_m:onnx", mode="infer", precision="bf16"))


def test_onnx_without_onnxruntime_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'tresnet\[export\]'"):
        run_benchmark(tiny_bench_config("tresnet_m,tresnet_m:onnx", mode="infer"))


def test_cli_times_inference_only_variants_in_inference_and_says_so(capsys):
    code = main(["benchmark", "--models", "tresnet_m,tresnet_m:fused", "--device", "cpu", "--img-size", "64",
                 "--batch-size", "2", "--warmup", "0", "--repeats", "1", "--no-peak-memory", "--no-progress",
                 "--markdown"])
    assert code == 0
    out, err = capsys.readouterr()
    assert "max rel diff" in out and "tresnet_m:fused / tresnet_m: infer" in out
    assert "note: tresnet_m:fused: inference-only, timed in inference only" in err
