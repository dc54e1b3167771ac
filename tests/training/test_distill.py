"""Distillation's parts on small tensors and modules: the kd losses against hand computations, the frozen
teacher head (th-kd) and installed head (sh-kd) that never learn while their projection does, the exact
folding of a projection into an ordinary classifier, the teacher's re-normalisation and the inference blend."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import tresnet
from helpers import randomize_norms
from tresnet.data.transforms import normalisation
from tresnet.errors import ConfigError
from tresnet.training.config import build_config
from tresnet.training.distill import (
    BlendedStudent,
    DistillationLoss,
    FrozenTeacher,
    ProjectedClassifier,
    StudentWithTeacherHead,
    check_classes,
    classifier_of,
    create_distiller,
    folded,
    install_frozen_head,
    install_saved_frozen_head,
    kd_loss,
    ordinary_model,
)
from tresnet.training.optim import create_optimizer

pytestmark = pytest.mark.usefixtures("one_math_thread")

STUDENT = [[1.0, -0.5, 2.0, 0.3], [0.2, 0.1, -1.5, 3.0], [-2.0, 0.7, 0.4, 0.0]]
TEACHER = [[2.5, 0.5, -1.0, 0.0], [0.0, 1.2, -0.3, 2.2], [1.0, -1.0, 3.0, 0.5]]
HEAD = [[0.4, 0.4, 1.0, -2.0], [1.5, -0.7, 0.0, 0.9], [-0.1, 2.0, 0.8, -1.2]]
LABELS = [2, 3, 0]
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
ML_DECODER_OPTIONS = dict(embed_dim=32, ff_dim=64)  # small, 8 attention heads as a saved state assumes


# --- hand computations (plain Python floats, float64) -------------------------------------------------


def _softmax(row):
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return [e / sum(exps) for e in exps]


def _sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def _kd_multiclass(s, t, temperature):
    """T^2 KL(softmax(t / T) || softmax(s / T)), summed over the classes, averaged over the images."""
    total = 0.0
    for s_row, t_row in zip(s, t, strict=True):
        p = _softmax([v / temperature for v in t_row])
        q = _softmax([v / temperature for v in s_row])
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    return temperature ** 2 * total / len(s)


def _kd_multilabel(s, t, temperature):
    """T^2 times the mean over (image, class) of KL(Bernoulli(sigmoid(t / T)) || Bernoulli(sigmoid(s / T)))."""
    terms = []
    for s_row, t_row in zip(s, t, strict=True):
        for a, b in zip(s_row, t_row, strict=True):
            p, q = _sigmoid(b / temperature), _sigmoid(a / temperature)
            terms.append(p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q)))
    return temperature ** 2 * sum(terms) / len(terms)


def _cross_entropy(s, soft_targets):
    return -sum(sum(y * math.log(q) for y, q in zip(ys, _softmax(row), strict=True))
                for row, ys in zip(s, soft_targets, strict=True)) / len(s)


def _one_hot(labels, classes=4):
    return [[1.0 if c == label else 0.0 for c in range(classes)] for label in labels]


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


# --- losses --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.5, 4.0])
def test_kd_multiclass_is_the_softened_kl_from_the_teacher_summed_over_classes(temperature):
    expected = _kd_multiclass(STUDENT, TEACHER, temperature)
    assert abs(expected - _kd_multiclass(TEACHER, STUDENT, temperature)) > 0.01 * expected  # the direction shows
    got = kd_loss(_t(STUDENT), _t(TEACHER), temperature)
    assert got.dtype == torch.float32 and got.shape == ()
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert kd_loss(_t(TEACHER), _t(TEACHER), temperature).item() == pytest.approx(0.0, abs=1e-6)
    # bf16 logits are computed in float32
    assert kd_loss(_t(STUDENT).bfloat16(), _t(TEACHER), temperature).dtype == torch.float32


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_multilabel_is_the_mean_binary_kl_of_each_image_and_class(temperature):
    expected = _kd_multilabel(STUDENT, TEACHER, temperature)
    got = kd_loss(_t(STUDENT), _t(TEACHER), temperature, task="multilabel")
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert abs(expected - _kd_multiclass(STUDENT, TEACHER, temperature)) > 0.01 * expected
    assert kd_loss(_t(TEACHER), _t(TEACHER), temperature, task="multilabel").item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_the_temperature_softens_the_logits_and_scales_the_kl_by_its_square(task):
    hand = _kd_multilabel if task == "multilabel" else _kd_multiclass
    s, t = _t(STUDENT), _t(TEACHER)
    at_one = kd_loss(s, t, 1.0, task).item()
    # logits scaled by T at temperature T see the same softened distributions: only the T^2 factor remains
    assert kd_loss(3.0 * s, 3.0 * t, 3.0, task).item() == pytest.approx(9.0 * at_one, rel=1e-5)
    softened = hand([[v / 3.0 for v in r] for r in STUDENT], [[v / 3.0 for v in r] for r in TEACHER], 1.0)
    assert kd_loss(s, t, 3.0, task).item() == pytest.approx(9.0 * softened, rel=1e-5)


def test_kd_gradient_reaches_the_student_only_as_t_times_the_probability_gap():
    s, t = _t(STUDENT).requires_grad_(), _t(TEACHER).requires_grad_()
    temperature = 2.0
    kd_loss(s, t, temperature).backward()
    assert t.grad is None
    # d/ds of T^2 KL / N = T (softmax(s / T) - softmax(t / T)) / N
    expected = [[temperature * (q - p) / len(STUDENT) for q, p in zip(_softmax([v / temperature for v in sr]),
                                                                    _softmax([v / temperature for v in tr]),
                                                                    strict=True)]
                for sr, tr in zip(STUDENT, TEACHER, strict=True)]
    torch.testing.assert_close(s.grad, _t(expected), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="must have one shape"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)


def test_distillation_loss_adds_the_kd_terms_to_the_criterion():
    s, t, head, labels = _t(STUDENT), _t(TEACHER), _t(HEAD), torch.tensor(LABELS)
    ce = _cross_entropy(STUDENT, _one_hot(LABELS))
    kd = DistillationLoss(nn.CrossEntropyLoss(), task="multiclass", temperature=2.0, weight=0.5)
    assert kd(s, t, labels).item() == pytest.approx(ce + 0.5 * _kd_multiclass(STUDENT, TEACHER, 2.0), rel=1e-5)
    # th-kd: the pair (logits, teacher-head logits), soft (mixed) targets reaching the criterion only
    soft = [[0.7 * a + 0.3 * b for a, b in zip(x, y, strict=True)]
            for x, y in zip(_one_hot(LABELS), _one_hot([1, 0, 3]), strict=True)]
    th_kd = DistillationLoss(nn.CrossEntropyLoss(), task="multiclass", temperature=2.0, weight=0.5, head_weight=0.3)
    expected = (_cross_entropy(STUDENT, soft) + 0.5 * _kd_multiclass(STUDENT, TEACHER, 2.0)
                + 0.3 * _kd_multiclass(HEAD, TEACHER, 2.0))
    assert th_kd((s, head), t, _t(soft)).item() == pytest.approx(expected, rel=1e-5)
    only_head = DistillationLoss(nn.CrossEntropyLoss(), task="multiclass", temperature=2.0, weight=0.0)
    expected = ce + 0.02 * _kd_multiclass(HEAD, TEACHER, 2.0)  # the default head weight: the release's example
    assert only_head((s, head), t, labels).item() == pytest.approx(expected, rel=1e-5)
    no_head = DistillationLoss(nn.CrossEntropyLoss(), task="multiclass", weight=0.0, head_weight=0.0)
    assert no_head((s, head), t, labels).item() == pytest.approx(ce, rel=1e-6)
    # multilabel: binary KL terms beside a multilabel criterion
    multi_hot = [[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0]]
    bce = -sum(y * math.log(_sigmoid(v)) + (1 - y) * math.log(1 - _sigmoid(v))
               for row, ys in zip(STUDENT, multi_hot, strict=True) for v, y in zip(row, ys, strict=True)) / 12
    ml = DistillationLoss(nn.BCEWithLogitsLoss(), task="multilabel", temperature=4.0, weight=1.0, head_weight=2.0)
    expected = bce + _kd_multilabel(STUDENT, TEACHER, 4.0) + 2.0 * _kd_multilabel(HEAD, TEACHER, 4.0)
    assert ml((s, head), t, _t(multi_hot)).item() == pytest.approx(expected, rel=1e-5)


def test_the_blend_mixes_the_student_and_teacher_head_probabilities():
    class Pair(nn.Module):
        def forward(self, x):
            return _t(STUDENT), _t(HEAD)

    blended = BlendedStudent(Pair(), 0.25, "multiclass")(None)
    for row, s_row, h_row in zip(blended.exp().tolist(), STUDENT, HEAD, strict=True):
        mix = [0.75 * a + 0.25 * b for a, b in zip(_softmax(s_row), _softmax(h_row), strict=True)]
        assert row == pytest.approx(mix, rel=1e-5)
    blended = BlendedStudent(Pair(), 0.25, "multilabel")(None)
    for row, s_row, h_row in zip(torch.sigmoid(blended).tolist(), STUDENT, HEAD, strict=True):
        assert row == pytest.approx([0.75 * _sigmoid(a) + 0.25 * _sigmoid(b) for a, b in zip(s_row, h_row, strict=True)],
                                    rel=1e-5)
    assert BlendedStudent(Pair(), 0.0, "multiclass")(None).argmax(1).tolist() == _t(STUDENT).argmax(1).tolist()


# --- frozen heads and their projection ---------------------------------------------------------------


def _train_steps(net, params_of, steps=3):
    """A few SGD steps (with weight decay) on random data through ``net``; the optimiser's parameter ids."""
    optimizer = create_optimizer(net, "sgd", 0.1, weight_decay=0.1)
    loss_fn = DistillationLoss(nn.CrossEntropyLoss(), task="multiclass", temperature=2.0)
    gen = torch.Generator().manual_seed(0)
    net.train()
    for _ in range(steps):
        x = torch.rand(2, 3, 32, 32, generator=gen)
        loss = loss_fn(net(x), torch.randn(2, 3, generator=gen), torch.tensor([0, 2]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for param in params_of():
            assert param.grad is None
        optimizer.step()
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def test_th_kd_teacher_head_gets_no_gradient_stays_in_eval_mode_and_its_projection_learns():
    torch.manual_seed(0)
    teacher = tresnet.create_model("tresnet_m", num_classes=3)
    student = tresnet.create_model("genet_light", num_classes=3)
    head = ProjectedClassifier(classifier_of(teacher), student.num_features)
    assert isinstance(head.projection, nn.Linear) and head.projection.weight.shape == (2048, 1920)
    net = StudentWithTeacherHead(student, head)
    fc, projection = teacher.head.fc, {k: v.clone() for k, v in head.projection.state_dict().items()}
    with torch.no_grad():  # the pair: the student's logits, and the frozen fc on the projected pooled features
        x = torch.rand(2, 3, 32, 32)
        logits, head_logits = net.eval()(x)
        pooled = student.forward_features(x).mean((2, 3))
        torch.testing.assert_close(head_logits, fc(head.projection(pooled)))
        torch.testing.assert_close(logits, student(x))
    in_optimizer = _train_steps(net, lambda: list(head.classifier.parameters()))
    assert net.training and student.training and head.projection.training and not head.classifier.training
    assert {id(head.projection.weight), id(head.projection.bias)} <= in_optimizer
    assert not {id(p) for p in head.classifier.parameters()} & in_optimizer
    assert torch.equal(head.classifier.weight, fc.weight) and torch.equal(head.classifier.bias, fc.bias)
    assert not torch.equal(head.projection.weight, projection["weight"])
    assert not torch.equal(head.projection.bias, projection["bias"])


def test_sh_kd_installed_head_is_frozen_and_the_projection_learns():
    torch.manual_seed(0)
    source = tresnet.create_model("tresnet_m", num_classes=3)  # the student of sh-kd's first step
    model = tresnet.create_model("genet_light", num_classes=3)  # the teacher trained with its classifier
    shared = install_frozen_head(model, source)
    assert model.head.fc is shared and shared.projection.weight.shape == (2048, 1920)
    before = {k: v.clone() for k, v in shared.state_dict().items()}
    in_optimizer = _train_steps(model, lambda: list(shared.classifier.parameters()))
    assert model.training and not shared.classifier.training
    assert not {id(p) for p in shared.classifier.parameters()} & in_optimizer
    assert id(shared.projection.weight) in in_optimizer
    after = shared.state_dict()
    assert torch.equal(after["classifier.weight"], source.head.fc.weight)
    assert torch.equal(after["classifier.bias"], before["classifier.bias"])
    assert not torch.equal(after["projection.weight"], before["projection.weight"])
    with pytest.raises(ConfigError, match="the frozen head is an 'fc' head: train with --head fc"):
        install_frozen_head(tresnet.create_model("genet_light", num_classes=3, head="ml_decoder",
                                                 head_options=ML_DECODER_OPTIONS), source)


def test_folded_is_exact_and_needs_no_projection_when_the_widths_agree():
    torch.manual_seed(0)
    head = ProjectedClassifier(nn.Linear(6, 3).double(), 5)
    assert head.projection.weight.dtype == torch.float64
    x = torch.randn(4, 5, dtype=torch.float64)
    plain = folded(head)
    assert isinstance(plain, nn.Linear) and (plain.in_features, plain.out_features) == (5, 3)
    assert all(p.requires_grad for p in plain.parameters())
    torch.testing.assert_close(plain(x), head(x), rtol=1e-13, atol=1e-13)
    same = ProjectedClassifier(nn.Linear(5, 3), 5)
    assert isinstance(same.projection, nn.Identity)
    copied = folded(same)
    assert copied is not same.classifier and torch.equal(copied.weight, same.classifier.weight)
    assert copied.weight.requires_grad and not same.classifier.weight.requires_grad


@pytest.mark.parametrize("head", ["fc", "ml_decoder"])
def test_the_folded_model_is_an_ordinary_checkpoint_with_the_training_logits(head, tmp_path):
    torch.manual_seed(0)
    options = dict(head="ml_decoder", head_options=ML_DECODER_OPTIONS) if head == "ml_decoder" else {}
    source = tresnet.create_model("tresnet_m", num_classes=3, **options)
    model = randomize_norms(tresnet.create_model("genet_light", num_classes=3, **options))
    shared = install_frozen_head(model, source)
    assert isinstance(shared.projection, nn.Linear)
    x = torch.rand(2, 3, 32, 32)
    model.train()
    with torch.no_grad():  # no dropout in the frozen ML-Decoder: two passes in training mode agree
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
        model.eval()
        expected = model(x)
        plain = ordinary_model(model)
        assert not any(isinstance(m, ProjectedClassifier) for m in plain.modules())
        folded_head = plain.head if head == "ml_decoder" else plain.head.fc
        assert folded_head.in_features == model.num_features == 1920
        assert model.head is shared or model.head.fc is shared  # the training model keeps its head
        torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-5)
    reference = tresnet.create_model("genet_light", num_classes=3, **options)
    assert plain.state_dict().keys() == reference.state_dict().keys()
    assert all(plain.state_dict()[k].shape == v.shape for k, v in reference.state_dict().items())
    tresnet.save_checkpoint(plain, tmp_path / "folded.safetensors", class_names=["a", "b", "c"])
    loaded = tresnet.create_model(checkpoint_path=tmp_path / "folded.safetensors").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-5)
    assert ordinary_model(reference) is reference
    # a resumed run rebuilds the frozen head from the saved state alone
    fresh = tresnet.create_model("genet_light", num_classes=3, **options)
    rebuilt = install_saved_frozen_head(fresh, model.state_dict())
    assert isinstance(rebuilt, ProjectedClassifier) and rebuilt is (fresh.head if head == "ml_decoder" else fresh.head.fc)
    assert not any(p.requires_grad for p in rebuilt.classifier.parameters())
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), expected, rtol=0, atol=0)
    assert install_saved_frozen_head(reference, reference.state_dict()) is None


# --- the teacher ---------------------------------------------------------------------------------------


def test_the_frozen_teacher_sees_the_pixels_normalised_as_its_family_expects():
    torch.manual_seed(0)
    genet = randomize_norms(tresnet.create_model("genet_light", num_classes=3)).eval()
    tres = randomize_norms(tresnet.create_model("tresnet_m", num_classes=3)).eval()
    assert normalisation(tres.pretrained_cfg) is None and normalisation(genet.pretrained_cfg) == IMAGENET
    pixels = torch.rand(2, 3, 32, 32)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
    imagenet = (pixels - mean) / std
    with torch.no_grad():
        on_genet, on_tres = genet(imagenet), tres(pixels)
    # a TResNet student (RGB in [0, 1]) distilled from a GENet, and the reverse
    from_tres = FrozenTeacher(genet, None, IMAGENET)
    assert from_tres.renormalises
    torch.testing.assert_close(from_tres(pixels), on_genet, rtol=1e-4, atol=1e-4)
    assert (from_tres(pixels) - genet(pixels).detach()).abs().max() > 1e-2  # without it the logits differ
    from_genet = FrozenTeacher(tres, IMAGENET, None)
    torch.testing.assert_close(from_genet(imagenet), on_tres, rtol=1e-4, atol=1e-4)
    same = FrozenTeacher(genet, IMAGENET, IMAGENET)
    assert not same.renormalises and same.scale is None
    assert torch.equal(same(imagenet), on_genet)
    # frozen: eval mode in a training module, no gradient, the BN statistics unmoved
    stats = {k: v.clone() for k, v in genet.state_dict().items()}
    from_tres.train()
    assert from_tres.training and not genet.training
    out = from_tres(pixels.requires_grad_())
    assert not out.requires_grad and not any(p.requires_grad for p in genet.parameters())
    assert all(torch.equal(v, genet.state_dict()[k]) for k, v in stats.items())


def test_the_run_s_teacher_takes_the_student_s_inputs_on_the_run_s_device(tmp_path):
    names = ["a", "b", "c"]
    genet = randomize_norms(tresnet.create_model("genet_light", num_classes=3)).eval()
    tresnet.save_checkpoint(genet, tmp_path / "t.safetensors", class_names=names)
    cfg = build_config(None, {"data": "d", "output": "o", "model": "tresnet_m", "distill": "th-kd",
                              "teacher_checkpoint": str(tmp_path / "t.safetensors")})
    student = tresnet.create_model("tresnet_m", num_classes=3)  # takes RGB in [0, 1]
    on_cpu = create_distiller(cfg.distillation, "multiclass", names, student, nn.CrossEntropyLoss(), 32,
                              torch.device("cpu"))
    pixels = torch.rand(2, 3, 32, 32)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
    with torch.no_grad():
        torch.testing.assert_close(on_cpu.teacher(pixels), genet((pixels - mean) / std), rtol=1e-4, atol=1e-4)
    # the meta device stands in for a GPU: a buffer left on the CPU fails there as on CUDA
    distiller = create_distiller(cfg.distillation, "multiclass", names, student, nn.CrossEntropyLoss(), 32,
                                 torch.device("meta"))
    assert distiller.teacher.renormalises and distiller.teacher_name == "genet_light"
    out = distiller.teacher(torch.zeros(2, 3, 32, 32, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 3)
    assert distiller.teacher_head.projection.weight.device.type == "meta"
    assert distiller.criterion.head_weight == 0.02 and distiller.criterion.temperature == 4.0


def test_check_classes_wants_the_same_classes_in_the_same_order():
    check_classes({"num_classes": 3, "class_names": ["a", "b", "c"]}, ["a", "b", "c"], "t.pt", "teacher checkpoint")
    check_classes({}, ["a", "b"], "t.pt", "teacher checkpoint")  # a file that records nothing passes
    with pytest.raises(ConfigError, match="t.pt has 2 classes, the training data 3: the teacher must be trained"):
        check_classes({"num_classes": 2}, ["a", "b", "c"], "t.pt", "teacher checkpoint")
    with pytest.raises(ConfigError, match=r"other classes than the training data \(class 1: 'c', data: 'b'\)"):
        check_classes({"class_names": ["a", "c", "b"]}, ["a", "b", "c"], "t.pt", "teacher checkpoint")
    with pytest.raises(ConfigError, match="the student must be trained on the same classes"):
        check_classes({"class_names": ["a", "x"]}, ["a", "b"], "s.pt", "student checkpoint")
