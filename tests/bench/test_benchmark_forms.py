"""The deployment forms NAME:fused, NAME:bf16, NAME:int8, NAME:onnx and NAME:onnx_int8: they run, are
inference-only, refuse the devices and precisions they cannot run with, and are compared with the plain model."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from helpers import requires_onnx, tiny_bench_config
from tresnet.bench import list_forms, run_benchmark
from tresnet.bench.ceiling import PEAK_GIVEN
from tresnet.bench.forms import DEPLOY_PEAK_NOTE, DEPLOYMENT_FORMS, NUMBER_FORMATS
from tresnet.bench.specs import BuildOptions, parse_model_spec
from tresnet.bench.targets import check_spec
from tresnet.cli.main import main
from tresnet.deploy.exactness import BOUNDS
from tresnet.errors import ConfigError, MissingDependencyError

requires_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None,
                                      reason="needs torchao (pip install 'tresnet[int8]')")
CUDA = BuildOptions(device=torch.device("cuda"))


def test_builtin_forms_are_registered_in_one_place():
    assert {"bn", "memory_efficient", "fused", "bf16", "int8", "onnx", "onnx_int8"} <= set(list_forms())
    assert set(NUMBER_FORMATS) <= set(DEPLOYMENT_FORMS) <= set(list_forms())


def test_fused_runs_inference_only_and_matches_the_plain_model():
    plain, fused = run_benchmark(tiny_bench_config("tresnet_m,tresnet_m:fused", mode="both"))
    assert plain.infer.img_per_s > 0 and plain.train.img_per_s > 0 and plain.max_rel_diff is None
    assert fused.form == "fused" and fused.infer.img_per_s > 0
    assert fused.train.batch_size is None and fused.train.img_per_s is None  # inference only
    assert fused.max_rel_diff < 1e-4
    assert fused.gmacs == pytest.approx(plain.gmacs)  # the same network, counted on the plain model


def test_deployment_forms_skip_the_peak_memory_probe_with_a_note():
    (row,) = run_benchmark(tiny_bench_config("tresnet_m:fused", mode="infer", peak_memory=True))
    assert row.peak_mem_method == DEPLOY_PEAK_NOTE and row.infer.peak_mem_mib is None
    with pytest.raises(ConfigError, match="--batch-size auto needs the peak memory of tresnet_m:fused"):
        run_benchmark(tiny_bench_config("tresnet_m:fused", mode="infer", batch_size="auto", memory_budget_gib=2))


def test_an_inference_only_form_cannot_train():
    with pytest.raises(ConfigError, match="tresnet_m:fused cannot run train .*use --mode infer or both"):
        run_benchmark(tiny_bench_config("tresnet_m,tresnet_m:fused", mode="train"))


@requires_onnx
def test_onnx_runs_inference_only_and_matches_the_plain_model():
    plain, onnx = run_benchmark(tiny_bench_config("tresnet_m,tresnet_m:onnx", mode="both"))
    assert onnx.form == "onnx" and onnx.infer.img_per_s > 0
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


def test_bf16_runs_inference_only_and_records_its_difference_and_share_of_the_ceiling():
    plain, bf16 = run_benchmark(tiny_bench_config("tresnet_m,tresnet_m:bf16", mode="infer", threads=1,
                                                  peak_gflops="fp32=100,bf16=400"))
    assert bf16.form == "bf16" and bf16.infer.img_per_s > 0 and bf16.train.batch_size is None
    assert 1e-5 < bf16.max_rel_diff < 0.05  # bfloat16 rounding: recorded, and small
    assert (plain.number_format, bf16.number_format) == ("fp32", "bf16")
    assert (plain.peak_gflop_per_s, bf16.peak_gflop_per_s, bf16.peak_source) == (100, 400, PEAK_GIVEN)
    assert bf16.infer_gflop_per_s == pytest.approx(2 * plain.gmacs * bf16.infer.img_per_s)
    assert bf16.infer_peak_fraction == pytest.approx(bf16.infer_gflop_per_s / 400)
    assert plain.infer_peak_fraction == pytest.approx(2 * plain.gmacs * plain.infer.img_per_s / 100)
    assert "infer_peak_fraction" in bf16.to_dict()


def test_bf16_sets_its_own_number_format_on_any_device():
    check_spec(parse_model_spec("tresnet_m:bf16"), CUDA)  # a GPU is fine
    with pytest.raises(ConfigError, match="tresnet_m:bf16 runs in bf16 .*not amp: use --precision fp32"):
        run_benchmark(tiny_bench_config("tresnet_m:bf16", mode="infer", precision="amp"))


@requires_torchao
def test_int8_runs_on_the_cpu_in_fp32_only():
    spec = parse_model_spec("tresnet_m:int8")
    with pytest.raises(ConfigError, match="tresnet_m:int8 runs PyTorch's int8 kernels on the CPU.*--device cpu"):
        check_spec(spec, CUDA)
    with pytest.raises(ConfigError, match="runs in int8 .*not bf16: use --precision fp32"):
        check_spec(spec, BuildOptions(device=torch.device("cpu"), precision="bf16"))


def test_int8_without_torchao_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # as if it were not installed
    with pytest.raises(MissingDependencyError, match="torchao"):
        run_benchmark(tiny_bench_config("tresnet_m,tresnet_m:int8", mode="infer"))


@requires_onnx
def test_onnx_int8_runs_on_the_cpu_in_fp32_only():
    spec = parse_model_spec("tresnet_m:onnx_int8")
    with pytest.raises(ConfigError, match="ONNX Runtime on the CPU.*use --device cpu"):
        check_spec(spec, CUDA)
    with pytest.raises(ConfigError, match="runs in int8 .*use --precision fp32"):
        check_spec(spec, BuildOptions(device=torch.device("cpu"), precision="fp16"))


@pytest.mark.slow
@requires_torchao
@requires_onnx
def test_int8_paths_run_and_stay_near_the_plain_model():
    # the only test that compiles an int8 model (20-60 s): GENet-light at 64 px, one thread
    config = tiny_bench_config("genet_light,genet_light:int8,genet_light:onnx_int8", mode="infer", threads=1,
                               peak_gflops="fp32=100,int8=800")
    plain, int8, onnx_int8 = run_benchmark(config)
    for row in (int8, onnx_int8):
        assert row.infer.img_per_s > 0 and row.train.batch_size is None
        # int8 rounding of a random-weight model on random images, against the plain model: within the documented
        # int8 floor (measured: 0.115 on an AVX2-only AMD EPYC, below 0.1 on an AVX-512 VNNI Xeon)
        assert 0 < row.max_rel_diff < BOUNDS["int8"].floor
        assert row.number_format == "int8" and row.peak_gflop_per_s == 800
        assert row.infer_peak_fraction == pytest.approx(2 * plain.gmacs * row.infer.img_per_s / 800)
        assert row.gmacs == pytest.approx(plain.gmacs)


def test_cli_times_inference_only_forms_in_inference_and_says_so(capsys):
    code = main(["benchmark", "--models", "tresnet_m,tresnet_m:fused", "--device", "cpu", "--img-size", "64",
                 "--batch-size", "2", "--warmup", "0", "--repeats", "1", "--no-peak-memory", "--no-progress",
                 "--markdown"])
    assert code == 0
    out, err = capsys.readouterr()
    assert "max rel diff" in out and "tresnet_m:fused / tresnet_m: infer" in out
    assert "note: tresnet_m:fused: inference-only, timed in inference only" in err
