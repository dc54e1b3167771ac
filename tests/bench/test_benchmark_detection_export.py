"""benchmarks/detection_export.py: each form of a detector timed beside eager PyTorch, and the export check's figures,
written as JSON and a table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "detection_export.py"


def test_the_benchmark_times_every_form_and_records_the_checks(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("detection_export_benchmark", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--min-size", "64", "--warmup", "0", "--repeats", "1", "--threads", "1",
                       "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "detection_export_cpu.json").read_text())
    assert set(record["seconds_per_image"]) == {"eager PyTorch", "eager PyTorch, folded", "TorchScript",
                                                   "ONNX Runtime"}
    assert all(seconds > 0 for seconds in record["seconds_per_image"].values())
    assert [r["format"] for r in record["exports"]] == ["torchscript", "onnx"]
    assert all(r["network_error"] <= r["limit"] for r in record["exports"])
    assert record["img_size"] == 64 and record["cpu_flags"] is not None
    table = (tmp_path / "detection_export_cpu.md").read_text()
    assert "| ONNX Runtime |" in table and "Reproduce:" in capsys.readouterr().out
