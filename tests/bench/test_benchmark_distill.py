"""benchmarks/distill.py: the data it writes, the spread and the verdict it prints (the training runs are the
trainer's, tested in tests/training)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from helpers import requires_sklearn

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "distill.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("distill_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files(root: Path) -> dict[str, set[str]]:
    return {d.name: {f.name for f in d.iterdir()} for d in sorted(root.iterdir())}


@requires_sklearn
def test_the_students_see_a_fixed_subset_and_everyone_the_demo_val_split(bench, tmp_path):
    full, small = bench.write_digits_folders(tmp_path, train_per_class=3)
    full_train, small_train = _files(full / "train"), _files(small / "train")
    assert sorted(full_train) == sorted(small_train) == [str(d) for d in range(10)]
    assert all(len(small_train[d]) == 3 and small_train[d] <= full_train[d] for d in small_train)
    assert sum(len(v) for v in full_train.values()) == 1438
    assert _files(full / "val") == _files(small / "val")
    assert sum(len(v) for v in _files(full / "val").values()) == 359
    assert not any(full_train[d] & _files(full / "val")[d] for d in full_train)
    again = bench.write_digits_folders(tmp_path / "again", train_per_class=3)[1]
    assert _files(again / "train") == small_train  # the subset is fixed, not drawn anew


def _rows(bench, means: dict[str, list[float]]) -> list[dict]:
    """Rows of the table; ``th-kd`` is the run at the default teacher-head weight, which the verdict reads."""
    def label(method):
        return "th-kd, beta 0.02" if method == "th-kd" else method

    return [{"method": label(m), "top1": bench.spread(v)} for m, v in means.items()]


def test_the_verdict_reads_the_means_and_compares_the_gaps_with_the_spread(bench):
    holds = bench.verdict(_rows(bench, {"none": [80, 81, 82], "kd": [85, 86, 87], "th-kd": [85, 86, 87.3],
                                 "sh-kd": [84, 85, 86]}))
    assert holds["ordering_holds"]
    assert holds["kd_minus_none"]["gap_points"] == pytest.approx(5) and holds["kd_minus_none"]["beyond_spread"]
    assert not holds["th_kd_minus_kd"]["beyond_spread"]
    assert (holds["kd_minus_none"]["seed_wins"], holds["th_kd_minus_kd"]["seed_wins"]) == (3, 1)  # paired by seed
    assert holds["sh_kd_minus_kd"]["gap_points"] == pytest.approx(-1)
    worse = bench.verdict(_rows(bench, {"none": [80, 81, 82], "kd": [85, 86, 87], "th-kd": [84, 85, 86],
                                 "sh-kd": [84, 85, 86]}))
    assert not worse["ordering_holds"]
    no_gain = bench.verdict(_rows(bench, {"none": [80, 81, 82], "kd": [79, 81, 83], "th-kd": [85, 86, 87],
                                   "sh-kd": [84, 85, 86]}))
    assert not no_gain["ordering_holds"]


def test_a_single_seed_and_a_run_without_the_default_head_weight_are_refused(bench):
    assert bench.DEFAULT_HEAD_WEIGHT == 0.02
    assert bench.parse_args([]).teacher_head_weights == [0.02, 1.0]
    for argv in (["--seeds", "0"], ["--teacher-head-weights", "1"]):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
