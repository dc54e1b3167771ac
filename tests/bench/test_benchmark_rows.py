"""Benchmark rows: per-mode access, the flat form of the result files both ways, the machine description."""

from __future__ import annotations

import json

import pytest

from tresnet.bench.machine import SPEED_FLAGS, cpu_flags, cpu_name
from tresnet.bench.report import format_table, write_json
from tresnet.bench.rows import BenchRow, ModeResult, as_rows

# The flat keys of a CPU run in inference only at a fixed batch, peak memory measured: as written before
# rows were dataclasses, then the two added since (max_rel_diff, cpu_flags).
FLAT_KEYS = [
    "model", "name", "impl", "form", "device", "device_name", "precision", "channels_last", "compiled",
    "img_size", "params_m", "gmacs", "saved_mib_per_img", "saved_constant_mib", "top1", "top1_img_size", "top1_source",
    "infer_batch_size", "infer_img_per_s", "train_batch_size", "train_img_per_s", "max_train_batch",
    "max_infer_batch", "infer_peak_mem_mib", "train_peak_mem_mib", "peak_mem_method", "memory_budget_gib",
    "peak_mem_runtime_mib", "tresnet_version", "torch_version", "timm_version", "warmup", "repeats", "iters",
    "threads", "timer", "infer_img_per_s_spread_pct", "infer_ms_per_batch", "infer_seconds_per_batch",
    "max_rel_diff", "cpu_flags",
]


def make_row() -> BenchRow:
    return BenchRow(
        model="tresnet_m:fused", name="tresnet_m", impl="tresnet", form="fused", device="cpu",
        device_name="a CPU (1 thread)", precision="fp32", channels_last=False, compiled=False, img_size=224,
        infer=ModeResult(batch_size=8, img_per_s=20.0, img_per_s_spread_pct=1.5, ms_per_batch=400.0,
                         seconds_per_batch=[0.4, 0.41], peak_mem_mib=700.0),
        peak_mem_runtime_mib=300.0, warmup=2, repeats=2, iters=1, threads=1, timer="wall", max_rel_diff=3e-7,
        cpu_flags=["avx2"])


def test_flat_form_keeps_the_result_files_keys_and_reads_back():
    row = make_row()
    flat = row.to_dict()
    assert list(flat) == FLAT_KEYS
    assert flat["infer_img_per_s"] == 20.0 and flat["train_batch_size"] is None
    assert BenchRow.from_dict(flat) == row
    assert BenchRow.from_dict(json.loads(json.dumps(flat))) == row


def test_per_mode_access():
    row = make_row()
    assert row.mode("infer") is row.infer and row.timed_modes == ("infer",)
    assert not row.train.timed
    with pytest.raises(ValueError, match="bad mode 'fly'"):
        row.mode("fly")


def test_reports_take_rows_or_the_dicts_of_a_result_file(tmp_path):
    path = write_json([make_row()], tmp_path / "rows.json")
    (loaded,) = json.loads(path.read_text())
    assert as_rows([loaded]) == [make_row()]
    assert format_table([loaded]) == format_table([make_row()])
    old = {k: v for k, v in loaded.items() if k not in ("max_rel_diff", "cpu_flags")}  # an older file
    assert as_rows([old])[0].max_rel_diff is None


def test_machine_description():
    assert cpu_name()
    flags = cpu_flags()
    assert all(flag in SPEED_FLAGS for flag in flags)
    assert flags == [f for f in SPEED_FLAGS if f in flags]  # in the order of SPEED_FLAGS
