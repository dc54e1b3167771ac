"""The contract every registered task keeps, checked for each task of the registry (a new task gets these checks
by registering itself): losses, probabilities, distillation, evaluation and its scores, the metrics row, the
checkpoint record, and the predictions."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import tresnet
from tresnet.data.sources import list_sources
from tresnet.errors import ConfigError
from tresnet.tasks import LossOptions, NetworkSpec, get_task, list_tasks

BATCH, OUTPUTS, SIDE = 6, 5, 64
# What a set tells its evaluation (a detection set its category ids): every task is handed one.
DATA = SimpleNamespace(classes=[f"class {i}" for i in range(OUTPUTS)], category_ids=[2, 3, 5, 7, 11])


@pytest.fixture(params=list_tasks())
def task(request):
    return get_task(request.param)


@pytest.fixture(scope="module")
def networks():
    """Each task's network on a small GENet, built once (eval mode)."""
    return {name: get_task(name).create_network(tresnet.create_model, NetworkSpec(
        "genet_light", OUTPUTS, img_size=SIDE)).eval() for name in list_tasks()}


def _batch(task, seed: int = 0):
    """Outputs of the task's form (logits for a classifier: random; a detector's: none needed) and targets."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(BATCH, OUTPUTS, generator=generator)
    targets = task.random_targets(BATCH, OUTPUTS, generator)
    if isinstance(targets, torch.Tensor) and targets.ndim == 2 and targets.float().sum() == 0:
        targets[0, 0] = 1  # a multi-hot batch needs a positive to be scored
    return logits, targets


def _images(task, count: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return task.batch([torch.rand(3, SIDE, SIDE, generator=generator) for _ in range(count)])


def _outputs(task, networks, count: int, seed: int = 0):
    """What the task's network answers for ``count`` images."""
    with torch.no_grad():
        return networks[task.name](_images(task, count, seed))


def test_names_and_columns_are_those_the_loops_read(task):
    assert get_task(task.name) is task
    assert task.losses and task.default_loss == task.losses[0] == task.check_loss(None)
    assert f"val_{task.metric}" in task.columns and f"ema_{task.metric}" in task.columns
    assert task.metric_title and (task.validation_loss or task.validation_loss is None)


def test_every_loss_gives_a_finite_scalar_that_trains(task, networks):
    network = networks[task.name]
    targets = task.random_targets(2, OUTPUTS, torch.Generator().manual_seed(0))
    network.train()
    try:
        for name in task.losses:
            network.zero_grad()
            loss = task.training_loss(network, task.create_loss(name, LossOptions()), _images(task), targets)
            loss.backward()
            grads = [p.grad for p in network.parameters() if p.requires_grad]
            assert loss.ndim == 0 and torch.isfinite(loss) and any(g is not None and g.abs().sum() > 0 for g in grads)
    finally:
        network.eval()


def test_a_loss_of_another_task_is_refused(task):
    others = {name for other in list_tasks() for name in get_task(other).losses} - set(task.losses)
    for name in others:
        with pytest.raises(Exception, match=f"does not fit task '{task.name}'"):
            task.check_loss(name)


def test_probabilities_round_trip_and_distillation_vanishes_on_agreement(task):
    if not task.distils:
        pytest.skip(f"{task.name} has no distillation")
    logits, _ = _batch(task)
    probs = task.probabilities(logits)
    torch.testing.assert_close(task.probabilities(task.logits_of(probs)), probs, atol=1e-5, rtol=1e-4)
    assert float(task.divergence(logits, logits.clone(), 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(task.divergence(logits, -logits, 4.0)) > 0.0


def test_a_tally_gives_scores_with_the_headline_score_and_its_row(task, networks):
    tally = task.tally(torch.device("cpu"), data=DATA)
    for seed in (0, 1):
        logits, targets = _batch(task, seed)
        outputs = logits if isinstance(targets, torch.Tensor) else _outputs(task, networks, BATCH, seed)
        if not isinstance(targets, torch.Tensor):
            targets = [{**target, "image_id": seed * BATCH + index} for index, target in enumerate(targets)]
        tally.add(outputs, targets)
    scores = tally.result(1.0)
    assert scores.images == 2 * BATCH and -1.0 <= scores.score <= 1.0
    assert scores.loss >= 0.0 or (task.validation_loss is None and scores.loss != scores.loss)
    assert isinstance(scores.to_dict(), dict)
    row = task.row(scores, None)
    assert set(row) == set(task.columns) and row[f"val_{task.metric}"] == scores.score
    assert row[f"ema_{task.metric}"] is None


def test_what_a_checkpoint_records_is_text(task):
    record = task.checkpoint_record(threshold=0.5)
    assert all(isinstance(key, str) and isinstance(value, str) for key, value in record.items())


def test_predictions_come_one_per_image_and_failures_carry_their_error(task, networks):
    logits, targets = _batch(task)
    outputs = logits if isinstance(targets, torch.Tensor) else _outputs(task, networks, BATCH)
    names = [f"image{i}.png" for i in range(BATCH)]
    labels = [f"class {i}" for i in range(OUTPUTS)]
    answers = task.answers(names, outputs, labels, None, topk=3, threshold=0.5)
    assert [answer.file for answer in answers] == names
    assert all(answer.error is None for answer in answers)
    assert all(isinstance(answer.to_dict(), dict) and answer.lines()[0] == answer.file for answer in answers)
    failed = task.failure("broken.png", "cannot read broken.png")
    assert failed.error == "cannot read broken.png" and failed.to_dict()["error"] == failed.error


def test_every_task_is_served_by_a_data_source(task):
    assert any(task.name in source.tasks for source in list_sources())


def test_the_task_builds_a_network_whose_outputs_its_losses_take(task):
    assert task.heads and task.check_head(None) is None and task.check_head(task.heads[0]) == task.heads[0]
    with pytest.raises(ConfigError, match=f"does not fit task '{task.name}'"):
        task.check_head("no-such-head")
    for head in task.heads:
        spec = NetworkSpec("genet_light", OUTPUTS, head=head, img_size=SIDE)
        network = task.create_network(tresnet.create_model, spec).train()
        assert network.pretrained_cfg["task"] == task.name and network.pretrained_cfg["head"] == head
        targets = task.random_targets(2, OUTPUTS, torch.Generator().manual_seed(0))
        loss = task.training_loss(network, task.create_loss(None, LossOptions()), _images(task), targets)
        assert loss.ndim == 0 and torch.isfinite(loss)
