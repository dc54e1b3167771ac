"""The compute ceiling: the measured rate of the probes per number format (raised to a path that outruns them),
--peak-gflops, and a row's share of it."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_bench_config
from tresnet.bench import ceiling, run_benchmark
from tresnet.bench.ceiling import (
    FORMATS,
    PEAK_FASTEST,
    PEAK_GIVEN,
    PEAK_MEASURED,
    achieved_gflop_per_s,
    ceiling_gflop_per_s,
    conv_gflop_per_s,
    estimate_peaks,
    fraction_of_peak,
    gemm_gflop_per_s,
    parse_peak_gflops,
    precision_format,
    raise_to_fastest,
    record_compute,
)
from tresnet.bench.report import format_ceilings, format_table, markdown_table
from tresnet.bench.rows import BenchRow, ModeResult
from tresnet.cli.main import main
from tresnet.errors import ConfigError


def test_the_measured_ceiling_is_a_positive_rate_per_format(monkeypatch):
    monkeypatch.setattr(ceiling, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(ceiling, "cpu_flag_set", lambda: {"avx2", "avx512_vnni"})
    peaks = estimate_peaks(side=128, rounds=1)
    assert list(peaks) == list(FORMATS)
    assert peaks["fp32"] > 0 and peaks["bf16"] > 0
    assert peaks["int8"] is None if not hasattr(torch, "_int_mm") else peaks["int8"] > 0


def test_formats_the_cpu_only_emulates_have_no_ceiling(monkeypatch):
    # an AVX2-only CPU: bf16 and int8 products there ran at 1.2 and 1.3 GFLOP/s, below the networks' own kernels
    monkeypatch.setattr(ceiling, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(ceiling, "cpu_flag_set", lambda: {"avx2", "fma"})
    peaks = estimate_peaks(side=64, rounds=1)
    assert peaks["fp32"] > 0 and peaks["bf16"] is None and peaks["int8"] is None
    monkeypatch.setattr(ceiling, "cpu_flag_set", lambda: None)  # no /proc/cpuinfo: measured, not guessed
    assert hasattr(torch, "_int_mm") is (gemm_gflop_per_s("int8", side=64, rounds=1) is not None)


def test_a_slow_product_is_measured_at_the_probe_size(monkeypatch):
    sides = []
    real = ceiling._operands

    def recording(number_format, side, device):
        sides.append(side)
        return real(number_format, side, device)

    monkeypatch.setattr(ceiling, "_operands", recording)
    monkeypatch.setattr(ceiling, "MAX_PRODUCT_S", 0.0)  # every product counts as too slow for the full size
    assert gemm_gflop_per_s("fp32", side=1024, rounds=1) > 0
    assert set(sides) == {ceiling.PROBE_SIDE}
    sides.clear()
    monkeypatch.setattr(ceiling, "MAX_PRODUCT_S", 1e9)
    gemm_gflop_per_s("fp32", side=1024, rounds=1)
    assert set(sides) == {ceiling.PROBE_SIDE, 1024}


def test_int8_without_an_int8_matrix_product_has_no_ceiling(monkeypatch):
    monkeypatch.delattr(torch, "_int_mm")
    assert gemm_gflop_per_s("int8", side=64, rounds=1) is None


def test_an_unknown_format_or_timer_is_refused():
    with pytest.raises(ConfigError, match="bad number format 'fp64'"):
        gemm_gflop_per_s("fp64")
    with pytest.raises(ConfigError, match="bad timer 'sundial'"):
        conv_gflop_per_s("fp32", timer="sundial")


def test_the_ceiling_is_the_better_probe_by_the_runs_clock():
    # a convolution probe beside the matrix product: the networks' convolutions run on oneDNN's kernels, which
    # outran torch.mm's on an AMD EPYC; the CPU clock, as a --timer cpu run times its paths
    assert conv_gflop_per_s("fp32", rounds=1, timer="cpu") > 0 and conv_gflop_per_s("int8", rounds=1) is None
    assert gemm_gflop_per_s("fp32", side=128, rounds=1, timer="cpu") > 0
    assert ceiling_gflop_per_s("fp32", side=128, rounds=1, timer="cpu") > 0


def test_a_path_faster_than_the_probes_sets_the_ceiling():
    assert raise_to_fastest(50.0, [30.0, 60.0, None]) == 60.0
    assert raise_to_fastest(50.0, [30.0]) == 50.0 and raise_to_fastest(None, [30.0]) is None
    assert raise_to_fastest(50.0, [None]) == 50.0
    fused, plain, int8 = (_row(m, v, f, 1.0, PEAK_MEASURED) for m, v, f in
                          [("tresnet_m:fused", "fused", "fp32"), ("tresnet_m", None, "fp32"),
                           ("tresnet_m:int8", "int8", "int8")])
    fused.infer.img_per_s, plain.infer.img_per_s = 6.0, 3.0  # 69 and 34.5 GFLOP/s at 5.75 GMACs
    record_compute([fused, plain, int8], {"fp32": (50.0, PEAK_MEASURED), "int8": (2000.0, PEAK_GIVEN)})
    assert fused.peak_gflop_per_s == plain.peak_gflop_per_s == pytest.approx(69.0)
    assert (fused.peak_source, fused.probe_gflop_per_s) == (PEAK_FASTEST, 50.0)
    assert fused.infer_peak_fraction == pytest.approx(1.0) and plain.infer_peak_fraction == pytest.approx(0.5)
    assert (int8.peak_gflop_per_s, int8.peak_source, int8.probe_gflop_per_s) == (2000.0, PEAK_GIVEN, None)
    assert format_ceilings([fused, int8]) == ("compute ceiling (int8 given, the others measured, 2 threads): fp32 69 "
                                              "(a path's rate, above the probes' 50), int8 2,000 GFLOP/s")
    assert BenchRow.from_dict(fused.to_dict()) == fused


@pytest.mark.parametrize(("given", "peaks"), [
    (None, None),
    ("auto", {}),
    (" AUTO ", {}),
    ("900", dict.fromkeys(FORMATS, 900.0)),
    (1500, dict.fromkeys(FORMATS, 1500.0)),
    ("fp32=310, BF16=2150.5", {"fp32": 310.0, "bf16": 2150.5}),
    ({"int8": 2700}, {"int8": 2700.0}),
])
def test_peak_gflops_parsing(given, peaks):
    assert parse_peak_gflops(given) == peaks


@pytest.mark.parametrize("given", ["fast", "", "0", "-5", "nan", "inf", "fp32=", "fp64=3", "fp32=1,fp32=2",
                                   "fp32=1,,bf16=2", "310,bf16=2150", {"bf16": -1}])
def test_bad_peak_gflops_is_a_one_line_error(given):
    with pytest.raises(ConfigError, match="bad --peak-gflops") as caught:
        parse_peak_gflops(given)
    assert "\n" not in str(caught.value) and "fp32=X,bf16=Y,int8=Z" in str(caught.value)


def test_achieved_rate_and_its_fraction_of_the_ceiling():
    assert achieved_gflop_per_s(5.75, 20.0) == pytest.approx(230.0)  # 5.75 GMACs x 2 x 20 img/s
    assert fraction_of_peak(230.0, 920.0) == pytest.approx(0.25)
    assert achieved_gflop_per_s(None, 20.0) is None and achieved_gflop_per_s(5.75, None) is None
    assert fraction_of_peak(230.0, None) is None and fraction_of_peak(None, 920.0) is None
    assert fraction_of_peak(230.0, 0.0) is None


def test_the_number_format_of_a_precision():
    assert precision_format("fp32", "cpu") == "fp32"
    assert precision_format("bf16", "cuda") == "bf16" and precision_format("amp", "cpu") == "bf16"
    assert precision_format("amp", "cuda") is None and precision_format("fp16", "cpu") is None


def _row(model: str, form: str | None, number_format: str, peak: float, source: str) -> BenchRow:
    return BenchRow(model=model, name="tresnet_m", impl="tresnet", form=form, device="cpu",
                    device_name="a CPU (2 threads)", precision="fp32", channels_last=False, compiled=False,
                    img_size=224, gmacs=5.75, infer=ModeResult(batch_size=8, img_per_s=20.0), threads=2,
                    number_format=number_format, peak_gflop_per_s=peak, peak_source=source,
                    infer_gflop_per_s=230.0, infer_peak_fraction=230.0 / peak)


def test_reports_show_the_rate_the_share_and_the_ceilings():
    rows = [_row("tresnet_m", None, "fp32", 920.0, PEAK_GIVEN), _row("tresnet_m:int8", "int8", "int8", 2300.0,
                                                                     PEAK_MEASURED)]
    assert format_ceilings(rows) == ("compute ceiling (fp32 given, the others measured, 2 threads): "
                                     "fp32 920, int8 2,300 GFLOP/s")
    assert "25.0% fp32" in format_table(rows) and "10.0% int8" in format_table(rows)
    assert "| infer GFLOP/s | of ceiling |" in markdown_table(rows) and "| 230 | 10.0% int8 |" in markdown_table(rows)
    assert BenchRow.from_dict(rows[1].to_dict()) == rows[1]
    assert format_ceilings([BenchRow.from_dict({**rows[0].to_dict(), "number_format": None})]) == ""
    no_bf16 = _row("tresnet_m:bf16", "bf16", "bf16", 1.0, PEAK_MEASURED)
    no_bf16.peak_gflop_per_s = no_bf16.infer_peak_fraction = None
    assert format_ceilings([rows[0], no_bf16]).endswith("fp32 920, bf16 - (no fast bf16 product on this CPU) GFLOP/s")
    assert "| 230 | - |" in markdown_table([no_bf16])


def test_the_ceiling_is_measured_only_when_a_row_needs_it(monkeypatch):
    asked = []

    def fake_peaks(formats, **kwargs):  # before the timed turns and after: the better of the two is kept
        asked.append(list(formats))
        return dict.fromkeys(asked[-1], 5000.0 if len(asked) % 2 else 9000.0)

    monkeypatch.setattr("tresnet.bench.runner.estimate_peaks", fake_peaks)
    (plain,) = run_benchmark(tiny_bench_config("genet_light", mode="infer", threads=1))
    assert asked == [] and plain.number_format is None and "number_format" not in plain.to_dict()
    (plain,) = run_benchmark(tiny_bench_config("genet_light", mode="infer", threads=1, peak_gflops="auto"))
    assert asked == [["fp32"], ["fp32"]] and plain.peak_gflop_per_s == 9000.0 and plain.peak_source == PEAK_MEASURED
    (plain,) = run_benchmark(tiny_bench_config("genet_light", mode="infer", threads=1, precision="bf16",
                                                peak_gflops="fp32=1"))
    assert asked[-1] == ["bf16"] and plain.number_format == "bf16"  # bf16 autocast: the bf16 ceiling, measured


def test_a_bad_peak_gflops_stops_the_run_before_anything_is_built():
    with pytest.raises(ConfigError, match="bad --peak-gflops 'fast'"):
        run_benchmark(tiny_bench_config("tresnet_m,no_such_model", peak_gflops="fast"))


def test_cli_takes_the_ceiling_and_prints_it(capsys):
    args = ["benchmark", "--models", "genet_light,genet_light:fused", "--device", "cpu", "--img-size", "64", "--threads", "1",
            "--batch-size", "2", "--warmup", "0", "--repeats", "1", "--no-peak-memory", "--no-progress", "--mode",
            "infer"]
    assert main([*args, "--peak-gflops", "fp32=100"]) == 0
    out, _ = capsys.readouterr()
    assert "compute ceiling (given, " in out and "fp32 100 GFLOP/s" in out and "% fp32" in out
    assert main([*args, "--peak-gflops", "fp64=1"]) == 1
    _, err = capsys.readouterr()
    assert err.strip().startswith("tresnet benchmark: error: bad --peak-gflops 'fp64=1'") and err.count("\n") == 1
