"""benchmarks/saved_memory.py: the slope and constant of each model in each precision, the benchmark's column beside
them, and the checks the figures must pass, written as JSON and a table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from helpers import requires_timm

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "saved_memory.py"


@requires_timm
def test_the_table_has_every_model_and_precision_and_the_checks_judge_it(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("saved_memory_benchmark", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    status = bench.main(["--sizes", "32", "--batches", "2,4", "--threads", "1", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "saved_memory_cpu.json").read_text())
    saved = record["saved"]["32"]
    assert set(saved) == set(bench.MODELS) and all(set(got) == {"fp32", "bf16", "fp16"} for got in saved.values())
    lean, timm = saved["tresnet_m:memory_efficient"], saved["timm:tresnet_m"]
    assert lean["bf16"]["saved_mib_per_img"] < 0.55 * timm["bf16"]["saved_mib_per_img"]
    assert lean["bf16"]["saved_constant_mib"] > 40 > lean["fp32"]["saved_constant_mib"]  # the bf16 weight copy
    assert [row["model"] for row in record["benchmark_rows"]["32"]] == list(bench.MODELS)
    # at 32 px TResNet's last stage is 1 x 1, where the lean tails save less: a check fails, and the status says so
    assert status == (0 if all(check["ok"] for check in record["checks"]) else 1)
    assert any(not check["ok"] and "fp32" in check["claim"] for check in record["checks"])
    out = capsys.readouterr().out
    assert "FAIL" in out and "| ours, `memory_efficient=True` |" in (tmp_path / "saved_memory_cpu.md").read_text()
