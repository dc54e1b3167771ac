"""tresnet.inference.evaluate with the multilabel task's tally: mAP, the thresholded precision / recall and the loss
of a multi-label model whose logits are known, checked against scikit-learn and torch; exact under DDP; and
resolve_task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_score, recall_score
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tresnet.data.datasets import ImageBatch, UnreadableImage
from tresnet.errors import ConfigError, DataError
from tresnet.inference.evaluate import evaluate, resolve_task
from tresnet.tasks import Task, get_task
from tresnet.tasks.multilabel import MultiLabelScores, MultiLabelTally


class RowLookupModel(nn.Module):
    """Answers row ``i`` of ``table`` for an image whose pixels all hold ``i``."""

    def __init__(self, table: torch.Tensor, task: str | None = None):
        super().__init__()
        self.table = table
        self.anchor = nn.Parameter(torch.zeros(()))  # so that .to()/.eval() behave as for a model
        self.pretrained_cfg = {"task": task} if task else {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0, 0, 0].round().long()] + self.anchor


def _case(num_images: int = 23, num_classes: int = 5, seed: int = 0):
    """Logits rounded to one decimal (many ties), multi-hot targets; class 3 has no positive."""
    rng = np.random.default_rng(seed)
    logits = torch.tensor(rng.normal(0, 1.5, (num_images, num_classes)).round(1), dtype=torch.float32)
    targets = torch.tensor(rng.random((num_images, num_classes)) < 0.4, dtype=torch.float32)
    targets[:, 3] = 0
    targets[0, :3] = 1  # the first rows carry a positive of each other class (for the limit test)
    targets[1, 4] = 1
    return logits, targets


def _loader(logits: torch.Tensor, targets: torch.Tensor, batch_size: int = 4, task: str | None = None):
    images = torch.arange(len(logits), dtype=torch.float32)[:, None, None, None].expand(-1, 3, 2, 2)
    loader = DataLoader(TensorDataset(images.contiguous(), targets), batch_size=batch_size)
    return RowLookupModel(logits, task), loader


def _tally(threshold: float = 0.5) -> MultiLabelTally:
    return get_task("multilabel").tally("cpu", threshold=threshold)


def _expected(logits: torch.Tensor, targets: torch.Tensor, threshold: float) -> dict:
    """The published definitions, from scikit-learn (AP, macro / micro precision and recall)."""
    y, scores = targets.numpy().astype(int), logits.double().numpy()
    present = [c for c in range(y.shape[1]) if y[:, c].any()]
    ap = {c: average_precision_score(y[:, c], scores[:, c]) for c in present}
    predicted = (torch.sigmoid(logits.double()) > threshold).numpy().astype(int)
    cp = precision_score(y, predicted, average="macro", zero_division=0)
    cr = recall_score(y, predicted, average="macro", zero_division=0)
    op = precision_score(y, predicted, average="micro", zero_division=0)
    o_r = recall_score(y, predicted, average="micro", zero_division=0)
    loss = nn.functional.binary_cross_entropy_with_logits(logits.double(), targets.double()).item()
    return dict(map=float(np.mean(list(ap.values()))), ap=ap, cp=cp, cr=cr, cf1=2 * cp * cr / (cp + cr), op=op,
                or_=o_r, of1=2 * op * o_r / (op + o_r), loss=loss)


def _assert_matches(result: MultiLabelScores, logits: torch.Tensor, targets: torch.Tensor,
                    threshold: float) -> None:
    assert isinstance(result, MultiLabelScores)
    expected = _expected(logits, targets, threshold)
    assert result.map == result.score == pytest.approx(expected["map"], abs=1e-9)
    for c, value in enumerate(result.ap_per_class):
        assert value is None if c not in expected["ap"] else value == pytest.approx(expected["ap"][c], abs=1e-9)
    for key in ("cp", "cr", "cf1", "op", "or_", "of1"):
        assert getattr(result, key) == pytest.approx(expected[key], abs=1e-9), key
    assert result.loss == pytest.approx(expected["loss"], rel=1e-6)
    assert result.images == len(logits) and result.num_classes == logits.shape[1]
    assert result.classes_with_positives == len(expected["ap"]) and result.threshold == threshold
    figures = result.to_dict()  # the old keys: "or", not "or_"
    assert "or_" not in figures and figures["or"] == result.or_ and figures["map"] == result.map
    assert set(figures) == {"map", "ap_per_class", "cp", "cr", "cf1", "op", "or", "of1", "threshold", "num_classes",
                            "classes_with_positives", "loss", "images", "skipped", "seconds", "img_per_s"}


@pytest.mark.parametrize("threshold", [0.5, 0.62])
def test_metrics_and_loss_match_scikit_learn_and_torch(threshold):
    logits, targets = _case()
    model, loader = _loader(logits, targets)
    result = evaluate(model, loader, _tally(threshold), progress=False)
    _assert_matches(result, logits, targets, threshold)
    assert result.ap_per_class[3] is None and result.skipped == 0
    assert result.seconds > 0 and result.img_per_s == pytest.approx(23 / result.seconds)


def test_limit_cuts_inside_a_batch():
    logits, targets = _case()
    model, loader = _loader(logits, targets, batch_size=4)
    result = evaluate(model, loader, _tally(), limit=6, progress=False)
    _assert_matches(result, logits[:6], targets[:6], 0.5)


def test_unreadable_files_are_counted_not_evaluated():
    logits, targets = _case(num_images=6)
    images = torch.arange(6, dtype=torch.float32)[:, None, None, None].expand(-1, 3, 2, 2)
    broken = [UnreadableImage(f"bad{i}.jpg", "not an image") for i in range(3)]
    batches = [ImageBatch(images[:4], targets[:4], broken[:1]),
               ImageBatch(torch.empty(0), torch.empty(0, 0), broken[1:]),  # a batch of only unreadable files
               ImageBatch(images[4:], targets[4:])]
    result = evaluate(RowLookupModel(logits), batches, _tally(), progress=False)
    assert result.skipped == 3
    _assert_matches(result, logits, targets, 0.5)


def test_mode_restored_and_low_precision_channels_last_run():
    logits, targets = _case()
    model, loader = _loader(logits, targets)
    model.train()
    result = evaluate(model, loader, _tally(), precision="bf16", channels_last=True, progress=False)
    assert model.training and result.map == pytest.approx(_expected(logits, targets, 0.5)["map"])


def test_progress_bar_shows_the_running_loss(capsys):
    logits, targets = _case()
    model, loader = _loader(logits, targets)
    evaluate(model, loader, _tally(), progress=True, desc="check")
    err = capsys.readouterr().err
    assert "check" in err and "loss=" in err and "img/s" in err


def test_bad_inputs_are_one_line_errors():
    logits, targets = _case()
    model, loader = _loader(logits, targets)
    for threshold in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match="threshold"):
            evaluate(model, loader, _tally(threshold), progress=False)
    with pytest.raises(ConfigError, match="precision 'half'"):
        evaluate(model, loader, _tally(), precision="half", progress=False)
    with pytest.raises(ValueError, match="limit"):
        evaluate(model, loader, _tally(), limit=0, progress=False)
    empty = DataLoader(TensorDataset(torch.zeros(0, 3, 2, 2), torch.zeros(0, 5)), batch_size=2)
    with pytest.raises(DataError, match="nothing was evaluated"):
        evaluate(model, empty, _tally(), progress=False)
    _, negatives = _loader(logits, torch.zeros_like(targets))
    with pytest.raises(DataError, match="no class has a positive"):
        evaluate(model, negatives, _tally(), progress=False)
    _, fewer = _loader(logits, targets[:, :4])
    with pytest.raises(DataError, match="class count"):
        evaluate(model, fewer, _tally(), progress=False)


def test_the_task_is_the_given_one_else_the_models_else_multiclass():
    assert resolve_task(RowLookupModel(torch.zeros(1, 2))).name == "multiclass"
    assert resolve_task(RowLookupModel(torch.zeros(1, 2), "multilabel")).name == "multilabel"
    chosen = resolve_task(RowLookupModel(torch.zeros(1, 2), "multilabel"), "multiclass")
    assert isinstance(chosen, Task) and chosen is get_task("multiclass")
    assert resolve_task(RowLookupModel(torch.zeros(1, 2)), get_task("multilabel")) is get_task("multilabel")
    with pytest.raises(ConfigError, match="unknown task 'multi'"):
        resolve_task(RowLookupModel(torch.zeros(1, 2)), "multi")


_WORKER = """
import json, sys
import torch
from torch.utils.data import DataLoader, TensorDataset
from tresnet.training import distributed
from tresnet.inference.evaluate import evaluate
from tresnet.tasks import get_task

logits, targets = torch.load(sys.argv[1])
images = torch.arange(len(logits), dtype=torch.float32)[:, None, None, None].expand(-1, 3, 2, 2).contiguous()

class RowLookupModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
    def forward(self, x):
        return logits[x[:, 0, 0, 0].round().long()] + self.anchor

info = distributed.setup("cpu")
try:
    sampler = distributed.ShardedEpochSampler(len(logits), rank=info.rank, world_size=info.world_size, shuffle=False)
    loader = DataLoader(TensorDataset(images, targets), batch_size=3, sampler=sampler)
    result = evaluate(RowLookupModel(), loader, get_task("multilabel").tally("cpu"), progress=False, info=info)
    result = {**result.to_dict(), "shard": len(sampler)}
    with open(f"{sys.argv[2]}/rank{info.rank}.json", "w") as f:
        json.dump(result, f)
finally:
    distributed.cleanup(info)
"""


@pytest.mark.slow  # two processes start torch (about 10 s)
def test_two_gloo_processes_with_uneven_shards_give_the_single_process_figures(tmp_path):
    logits, targets = _case(num_images=23)
    torch.save((logits, targets), tmp_path / "case.pt")
    (tmp_path / "worker.py").write_text(textwrap.dedent(_WORKER))
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            str(tmp_path / "worker.py"), str(tmp_path / "case.pt"), str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    model, loader = _loader(logits, targets)
    single = evaluate(model, loader, _tally(), progress=False).to_dict()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["shard"] for r in ranks] == [12, 11]  # uneven shards
    for result in ranks:  # every rank gets the whole set's figures
        assert result["images"] == 23 and result["skipped"] == 0
        assert result["classes_with_positives"] == single["classes_with_positives"]
        assert [ap is None for ap in result["ap_per_class"]] == [ap is None for ap in single["ap_per_class"]]
        # the rows arrive in another order (rank 0's, then rank 1's): equal up to the order of float sums
        assert [ap for ap in result["ap_per_class"] if ap is not None] == pytest.approx(
            [ap for ap in single["ap_per_class"] if ap is not None], abs=1e-12)
        for key in ("map", "cp", "cr", "cf1", "op", "or", "of1", "loss"):
            assert result[key] == pytest.approx(single[key], abs=1e-12), key
