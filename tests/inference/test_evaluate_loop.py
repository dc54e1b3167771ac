"""tresnet.inference.evaluate with the multiclass task's tally: top-1 / top-5 arithmetic on inputs whose answers are
known, in the task's typed scores."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tresnet import get_pretrained_cfg
from tresnet.data import ImageFolderDataset, UnreadableImageWarning, create_eval_transform, create_loader
from tresnet.errors import ConfigError, DataError
from tresnet.inference.evaluate import evaluate
from tresnet.tasks import get_task
from tresnet.tasks.classification import ClassificationScores, ClassificationTally


def _logits_ranking(target: int, rank: int, num_classes: int) -> torch.Tensor:
    """Logits whose ``rank``-th largest (0 = top-1) is ``target``."""
    order = [c for c in range(num_classes) if c != target]
    order.insert(rank, target)
    logits = torch.empty(num_classes)
    logits[order] = -torch.arange(num_classes, dtype=torch.float32)
    return logits


class CodeLookupModel(nn.Module):
    """Reads a code from the red channel of each (uniform) image and answers that code's logits."""

    def __init__(self, table: dict[int, torch.Tensor]):
        super().__init__()
        self.table = table
        self.anchor = nn.Parameter(torch.zeros(()))  # so that .to()/.eval() behave as for a model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = (x[:, 0].mean(dim=(1, 2)) * 255).round().long().tolist()
        return torch.stack([self.table[c] for c in codes]) + self.anchor


# (true class, rank of the true class in the model's answer) for 12 images of 6 classes
CASES = [(0, 0), (0, 3), (1, 0), (1, 5), (2, 1), (2, 0), (3, 4), (3, 2), (4, 5), (4, 0), (5, 0), (5, 1)]
TOP1 = sum(rank == 0 for _, rank in CASES) / len(CASES)  # 5 / 12
TOP5 = sum(rank < 5 for _, rank in CASES) / len(CASES)  # 10 / 12


def _tally() -> ClassificationTally:
    return get_task("multiclass").tally("cpu")


def test_top1_top5_on_a_folder_with_known_answers(tmp_path):
    table = {}
    for index, (target, rank) in enumerate(CASES):
        code = 20 + 10 * index  # red value of the image: which answer the model gives
        folder = tmp_path / f"class{target}"
        folder.mkdir(exist_ok=True)
        Image.new("RGB", (40, 30), (code, 0, 0)).save(folder / f"{index}.png")
        table[code] = _logits_ranking(target, rank, 6)
    (tmp_path / "class3" / "broken.jpg").write_text("not an image")
    dataset = ImageFolderDataset(tmp_path, create_eval_transform(get_pretrained_cfg("tresnet_m"), 32))
    loader = create_loader(dataset, batch_size=5, workers=0, device="cpu")
    with pytest.warns(UnreadableImageWarning, match="broken.jpg"):
        result = evaluate(CodeLookupModel(table), loader, _tally(), progress=False)
    assert isinstance(result, ClassificationScores)
    assert (result.top1, result.top5, result.score) == (TOP1, TOP5, TOP1)
    assert (result.correct_top1, result.correct_top5, result.images, result.skipped) == (5, 10, 12, 1)
    assert result.seconds > 0 and result.img_per_s == pytest.approx(12 / result.seconds)
    assert result.subset == {} and result.real == {}
    figures = result.to_dict()
    assert list(figures) == ["top1", "top5", "correct_top1", "correct_top5", "loss", "images", "skipped", "seconds",
                             "img_per_s"]
    assert (figures["top1"], figures["correct_top5"], figures["skipped"]) == (TOP1, 10, 1)


def _tensor_loader(cases, num_classes, batch_size=4):
    codes = torch.arange(len(cases), dtype=torch.float32)
    images = (codes / 255)[:, None, None, None].expand(-1, 3, 2, 2).contiguous()
    targets = torch.tensor([target for target, _ in cases])
    table = {i: _logits_ranking(t, r, num_classes) for i, (t, r) in enumerate(cases)}
    return CodeLookupModel(table), DataLoader(TensorDataset(images, targets), batch_size=batch_size)


def test_limit_cuts_inside_a_batch():
    model, loader = _tensor_loader(CASES, 6, batch_size=4)
    result = evaluate(model, loader, _tally(), limit=6, progress=False)  # first 6 cases: ranks 0,3,0,5,1,0
    assert result.images == 6 and result.top1 == 3 / 6 and result.top5 == 5 / 6


def test_fewer_than_five_classes_and_cross_entropy():
    cases = [(0, 0), (1, 2), (2, 1)]
    model, loader = _tensor_loader(cases, 3)
    result = evaluate(model, loader, _tally(), progress=False)
    assert result.top1 == 1 / 3 and result.top5 == 1.0  # top-5 of 3 classes: every answer is in it
    logits = torch.stack([_logits_ranking(t, r, 3) for t, r in cases])
    expected = nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])).item()
    assert result.loss == pytest.approx(expected)


def test_mode_restored_and_amp_channels_last_run():
    model, loader = _tensor_loader(CASES, 6)
    model.train()
    result = evaluate(model, loader, _tally(), precision="amp", channels_last=True, progress=False)
    assert model.training and result.top1 == TOP1
    model.eval()
    evaluate(model, loader, _tally(), progress=False)
    assert not model.training


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_every_precision_runs(precision):
    model, loader = _tensor_loader(CASES, 6)
    assert evaluate(model, loader, _tally(), precision=precision, progress=False).top1 == TOP1


def test_an_unknown_precision_is_a_config_error():
    model, loader = _tensor_loader(CASES, 6)
    with pytest.raises(ConfigError, match="precision 'half'"):
        evaluate(model, loader, _tally(), precision="half", progress=False)


def test_nothing_to_evaluate_is_a_data_error():
    empty = DataLoader(TensorDataset(torch.zeros(0, 3, 2, 2), torch.zeros(0, dtype=torch.long)), batch_size=2)
    with pytest.raises(DataError, match="nothing was evaluated"):
        evaluate(CodeLookupModel({}), empty, _tally(), progress=False)
    with pytest.raises(ValueError, match="limit"):
        evaluate(CodeLookupModel({}), empty, _tally(), limit=0)


def test_progress_bar_shows_images_per_second(capsys):
    model, loader = _tensor_loader(CASES, 6)
    evaluate(model, loader, _tally(), progress=True, desc="check")
    assert "img/s" in capsys.readouterr().err
