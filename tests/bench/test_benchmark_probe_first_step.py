"""benchmarks/probe_first_step.py: the probe's cheap first step against two full steps, side by side."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "probe_first_step.py"


def _script():
    spec = importlib.util.spec_from_file_location("probe_first_step_benchmark", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_both_ways_are_measured_and_compared(tmp_path):
    bench = _script()
    code = bench.main(["--models", "genet_light", "--batches", "4", "--img-size", "32", "--threads", "1",
                       "--tolerance", "0.5", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "probe_first_step_cpu.json").read_text())
    (row,) = record["rows"]
    full, cheap = (row[way]["peak_mib"] for way in bench.WAYS)
    assert full > 0 and cheap > 0 and row["relative_difference"] == cheap / full - 1
    assert code == (0 if abs(row["relative_difference"]) <= 0.5 else 1)
    assert "| genet_light | 4 |" in (tmp_path / "probe_first_step_cpu.md").read_text()
