"""The detector forms of the benchmark (NAME:fcos, NAME:retinanet) and `tresnet benchmark --task detection`: our
backbones and torchvision's ResNet-50 reference built the same way, timed on random boxes in both modes."""

from __future__ import annotations

import argparse

import pytest
import torch

from helpers import tiny_bench_config
from tresnet.bench import list_forms, run_benchmark
from tresnet.bench.detectors import detector_builder
from tresnet.bench.forms import get_form
from tresnet.bench.specs import BuildOptions, parse_model_spec
from tresnet.cli.benchmark import _models_of
from tresnet.errors import ConfigError
from tresnet.layers import FrozenNormAct


def test_the_detector_forms_are_builtin_for_every_mode():
    assert {"fcos", "retinanet"} <= set(list_forms())
    assert set(get_form("fcos").modes) == {"infer", "train"} and get_form("fcos").task == "detection"


def test_ours_and_torchvisions_reference_are_built_the_same_way():
    options = BuildOptions(device=torch.device("cpu"), img_size=96)
    ours = detector_builder("fcos")(parse_model_spec("genet_light:fcos"), options)
    reference = detector_builder("fcos")(parse_model_spec("resnet50:fcos"), options)
    for detector in (ours, reference):
        assert detector.transform.min_size == (96,) and detector.transform.max_size == 96
        assert detector.backbone.out_channels == 256 and detector.num_classes == 80
    assert any(isinstance(m, FrozenNormAct) for m in ours.backbone.body.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in reference.backbone.body.modules())
    frozen = {name.split(".")[0] for name, p in reference.backbone.body.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "layer1"}  # torchvision's trainable_backbone_layers=3


@pytest.mark.slow
def test_detector_rows_are_timed_in_both_modes_without_a_classifiers_top1():
    ours, reference = run_benchmark(tiny_bench_config("genet_light:fcos,resnet50:fcos", mode="both"))
    for row in (ours, reference):
        assert row.infer.img_per_s > 0 and row.train.img_per_s > 0 and row.top1 is None and row.gmacs > 0
    assert ours.form == "fcos" and ours.params_m < reference.params_m


def test_task_detection_puts_each_model_in_its_heads_form():
    def args(**given):
        return argparse.Namespace(**{"models": "tresnet_m,genet_normal,resnet50", "task": None, "head": None, **given})

    assert _models_of(args(task="detection")) == "tresnet_m:fcos,genet_normal:fcos,resnet50:fcos"
    assert _models_of(args(task="detection", head="retinanet")).endswith("resnet50:retinanet")
    assert _models_of(args()) == "tresnet_m,genet_normal,resnet50"
    with pytest.raises(ConfigError, match="names a form already"):
        _models_of(args(task="detection", models="tresnet_m:fused"))
    with pytest.raises(ConfigError, match="pass --task detection too"):
        _models_of(args(head="fcos"))
    with pytest.raises(ConfigError, match="reference is torchvision's ResNet"):
        run_benchmark(tiny_bench_config("efficientnet_b0:fcos"))
