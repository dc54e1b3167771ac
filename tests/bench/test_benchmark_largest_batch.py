"""benchmarks/largest_batch.py: the largest training batch within a budget, projected from two peaks and searched,
per model and precision, written as JSON and a table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from helpers import requires_timm

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "largest_batch.py"


def _script():
    spec = importlib.util.spec_from_file_location("largest_batch_benchmark", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@requires_timm
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::tresnet.runtime.EmulatedBf16Warning")
def test_each_model_and_precision_gets_its_peaks_projection_and_search(tmp_path):
    bench = _script()
    assert bench.main(["--models", "timm:test_resnet,genet_light", "--precisions", "fp32,bf16", "--budget", "0.9",
                       "--img-size", "32", "--batches", "2,4", "--max-batch", "16",
                       "--threads", "1", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "largest_batch_cpu.json").read_text())
    results = record["results"]
    assert [(r["model"], r["precision"]) for r in results] == [
        ("timm:test_resnet", "fp32"), ("genet_light", "fp32"), ("timm:test_resnet", "bf16"), ("genet_light", "bf16")]
    for r in results:
        assert r["peak_mib"]["2"] > 0 and r["peak_mib"]["4"] > 0 and 2 <= r["searched"] <= 16
        assert all(peak <= 0.9 * 1024 for batch, peak in r["probes"] if batch <= r["searched"])
    table = (tmp_path / "largest_batch_cpu.md").read_text()
    assert "| timm:test_resnet / genet_light |" in table and "Reproduce:" in table
