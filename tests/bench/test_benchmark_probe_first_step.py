"""benchmarks/probe_first_step.py: the probe's cheap first step against two full steps, side by side."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "probe_first_step.py"
MIB = 2 ** 20


def _script():
    spec = importlib.util.spec_from_file_location("probe_first_step_benchmark", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.parametrize(("cheap_mib", "code"), [(1010, 0), (1040, 1)])
def test_both_ways_are_probed_and_the_difference_is_checked(cheap_mib, code, tmp_path, monkeypatch):
    bench = _script()
    asked = []

    def fake_probe(label, batch, *, first_step_images, **kwargs):
        asked.append((label, batch, first_step_images))
        return {"train_peak_rss_bytes": (1000 if first_step_images is None else cheap_mib) * MIB}

    monkeypatch.setattr(bench, "probe_peak_rss", fake_probe)
    assert bench.main(["--models", "a,b", "--batches", "4,8", "--repeats", "2", "--out", str(tmp_path)]) == code
    assert asked == [(m, b, first) for m in "ab" for b in (4, 8) for _ in range(2) for first in (None, 2)]
    record = json.loads((tmp_path / "probe_first_step_cpu.json").read_text())
    assert record["largest_difference"] == pytest.approx(cheap_mib / 1000 - 1)
    assert "| a | 4 | 1000 MiB |" in (tmp_path / "probe_first_step_cpu.md").read_text()
