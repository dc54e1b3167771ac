"""tresnet.tasks.multilabel_metrics against scikit-learn: AP / mAP (random scores, heavy ties, classes without positives,
all-positive classes), the threshold metrics (macro / micro, ties at the threshold), and exact mAP over two
gloo processes with uneven shards."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from tresnet.collectives import DistInfo, all_gather_rows
from tresnet.errors import ConfigError, DataError
from tresnet.tasks.multilabel_metrics import (
    THRESHOLD_METRICS,
    MultiLabelRows,
    average_precision,
    mean_average_precision,
    multilabel_metrics,
    threshold_metrics,
)

metrics = pytest.importorskip("sklearn.metrics")


def _sklearn_ap(scores: torch.Tensor, targets: torch.Tensor) -> list[float | None]:
    y, s = targets.numpy(), scores.double().numpy()
    return [float(metrics.average_precision_score(y[:, c], s[:, c])) if y[:, c].any() else None
            for c in range(y.shape[1])]


def _check_ap(scores: torch.Tensor, targets: torch.Tensor) -> None:
    ours = average_precision(scores, targets)
    assert ours.dtype == torch.float64 and ours.shape == (targets.shape[1],)
    expected = _sklearn_ap(scores, targets)
    for c, value in enumerate(expected):
        if value is None:
            assert torch.isnan(ours[c]), c
        else:
            assert ours[c].item() == pytest.approx(value, rel=1e-12, abs=1e-12), c
    present = [v for v in expected if v is not None]
    assert mean_average_precision(scores, targets) == pytest.approx(float(np.mean(present)), rel=1e-12)


def test_ap_matches_sklearn_on_random_scores():
    scores = torch.randn(200, 12)
    targets = (torch.rand(200, 12) < 0.2).float()
    _check_ap(scores, targets)


@pytest.mark.parametrize("decimals", [1, 0])
def test_ap_matches_sklearn_under_heavy_ties(decimals):
    scores = torch.round(torch.rand(150, 9), decimals=decimals)
    targets = (torch.rand(150, 9) < 0.3).float()
    _check_ap(scores, targets)


def test_ap_constant_scores_absent_and_all_positive_classes():
    scores = torch.randn(40, 5)
    scores[:, 1] = 0.25  # one threshold: AP = fraction of positives
    targets = (torch.rand(40, 5) < 0.3).float()
    targets[:, 2] = 0  # no positive: excluded from the mean
    targets[:, 3] = 1  # all positive: AP 1
    targets[0, 1] = 1
    _check_ap(scores, targets)
    ap = average_precision(scores, targets)
    assert ap[1].item() == pytest.approx(targets[:, 1].mean().item())
    assert torch.isnan(ap[2]) and ap[3].item() == 1.0


def test_ap_depends_only_on_the_order_of_the_scores():
    logits = torch.randn(60, 4) * 4
    targets = (torch.rand(60, 4) < 0.4).float()
    torch.testing.assert_close(average_precision(logits, targets),
                               average_precision(torch.sigmoid(logits.double()), targets))
    permutation = torch.randperm(60)
    torch.testing.assert_close(average_precision(logits[permutation], targets[permutation]),
                               average_precision(logits, targets))


def test_map_errors_are_one_line():
    with pytest.raises(DataError, match="no class has a positive") as error:
        mean_average_precision(torch.randn(5, 3), torch.zeros(5, 3))
    assert "\n" not in str(error.value)
    with pytest.raises(DataError, match=r"\(5, 3\).*\(5, 4\)"):
        average_precision(torch.randn(5, 3), torch.zeros(5, 4))
    with pytest.raises(DataError, match="0 rows"):
        mean_average_precision(torch.randn(0, 3), torch.zeros(0, 3))


def _sklearn_threshold_metrics(probs: torch.Tensor, targets: torch.Tensor, threshold: float) -> dict:
    y, pred = targets.numpy().astype(int), (probs.double().numpy() > threshold).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cp = metrics.precision_score(y, pred, average="macro", zero_division=0)
        cr = metrics.recall_score(y, pred, average="macro", zero_division=0)
        return {"cp": cp, "cr": cr, "cf1": 2 * cp * cr / (cp + cr) if cp + cr else 0.0,
                "op": metrics.precision_score(y, pred, average="micro", zero_division=0),
                "or": metrics.recall_score(y, pred, average="micro", zero_division=0),
                "of1": metrics.f1_score(y, pred, average="micro", zero_division=0)}


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.3])
def test_threshold_metrics_match_sklearn_including_ties_at_the_threshold(threshold):
    probs = torch.round(torch.rand(120, 10, dtype=torch.float64), decimals=1)  # many equal the threshold
    assert (probs == threshold).sum() > 50
    targets = (torch.rand(120, 10) < 0.3).float()
    targets[:, 0] = 0  # a class with no positive: recall 0 counts in CR
    probs[:, 1] = 0.0  # a class never predicted: precision 0 counts in CP
    ours = threshold_metrics(probs, targets, threshold)
    expected = _sklearn_threshold_metrics(probs, targets, threshold)
    assert ours.keys() == expected.keys() == set(THRESHOLD_METRICS)
    for key in ours:
        assert ours[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-15), key


def test_threshold_metrics_predict_strictly_above_the_threshold_and_zero_without_predictions():
    targets = torch.tensor([[1.0, 0.0]])
    assert threshold_metrics(torch.tensor([[0.5, 0.5]]), targets)["op"] == 0.0  # 0.5 is not > 0.5
    assert threshold_metrics(torch.tensor([[0.51, 0.1]]), targets) == {
        "cp": 0.5, "cr": 0.5, "cf1": 0.5, "op": 1.0, "or": 1.0, "of1": 1.0}
    with pytest.raises(ConfigError, match="1.5"):
        threshold_metrics(torch.rand(2, 2), torch.ones(2, 2), 1.5)


def test_multilabel_metrics_report():
    logits = torch.randn(80, 6) * 3
    targets = (torch.rand(80, 6) < 0.3).float()
    targets[:, 5] = 0
    report = multilabel_metrics(logits, targets, threshold=0.7)
    assert report["ap_per_class"][5] is None and report["classes_with_positives"] == 5
    assert report["num_classes"] == 6 and report["threshold"] == 0.7
    assert report["map"] == pytest.approx(mean_average_precision(logits, targets))
    expected = threshold_metrics(torch.sigmoid(logits.double()), targets, 0.7)
    assert {k: report[k] for k in expected} == expected
    saturated = torch.tensor([[30.0], [40.0], [50.0]])  # sigmoid ties them in float32; the logits do not
    assert multilabel_metrics(saturated, torch.tensor([[0.0], [0.0], [1.0]]))["map"] == 1.0


def test_rows_keep_float32_copies_and_gather_in_one_process():
    tally = MultiLabelRows()
    assert tally.gather()[0].shape == (0, 0)
    first = torch.randn(3, 4, dtype=torch.bfloat16)
    tally.add(first, torch.ones(3, 4, dtype=torch.uint8))
    tally.add(torch.empty(0, 4), torch.empty(0, 0))  # a batch of only unreadable files
    tally.add(torch.randn(2, 4), torch.zeros(2, 4))
    first.zero_()
    logits, targets = tally.gather(DistInfo())
    assert tally.images == 5 and logits.shape == targets.shape == (5, 4)
    assert logits.dtype == targets.dtype == torch.float32 and logits[:3].abs().sum() > 0
    with pytest.raises(DataError, match="class count"):
        tally.add(torch.randn(2, 4), torch.zeros(2, 5))
    rows = torch.randn(3, 2)
    assert all_gather_rows(rows, DistInfo()) is rows


@pytest.mark.slow
def test_two_gloo_processes_with_uneven_shards_give_the_single_process_metrics(tmp_path):
    logits = torch.randn(23, 7) * 3  # 23 rows: shards of 12 and 11
    targets = (torch.rand(23, 7) < 0.3).float()
    targets[:, 6] = 0
    out_file = tmp_path / "rank0.pt"
    from dist_workers import gather_multilabel

    mp.spawn(gather_multilabel, args=(2, str(tmp_path / "init"), logits, targets, str(out_file)), nprocs=2,
             join=True)
    seen = torch.load(out_file)
    order = list(range(0, 23, 2)) + list(range(1, 23, 2))  # rank 0's rows, then rank 1's
    expected_logits = logits.to(torch.bfloat16).float()
    assert seen["images"] == 12
    assert torch.equal(seen["logits"], expected_logits[order]) and torch.equal(seen["targets"], targets[order])
    assert seen["metrics"] == multilabel_metrics(expected_logits, targets)
    assert torch.equal(seen["one_sided"], targets[:2])
