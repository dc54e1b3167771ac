"""Distilled training runs (kd, th-kd, sh-kd): the teacher and the shared heads stay frozen while the projection
learns, resume is exact, the saved student is a plain model, bad input fails in one line, and distillation
works with bf16, channels-last, mixing, EMA, a multi-label task, every recipe and two DDP processes."""

from __future__ import annotations

import csv
import itertools
import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file

import tresnet
from helpers import randomize_norms, requires_sklearn
from training.train_testdata import (
    FAST,
    Killed,
    kill_mid_second_epoch,
    make_colour_mosaics,
    make_train_val,
    torchrun_train,
    weight_distance,
)
from tresnet.checkpoint import read_checkpoint_metadata
from tresnet.cli.main import main
from tresnet.errors import CheckpointError, ConfigError
from tresnet.tasks import get_task
from tresnet.training.config import build_config, load_recipe
from tresnet.training.distill import install_saved_frozen_head
from tresnet.training.trainer import train

GENET = {**FAST, "model": "genet_light"}
CLASSES = ["class_0", "class_1", "class_2"]
DIGITS = [str(d) for d in range(10)]
RECIPES = ["imagenet-paper", "imagenet-timm", "finetune", "highres-448", "finetune-genet",
           pytest.param("digits-demo", marks=requires_sklearn)]
ML_DECODER_OPTIONS = dict(embed_dim=32, ff_dim=64)
EMULATED_BF16 = "ignore:--precision .* computes in bfloat16"  # emulated (slow) on many CPUs, and train says so


pytestmark = pytest.mark.usefixtures("one_math_thread")


def _config(**options):
    return build_config(None, {**GENET, **options})


def _teacher_file(path, name, class_names, **options):
    """A checkpoint of an untrained teacher with random BN statistics (so that moving them would show)."""
    torch.manual_seed(len(class_names))
    tresnet.save_checkpoint(randomize_norms(tresnet.create_model(name, num_classes=len(class_names), **options)),
                            path, class_names=class_names)
    return path


def _rows(run):
    return list(csv.DictReader((run / "metrics.csv").open()))


def _same_files(a, b, names=("last.safetensors", "best.safetensors")):
    for name in names:
        x, y = load_file(str(a / name)), load_file(str(b / name))
        assert x.keys() == y.keys(), name
        assert all(torch.equal(x[k], y[k]) for k in x), name


def _resume_state(run):
    return torch.load(run / "resume.pt", weights_only=True)


def _plain_keys(tmp_path, name, **options):
    path = tmp_path / f"plain_{name}.safetensors"
    tresnet.save_checkpoint(tresnet.create_model(name, num_classes=3, **options), path)
    return load_file(str(path)).keys()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_train_val(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    return {name: _teacher_file(root / f"{name}.safetensors", name, CLASSES) for name in ("genet_light", "tresnet_m")}


def _spy(monkeypatch, seen: dict) -> None:
    """Catch the run's Distiller (its teacher head as built, the modes its frozen parts run in) and optimiser."""
    import tresnet.training.model_setup as train_module
    import tresnet.training.optimisation as optim

    make_distiller, make_optimizer = train_module.create_distiller, optim.create_optimizer
    seen["modes"] = []

    def record(module, args):
        seen["modes"].append(any(m.training for m in module.modules()))

    def distiller(*args, **kwargs):
        made = seen["distiller"] = make_distiller(*args, **kwargs)
        made.teacher.model.register_forward_pre_hook(record)
        if made.teacher_head is not None:
            seen["initial_head"] = {k: v.clone() for k, v in made.teacher_head.state_dict().items()}
            made.teacher_head.classifier.register_forward_pre_hook(record)
        return made

    def optimizer(*args, **kwargs):
        seen["optimizer"] = make_optimizer(*args, **kwargs)
        return seen["optimizer"]

    monkeypatch.setattr(train_module, "create_distiller", distiller)
    monkeypatch.setattr(optim, "create_optimizer", optimizer)


@pytest.fixture(scope="module")
def th_kd_run(folder, teachers, tmp_path_factory, one_math_thread):
    """One th-kd run of a GENet-light student (1920 features) from a TResNet-M teacher (2048), watched."""
    out = tmp_path_factory.mktemp("th_kd") / "run"
    seen = {"models": []}

    def keep_model(event, data):
        if event == "step":
            seen["models"].append(data["model"])

    with pytest.MonkeyPatch.context() as monkeypatch:
        _spy(monkeypatch, seen)
        summary = train(_config(data=str(folder), output=str(out), distill="th-kd", lr=1e-2,
                                teacher_checkpoint=str(teachers["tresnet_m"])), callback=keep_model)
    return SimpleNamespace(out=out, summary=summary, **seen)


# --- th-kd: what is frozen, what learns, what is saved ------------------------------------------------


def test_th_kd_leaves_the_teacher_and_its_head_as_they_were_and_trains_the_projection(th_kd_run, teachers):
    state = _resume_state(th_kd_run.out)
    saved, teacher_file = state["distill"], load_file(str(teachers["tresnet_m"]))
    assert saved["teacher_model"] == "tresnet_m" and saved["teacher"].keys() == teacher_file.keys()
    assert any(k.endswith("running_var") for k in teacher_file)  # BN statistics are among the tensors compared
    for key, value in teacher_file.items():
        assert torch.equal(saved["teacher"][key], value), key
    head, initial = saved["teacher_head"], th_kd_run.initial_head
    assert torch.equal(head["classifier.weight"], teacher_file["head.fc.weight"])
    assert torch.equal(head["classifier.bias"], teacher_file["head.fc.bias"])
    assert head["projection.weight"].shape == (2048, 1920)  # the widths differ: a learned projection
    assert not torch.equal(head["projection.weight"], initial["projection.weight"])
    assert not torch.equal(head["projection.bias"], initial["projection.bias"])
    distiller = th_kd_run.distiller
    trained = {id(p) for group in th_kd_run.optimizer.param_groups for p in group["params"]}
    projection, classifier = distiller.teacher_head.projection, distiller.teacher_head.classifier
    assert {id(projection.weight), id(projection.bias)} <= trained
    assert {id(p) for p in th_kd_run.models[-1].parameters()} <= trained
    frozen = list(itertools.chain(distiller.teacher.model.parameters(), classifier.parameters()))
    assert not {id(p) for p in frozen} & trained and all(p.grad is None for p in frozen)
    # both ran at each training step (and the teacher at validation), in eval mode only
    assert len(th_kd_run.modes) >= 4 and not any(th_kd_run.modes)
    summary = th_kd_run.summary
    assert summary["distill"] == "th-kd" and summary["teacher"] == "tresnet_m"
    assert 0.0 <= summary["teacher_top1"] <= 1.0 and summary["teacher_top1"] == state["teacher_score"]
    assert json.loads((th_kd_run.out / "summary.json").read_text())["teacher_top1"] == summary["teacher_top1"]
    assert _rows(th_kd_run.out)[0]["val_blend"] == ""  # no blend asked for


def test_the_saved_student_is_a_plain_model_with_the_trained_logits(th_kd_run, tmp_path):
    plain = _plain_keys(tmp_path, "genet_light")
    trained = th_kd_run.models[-1].eval()
    assert th_kd_run.summary["best_weights"] == "model" and th_kd_run.summary["best_epoch"] == 1
    x = torch.rand(2, 3, 32, 32)
    for name in ("best.safetensors", "last.safetensors"):
        assert load_file(str(th_kd_run.out / name)).keys() == plain, name
        model = tresnet.create_model(checkpoint_path=th_kd_run.out / name).eval()
        meta = read_checkpoint_metadata(th_kd_run.out / name)
        assert meta["model"] == "genet_light" and meta["class_names"] == CLASSES and model.num_classes == 3
        with torch.no_grad():
            torch.testing.assert_close(model(x), trained(x), rtol=1e-6, atol=1e-6)


def test_a_th_kd_run_resumed_after_a_kill_ends_as_an_uninterrupted_one(folder, teachers, tmp_path):
    teacher = tmp_path / "teacher.safetensors"
    shutil.copy(teachers["tresnet_m"], teacher)
    options = dict(data=str(folder), epochs=2, distill="th-kd", teacher_checkpoint=str(teacher), ema_decay=0.9,
                   mixup=0.2, drop_path=0.1, lr=1e-2, teacher_head_blend=0.5)
    straight = train(_config(output=str(tmp_path / "straight"), **options))
    with pytest.raises(Killed):
        train(_config(output=str(tmp_path / "killed"), **options), callback=kill_mid_second_epoch)
    teacher.unlink()  # the resumed run rebuilds its teacher from resume.pt
    resumed = train(_config(output=str(tmp_path / "killed"), resume=True, **options))
    _same_files(tmp_path / "straight", tmp_path / "killed")
    a, b = _resume_state(tmp_path / "straight"), _resume_state(tmp_path / "killed")
    pairs = [(a["model"], b["model"]), (a["ema"]["module"], b["ema"]["module"]),
             (a["distill"]["teacher_head"], b["distill"]["teacher_head"]), (a["distill"]["teacher"], b["distill"]["teacher"])]
    for x, y in pairs:  # the model, its EMA, the projection (and the frozen parts)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert not all(torch.equal(a["model"][k], a["ema"]["module"][k]) for k in a["model"])  # the EMA is its own
    assert resumed["best_top1"] == straight["best_top1"] and resumed["teacher_top1"] == straight["teacher_top1"]
    rows = _rows(tmp_path / "killed")
    assert [r["val_blend"] for r in rows] == [r["val_blend"] for r in _rows(tmp_path / "straight")]
    assert len(rows) == 2 and all(0.0 <= float(r["val_blend"]) <= 1.0 for r in rows)


# --- sh-kd ---------------------------------------------------------------------------------------------


def test_sh_kd_trains_with_the_students_frozen_head_and_saves_an_ordinary_teacher(folder, tmp_path):
    torch.manual_seed(0)
    source = tresnet.create_model("tresnet_m", num_classes=3)  # sh-kd's step 1: the student
    with torch.no_grad():
        source.head.fc.weight.normal_(0, 0.1)
    tresnet.save_checkpoint(source, tmp_path / "student.safetensors", class_names=CLASSES)
    seen = []

    def watch(event, data):
        if event == "step":
            head = data["model"].head.fc
            assert head.classifier.weight.grad is None and head.projection.weight.grad is not None
            seen.append({k: v.clone() for k, v in head.state_dict().items()})

    run = tmp_path / "teacher"
    summary = train(_config(data=str(folder), output=str(run), lr=1e-2,  # sh-kd's step 2: a GENet-light teacher
                            frozen_head_from=str(tmp_path / "student.safetensors")), callback=watch)
    assert summary["frozen_head_from"] == str(tmp_path / "student.safetensors") and len(seen) == 2
    for step in seen:
        assert torch.equal(step["classifier.weight"], source.head.fc.weight)
        assert torch.equal(step["classifier.bias"], source.head.fc.bias)
    assert seen[0]["projection.weight"].shape == (2048, 1920)
    assert not torch.equal(seen[0]["projection.weight"], seen[1]["projection.weight"])
    # the checkpoints are ordinary GENet-light files with the training model's logits
    state = _resume_state(run)["model"]
    training_model = tresnet.create_model("genet_light", num_classes=3)
    install_saved_frozen_head(training_model, state)
    training_model.load_state_dict(state)
    x = torch.rand(2, 3, 32, 32)
    plain = _plain_keys(tmp_path, "genet_light")
    for name in ("last.safetensors", "best.safetensors"):
        assert load_file(str(run / name)).keys() == plain, name
        loaded = tresnet.create_model(checkpoint_path=run / name).eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), training_model.eval()(x), rtol=1e-5, atol=1e-5)
    # sh-kd's step 3: the student distilled from that teacher
    student = train(_config(model="tresnet_m", data=str(folder), output=str(tmp_path / "student"), distill="kd",
                            teacher_checkpoint=str(run / "best.safetensors"), max_steps_per_epoch=1))
    assert student["teacher"] == "genet_light" and 0.0 <= student["teacher_top1"] <= 1.0


def test_an_sh_kd_run_with_an_ml_decoder_head_resumes_exactly(folder, tmp_path):
    source = tresnet.create_model("tresnet_m", num_classes=3, head="ml_decoder", head_options=ML_DECODER_OPTIONS)
    tresnet.save_checkpoint(source, tmp_path / "student.safetensors", class_names=CLASSES)
    options = dict(data=str(folder), epochs=2, max_steps_per_epoch=1, ema_decay=0.9, lr=1e-2,
                   frozen_head_from=str(tmp_path / "student.safetensors"))
    train(_config(output=str(tmp_path / "straight"), **options))
    with pytest.raises(Killed):
        train(_config(output=str(tmp_path / "killed"), **options), callback=kill_mid_second_epoch)
    train(_config(output=str(tmp_path / "killed"), resume=True, **options))
    _same_files(tmp_path / "straight", tmp_path / "killed")
    a, b = _resume_state(tmp_path / "straight"), _resume_state(tmp_path / "killed")
    assert a["model"]["head.projection.weight"].shape == (2048, 1920)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"]["module"][k], b["ema"]["module"][k]) for k in a["ema"]["module"])
    frozen = [k for k in a["model"] if k.startswith("head.classifier.")]
    assert frozen and all(torch.equal(a["model"][k], source.state_dict()[k.replace("classifier.", "", 1)])
                          for k in frozen)
    plain = _plain_keys(tmp_path, "genet_light", head="ml_decoder", head_options=ML_DECODER_OPTIONS)
    assert load_file(str(tmp_path / "killed" / "best.safetensors")).keys() == plain
    model = tresnet.create_model(checkpoint_path=tmp_path / "killed" / "best.safetensors")
    assert model.pretrained_cfg["head"] == "ml_decoder" and model.head.in_features == 1920


# --- bad input ----------------------------------------------------------------------------------------


def _one_line(error_type, match, action):
    with pytest.raises(error_type, match=match) as info:
        action()
    assert "\n" not in str(info.value)


def test_bad_teachers_fail_with_one_line_errors(folder, teachers, tmp_path, monkeypatch):
    def run(name, **options):
        return lambda: train(_config(data=str(folder), output=str(tmp_path / name), **options))

    _one_line(CheckpointError, "teacher checkpoint .*missing.safetensors does not exist: pass a weights file",
              run("a", distill="kd", teacher_checkpoint=str(tmp_path / "missing.safetensors")))
    _one_line(CheckpointError, r"does not exist \(it is a folder\)", run("b", distill="kd", teacher_checkpoint=str(folder)))
    _one_line(CheckpointError, r"holds a GENet \(genet_light\), the model is a TResNet \(tresnet_m\)",
              run("c", distill="kd", teacher="tresnet_m", teacher_checkpoint=str(teachers["genet_light"])))
    four = _teacher_file(tmp_path / "four.safetensors", "genet_light", [*CLASSES, "class_3"])
    _one_line(ConfigError, "teacher checkpoint .* has 4 classes, the training data 3: the teacher must be trained",
              run("d", distill="kd", teacher_checkpoint=str(four)))
    swapped = _teacher_file(tmp_path / "swapped.safetensors", "genet_light", ["class_0", "class_2", "class_1"])
    _one_line(ConfigError, r"other classes than the training data \(class 1: 'class_2', data: 'class_1'\)",
              run("e", distill="th-kd", teacher_checkpoint=str(swapped)))
    for variable in ("TRESNET_HOME", "HF_HUB_CACHE", "TORCH_HOME"):
        monkeypatch.setenv(variable, str(tmp_path / "empty_cache" / variable))
    _one_line(CheckpointError, r"no --teacher-checkpoint: no pretrained weights for genet_light\.idstcv_in1k on this "
              r"machine \(this package never downloads\)", run("f", distill="kd", teacher="genet_light"))
    other_student = _teacher_file(tmp_path / "other.safetensors", "genet_light", ["x", "y", "z"])
    _one_line(ConfigError, r"student checkpoint .*other.safetensors has other classes than the training data "
              r"\(class 0: 'x', data: 'class_0'\): the student must be trained", run("g", frozen_head_from=str(other_student)))
    _one_line(ConfigError, "has an 'fc' head, and --head is 'ml_decoder': the frozen head is the student's",
              run("h", head="ml_decoder", frozen_head_from=str(teachers["genet_light"])))
    _one_line(CheckpointError, r"student checkpoint \(--frozen-head-from\) .*gone.safetensors does not exist",
              run("i", frozen_head_from=str(tmp_path / "gone.safetensors")))
    assert not any((tmp_path / name / "resume.pt").exists() for name in "abcdefghi")


def test_a_teacher_or_student_of_the_other_task_is_a_one_line_error(folder, teachers, tmp_path):
    multilabel = _teacher_file(tmp_path / "ml.safetensors", "genet_light", CLASSES, task="multilabel")
    for distill in ("kd", "th-kd"):
        _one_line(ConfigError, r"teacher checkpoint .*ml\.safetensors is a multilabel model and this run's task is "
                  r"multiclass: the teacher must be trained for the same task \(with --task multiclass\)$",
                  lambda distill=distill: train(_config(data=str(folder), output=str(tmp_path / distill),
                                                        distill=distill, teacher_checkpoint=str(multilabel))))
    _one_line(ConfigError, r"student checkpoint .*ml\.safetensors is a multilabel model and this run's task is "
              r"multiclass: the student must be trained for the same task",
              lambda: train(_config(data=str(folder), output=str(tmp_path / "sh"), frozen_head_from=str(multilabel))))
    labels = make_colour_mosaics(tmp_path / "mosaics", count=8) / "labels.csv"
    multiclass = _teacher_file(tmp_path / "mc.safetensors", "genet_light", ["blue", "green", "red"])
    _one_line(ConfigError, r"teacher checkpoint .*mc\.safetensors is a multiclass model and this run's task is "
              r"multilabel: the teacher must be trained for the same task \(with --task multilabel\)$",
              lambda: train(_config(task="multilabel", data=str(labels), val_split=0.25, output=str(tmp_path / "ml"),
                                    distill="kd", teacher_checkpoint=str(multiclass))))
    assert not any(p.name == "resume.pt" for p in tmp_path.rglob("*"))


def test_distillation_options_that_do_not_go_together_are_refused():
    base = {"data": "d", "output": "o"}
    refused = [
        ({"distill": "kd"}, "--distill kd needs a teacher: pass --teacher-checkpoint FILE"),
        ({"teacher_checkpoint": "t.pt"}, "a teacher is given but no method: pass --distill kd or --distill th-kd"),
        ({"teacher": "tresnet_m"}, "a teacher is given but no method"),
        ({"distill": "kd", "teacher_checkpoint": "t.pt", "teacher_head_blend": 0.5},
         "teacher_head_blend blends in the teacher head of th-kd: pass --distill th-kd"),
        ({"teacher_head_blend": 0.5}, "teacher_head_blend blends in the teacher head of th-kd"),
        ({"distill": "th-kd", "teacher_checkpoint": "t.pt", "frozen_head_from": "s.pt"},
         "--frozen-head-from trains a teacher for sh-kd on the labels: drop --distill"),
        ({"distill": "kd", "teacher_checkpoint": "t.pt", "distill_temperature": 0},
         "distill_temperature must be positive"),
        ({"distill": "kd", "teacher_checkpoint": "t.pt", "distill_weight": -1}, "distill_weight must be 0 or more"),
        ({"distill": "th-kd", "teacher_checkpoint": "t.pt", "teacher_head_blend": 1.5},
         r"teacher_head_blend must lie in \[0, 1\]"),
        ({"distill": "dkd", "teacher_checkpoint": "t.pt"}, "dkd"),
    ]
    for options, match in refused:
        _one_line(ConfigError, match, lambda options=options: build_config(None, {**base, **options}))
    cfg = build_config(None, {**base, "distill": "th-kd", "teacher_checkpoint": "t.pt", "teacher_head_blend": 1.0})
    d = cfg.distillation
    assert (d.weight, d.temperature, d.teacher_head_weight) == (1.0, 4.0, 0.02)


def test_the_command_line_distils_and_refuses_a_method_without_a_teacher(folder, teachers, tmp_path, capsys,
                                                                         monkeypatch):
    out, seen = tmp_path / "cli", {}
    _spy(monkeypatch, seen)
    argv = ["train", "--model", "genet_light", "--data", str(folder), "--output", str(out), "--img-size", "32",
            "--batch-size", "4", "--epochs", "1", "--max-steps-per-epoch", "1", "--max-val-images", "8",
            "--no-progress", "--workers", "0", "--distill", "th-kd", "--teacher-checkpoint",
            str(teachers["tresnet_m"]), "--teacher-head-blend", "0.5", "--distill-temperature", "2",
            "--distill-weight", "0.7", "--teacher-head-weight", "0.5"]
    assert main(argv) == 0
    loss = seen["distiller"].criterion
    assert (loss.temperature, loss.weight, loss.head_weight, seen["distiller"].blend) == (2.0, 0.7, 0.5, 0.5)
    said = capsys.readouterr().out
    assert "distilling (th-kd, T 2, weight 0.7, teacher-head weight 0.5) from tresnet_m" in said
    assert "teacher tresnet_m: val top-1" in said and "blend top-1" in said
    saved = yaml.safe_load((out / "config.yaml").read_text())["distillation"]
    assert saved["method"] == "th-kd" and saved["teacher_checkpoint"] == str(teachers["tresnet_m"])
    assert (saved["temperature"], saved["weight"], saved["teacher_head_weight"],
            saved["teacher_head_blend"]) == (2.0, 0.7, 0.5, 0.5)
    assert 0.0 <= float(_rows(out)[0]["val_blend"]) <= 1.0
    # no teacher: the exit status of `tresnet train` (main's return value) and one line on stderr
    assert main(["train", "--data", str(folder), "--output", str(tmp_path / "refused"), "--distill", "kd"]) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tresnet train: error: --distill kd needs a teacher"), err
    assert "Traceback" not in err and not (tmp_path / "refused").exists()


# --- with the rest of training ------------------------------------------------------------------------


@pytest.mark.filterwarnings(EMULATED_BF16)
def test_th_kd_in_bf16(folder, teachers, tmp_path):
    summary = train(_config(data=str(folder), output=str(tmp_path / "run"), precision="bf16", distill="th-kd",
                            teacher_checkpoint=str(teachers["genet_light"]), max_steps_per_epoch=1, max_val_images=4))
    assert summary["precision"] == "bf16" and summary["teacher"] == "genet_light"
    assert math.isfinite(float(_rows(tmp_path / "run")[0]["train_loss"]))
    assert read_checkpoint_metadata(tmp_path / "run" / "best.safetensors")["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in load_file(str(tmp_path / "run" / "last.safetensors")).values()
               if v.is_floating_point())


def test_th_kd_with_channels_last_mixup_cutmix_and_ema(folder, teachers, tmp_path):
    run = tmp_path / "run"
    summary = train(_config(data=str(folder), output=str(run), distill="th-kd", channels_last=True, mixup=0.8,
                            cutmix=1.0, ema_decay=0.9, teacher_checkpoint=str(teachers["tresnet_m"])))
    (row,) = _rows(run)
    assert math.isfinite(float(row["train_loss"])) and row["ema_top1"] != "" and row["val_blend"] == ""
    state = _resume_state(run)
    assert state["distill"]["teacher_model"] == "tresnet_m" and summary["distill"] == "th-kd"
    assert state["distill"]["teacher_head"]["projection.weight"].shape == (2048, 1920)
    teacher = load_file(str(teachers["tresnet_m"]))
    assert all(torch.equal(state["distill"]["teacher"][k], v) for k, v in teacher.items())
    assert load_file(str(run / "best.safetensors")).keys() == state["ema"]["module"].keys()


def test_a_multilabel_th_kd_run_reports_the_blend(tmp_path, monkeypatch):
    seen = {}
    _spy(monkeypatch, seen)
    labels = make_colour_mosaics(tmp_path / "data", count=16) / "labels.csv"
    teacher = _teacher_file(tmp_path / "teacher.safetensors", "genet_light", sorted(["red", "green", "blue"]),
                            task="multilabel")
    run = tmp_path / "run"
    summary = train(_config(task="multilabel", data=str(labels), val_split=0.25, output=str(run), distill="th-kd",
                            teacher_checkpoint=str(teacher), teacher_head_blend=0.5, ema_decay=0.9, epochs=2,
                            max_steps_per_epoch=1))
    assert 0.0 <= summary["teacher_map"] <= 1.0 and "teacher_top1" not in summary
    assert seen["distiller"].criterion.task is get_task("multilabel") and not any(seen["modes"])
    rows = _rows(run)
    assert len(rows) == 2 and all(0.0 <= float(r["val_blend"]) <= 1.0 and r["val_map"] for r in rows)
    assert all(math.isfinite(float(r["train_loss"])) for r in rows)
    meta = read_checkpoint_metadata(run / "best.safetensors")
    assert meta["task"] == "multilabel" and meta["class_names"] == ["blue", "green", "red"]


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory):
    return _teacher_file(tmp_path_factory.mktemp("digits_teacher") / "digits.safetensors", "genet_light", DIGITS)


@pytest.mark.filterwarnings(EMULATED_BF16)
@pytest.mark.parametrize("recipe", RECIPES)
def test_each_recipe_distils_for_a_few_steps(recipe, folder, teachers, digits_teacher, tmp_path):
    # GENet-light student and teacher: three recipes compute in bf16, emulated (slow) on many CPUs
    digits = recipe == "digits-demo"
    teacher = digits_teacher if digits else teachers["genet_light"]
    cfg = build_config(recipe, {**GENET, "data": "digits" if digits else str(folder), "output": str(tmp_path / "run"),
                                "distill": "th-kd", "teacher_checkpoint": str(teacher), "max_steps_per_epoch": 1,
                                "max_val_images": 4})
    summary = train(cfg)
    assert summary["distill"] == "th-kd" and summary["teacher"] == "genet_light"
    assert 0.0 <= summary["teacher_top1"] <= 1.0 and math.isfinite(float(_rows(tmp_path / "run")[0]["train_loss"]))
    meta = read_checkpoint_metadata(tmp_path / "run" / "best.safetensors")
    assert meta["class_names"] == (DIGITS if digits else CLASSES) and meta["model"] == "genet_light"
    assert meta["precision"] == load_recipe(recipe).get("precision", "fp32") == summary["precision"]
    assert load_file(str(tmp_path / "run" / "best.safetensors")).keys() == _plain_keys(tmp_path, "genet_light")
    head = _resume_state(tmp_path / "run")["distill"]["teacher_head"]
    assert "classifier.weight" in head and "projection.weight" not in head  # one width: no projection


# --- DDP -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_th_kd_under_torchrun_equals_one_process(folder, teachers, tmp_path, monkeypatch):
    init = tmp_path / "init.safetensors"
    tresnet.save_checkpoint(tresnet.create_model("tresnet_m", num_classes=3), init)
    options = dict(model="tresnet_m", data=str(folder), img_size=32, epochs=1, max_steps_per_epoch=2,
                   max_val_images=8, optimizer="sgd", schedule="constant", lr=0.05, progress=False, workers=0,
                   deterministic=True, seed=0, init_checkpoint=str(init), distill="th-kd",
                   teacher_checkpoint=str(teachers["genet_light"]))
    threads, seen = torch.get_num_threads(), {}
    _spy(monkeypatch, seen)
    try:
        one = train(build_config(None, {**options, "batch_size": 8, "output": str(tmp_path / "one"), "threads": 1}))
    finally:
        torch.set_num_threads(threads)
    done = torchrun_train({**options, "batch_size": 4, "output": str(tmp_path / "two")})
    assert "x 2 processes" in done.stdout and done.stdout.count("distilling (th-kd") == 1  # said by rank 0
    start = load_file(str(init))
    a, b = load_file(str(tmp_path / "one" / "last.safetensors")), load_file(str(tmp_path / "two" / "last.safetensors"))
    assert a.keys() == b.keys()
    params = [k for k in a if a[k].is_floating_point() and not k.endswith(("running_mean", "running_var"))]
    # equal up to rounding, relative to the update: measured 6e-5 for the student (the teacher's logits on
    # batches of 4 and 8 round differently) and 2e-6 for the projection; without DDP's averaging it is 1.6
    assert weight_distance(a, b, params) < 1e-3 * weight_distance(a, start, params)
    head_a = _resume_state(tmp_path / "one")["distill"]["teacher_head"]
    head_b = _resume_state(tmp_path / "two")["distill"]["teacher_head"]
    projection = ["projection.weight", "projection.bias"]
    assert weight_distance(head_a, head_b, projection) < 1e-4 * weight_distance(head_a, seen["initial_head"], projection)
    assert torch.equal(head_a["classifier.weight"], head_b["classifier.weight"])
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["world_size"] == 2 and two["teacher_top1"] == one["teacher_top1"]
