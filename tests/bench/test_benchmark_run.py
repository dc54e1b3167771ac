"""End-to-end runs on the CPU at tiny sizes: every mode and option, the rows' fields, files, errors."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import warnings

import pytest

from helpers import requires_matplotlib, requires_timm
from tresnet.bench import probe
from tresnet.bench.batch_search import GIB, probe_peak_rss
from tresnet.bench.report import format_ratios, format_table, markdown_table, ratio_rows
from tresnet.bench.runner import BenchConfig, run_benchmark
from tresnet.cli.main import main
from tresnet.errors import ConfigError, ModelNotFoundError

TINY = "timm:test_resnet"  # 0.5 M parameters
REQUIRED_FIELDS = ("model", "impl", "device", "precision", "channels_last", "compiled", "img_size",
                   "infer_batch_size", "infer_img_per_s", "train_batch_size", "train_img_per_s", "params_m",
                   "gmacs", "max_train_batch", "saved_mib_per_img", "saved_constant_mib", "train_peak_mem_mib", "top1")


def tiny(**overrides) -> BenchConfig:
    settings = dict(models=TINY, device="cpu", img_size=32, batch_size=2, warmup=0, repeats=2,
                    peak_memory=False)
    settings.update(overrides)
    return BenchConfig(**settings)


@requires_timm
def test_both_modes_ours_against_timm():
    rows = run_benchmark(tiny(models=f"tresnet_m,timm:tresnet_m,{TINY}"))
    assert [r.model for r in rows] == ["tresnet_m", "timm:tresnet_m", TINY]
    for row in rows:
        assert all(field in row.to_dict() for field in REQUIRED_FIELDS)
        assert row.infer.img_per_s > 0 and row.train.img_per_s > 0
        assert len(row.infer.seconds_per_batch) == 2 and row.infer.img_per_s_spread_pct >= 0
    ours, theirs = rows[0], rows[1]
    assert ours.impl == "tresnet" and theirs.impl == "timm"
    assert ours.params_m == pytest.approx(theirs.params_m)
    assert ours.gmacs == pytest.approx(theirs.gmacs, rel=0.01)
    assert ours.top1 == theirs.top1 == 80.8
    # In-Place ABN keeps less for backward than timm's plain BatchNorm
    assert ours.saved_mib_per_img < theirs.saved_mib_per_img
    assert [(r["numerator"], r["denominator"]) for r in ratio_rows(rows)] == [("tresnet_m", "timm:tresnet_m")]
    assert "tresnet_m / timm:tresnet_m: infer" in format_ratios(rows)
    assert "tresnet_m" in format_table(rows) and markdown_table(rows).count("\n") == 4


@requires_timm
@pytest.mark.parametrize("mode, timer", [("infer", "wall"), ("train", "cpu")])
def test_single_mode(mode, timer):
    (row,) = run_benchmark(tiny(mode=mode, timer=timer, threads=1))
    assert row.timer == timer and row.threads == 1
    other = "train" if mode == "infer" else "infer"
    assert row.mode(mode).img_per_s > 0
    assert row.mode(other).img_per_s is None and row.mode(other).batch_size is None


@requires_timm
def test_bf16_channels_last_with_our_model():
    rows = run_benchmark(tiny(models=f"tresnet_m,{TINY}", precision="bf16", channels_last=True, repeats=1))
    assert all(r.precision == "bf16" and r.channels_last for r in rows)
    assert all(r.train.img_per_s > 0 and r.infer.img_per_s > 0 for r in rows)


@requires_timm
def test_amp_on_the_cpu_is_bfloat16_autocast():
    (row,) = run_benchmark(tiny(precision="amp", repeats=1))
    assert row.precision == "amp" and row.train.img_per_s > 0 and row.infer.img_per_s > 0


@requires_timm
def test_auto_batch_is_ninety_percent_of_the_largest_that_fits():
    budget_gib = 1.0

    def fake_peak(target, mode, batch):  # 200 MiB runtime + 70 MiB per image
        return 200 * 2**20 + 70 * 2**20 * batch

    (row,) = run_benchmark(tiny(batch_size="auto", memory_budget_gib=budget_gib, mode="both"),
                           peak_measure=fake_peak)
    expected = (1024 - 200) // 70
    assert row.train.max_batch == expected
    assert row.train.batch_size == row.infer.batch_size == int(0.9 * expected)
    assert row.memory_budget_gib == budget_gib
    assert row.train.peak_mem_mib == pytest.approx(200 + 70 * int(0.9 * expected))
    (row,) = run_benchmark(tiny(batch_size="auto", memory_budget_gib=budget_gib, mode="infer", repeats=1,
                                max_batch=5), peak_measure=fake_peak)
    assert row.infer.max_batch == 5 and row.train.max_batch is None and row.infer.batch_size == 4


@requires_timm
def test_a_batch_over_the_budget_fails():
    with pytest.raises(ConfigError, match="batch 2 needs .* over --memory-budget"):
        run_benchmark(tiny(memory_budget_gib=0.5), peak_measure=lambda t, m, b: 0.4 * GIB * b)
    with pytest.raises(ConfigError, match="a batch of 2 needs"):  # training searches from 2 (BatchNorm)
        run_benchmark(tiny(batch_size="auto", memory_budget_gib=0.5), peak_measure=lambda t, m, b: GIB)


@pytest.mark.parametrize("overrides, message", [
    (dict(device="cuda:7"), "cuda"),
    (dict(device="tpu"), "bad --device"),
    (dict(precision="fp8"), "bad --precision 'fp8'"),
    (dict(precision="int8"), "int8 is a number format, not an autocast precision: benchmark NAME:int8, NAME:onnx_int8"),
    (dict(mode="fly"), "bad --mode"),
    (dict(batch_size="many"), "bad --batch-size 'many'"),
    (dict(batch_size=0), "bad --batch-size 0"),
    (dict(batch_size="auto"), "needs --memory-budget"),
    (dict(repeats=0), "--repeats must be at least 1"),
    (dict(timer="gpu"), "bad --timer"),
])
def test_bad_options_raise_config_errors(overrides, message):  # all found before any model is looked up
    with pytest.raises(ConfigError, match=message):
        run_benchmark(tiny(**overrides))


@requires_timm
def test_unknown_model_fails_before_any_work():
    with pytest.raises(ModelNotFoundError, match="no_such_net"):
        run_benchmark(tiny(models=f"{TINY},no_such_net"))


@requires_timm
@requires_matplotlib
def test_cli_writes_json_csv_and_plot(tmp_path, capsys):
    out = tmp_path / "results"
    code = main(["benchmark", "--models", TINY, "--device", "cpu", "--img-size", "32", "--batch-size", "2",
                 "--warmup", "0", "--repeats", "1", "--no-peak-memory", "--no-progress", "--markdown",
                 "--json", str(out / "r.json"), "--csv", str(out / "r.csv"), "--plot", str(out / "r.png")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "timm:test_resnet" in printed and "train img/s" in printed and "| model |" in printed
    rows = json.loads((out / "r.json").read_text())
    assert all(field in rows[0] for field in REQUIRED_FIELDS)
    with open(out / "r.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert csv_rows[0]["model"] == TINY and float(csv_rows[0]["train_img_per_s"]) > 0
    assert (out / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("argv, message", [
    pytest.param(["--models", "no_such_net"], "unknown model 'no_such_net'", marks=requires_timm),
    (["--device", "cuda:7"], "--device cuda:7"),
    (["--precision", "half"], "bad --precision 'half'"),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    code = main(["benchmark", "--models", TINY, "--device", "cpu", "--no-progress", *argv])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tresnet benchmark: error:") and message in err and "\n" not in err


@requires_timm
def test_cpu_peak_memory_probe_runs_in_a_subprocess():
    reply = probe_peak_rss(TINY, 2, modes=("infer", "train"), img_size=32, threads=1)
    assert 0 < reply["baseline_rss_bytes"] <= reply["infer_peak_rss_bytes"] <= reply["train_peak_rss_bytes"]
    assert math.isfinite(reply["train_peak_rss_bytes"])


@pytest.mark.parametrize(("steps", "expected"), [(2, [2, 6]), (3, [2, 6, 6])])
def test_the_probes_first_training_step_runs_on_two_images_and_creates_the_momentum(steps, expected, monkeypatch):
    seen, momentum = [], []
    real_make_step = probe.make_step

    def recording_make_step(*args, **kwargs):
        step = real_make_step(*args, **kwargs)
        forward = step.target.forward

        def recorded(images):
            seen.append(len(images))
            momentum.append(bool(step.optimizer.state))
            return forward(images)

        step.target.forward = recorded
        return step

    monkeypatch.setattr(probe, "make_step", recording_make_step)
    reply = probe.run_probe(dict(model="genet_light", batch_size=6, modes=["train"], img_size=32, precision="fp32",
                                 channels_last=False, threads=1, steps=steps))
    assert seen == expected and momentum == [False] + [True] * (steps - 1)
    assert reply["train_peak_rss_bytes"] >= reply["baseline_rss_bytes"] > 0


@requires_timm
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::tresnet.runtime.EmulatedBf16Warning")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cpu_auto_batch_with_real_measurements(precision):
    (row,) = run_benchmark(tiny(batch_size="auto", memory_budget_gib=0.9, mode="train", repeats=1, max_batch=64,
                                peak_memory=True, img_size=64, precision=precision))
    assert 1 <= row.train.batch_size < row.train.max_batch <= 64 and row.precision == precision
    assert row.train.peak_mem_mib <= 0.9 * 1024


@requires_timm
@pytest.mark.slow
def test_compile():
    (row,) = run_benchmark(tiny(mode="infer", compile=True, repeats=1))
    assert row.compiled and row.infer.img_per_s > 0


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux /proc only")
def test_subprocess_peak_is_its_own_not_the_parents():
    numpy = pytest.importorskip("numpy")
    ballast = numpy.ones(600 * 2**20, dtype=numpy.uint8)  # the parent's peak grows by 600 MiB
    code = ("from tresnet.bench.memory import image_peak_rss_bytes, peak_rss_bytes; "
            "print(image_peak_rss_bytes(), peak_rss_bytes())")
    own, inherited = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                             check=True).stdout.split())
    del ballast
    assert own < inherited - 500 * 2**20  # getrusage carries the parent's peak over fork + exec; VmHWM does not


@pytest.mark.parametrize(("load", "cores", "threads", "warns"), [
    (3.0, 2, 2, True),     # the busy machine of the issue: 2 threads on 2 cores under a load of 3
    (0.3, 2, 2, False),    # a quiet machine: the benchmark's own start and the daemons
    (1.0, 2, 1, False),    # one other job on one core leaves the run's one thread a core
    (1.6, 2, 1, True),
    (None, 2, 1, False),   # no load average on this system
])
def test_the_busy_machine_message(load, cores, threads, warns):
    from tresnet.bench.machine import busy_machine_message

    message = busy_machine_message(load, cores, threads)
    assert (message is not None) is warns
    if warns:
        assert f"load average is {load:.1f} on {cores} cores" in message and "--threads 1 --timer cpu" in message
        assert "\n" not in message


def test_a_wall_clock_run_on_a_busy_machine_warns_once_before_it_starts():
    from tresnet.bench.runner import BusyMachineWarning

    with pytest.warns(BusyMachineWarning, match="load average is 9.0") as caught:
        run_benchmark(tiny(mode="infer", threads=1, repeats=1), load=lambda: 9.0)
    assert len([w for w in caught if w.category is BusyMachineWarning]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", BusyMachineWarning)
        run_benchmark(tiny(mode="infer", threads=1, repeats=1, timer="cpu"), load=lambda: 9.0)  # CPU time: robust
        run_benchmark(tiny(mode="infer", threads=1, repeats=1), load=lambda: 0.0)
