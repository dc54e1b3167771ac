"""Detector export: TorchScript and ONNX files of torchvision's FCOS and RetinaNet on our backbones give the detector's
boxes at any image size, record the detector, and a broken file (its network, transform or post-processing) is
refused with nothing written."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import warnings

import pytest
import torch

import tresnet
from helpers import randomize_norms
from tresnet.checkpoint import save_checkpoint
from tresnet.cli.main import main
from tresnet.deploy import ExportError, ExportMismatchError, export_model
from tresnet.deploy.detection_export import (
    DETECTOR_METADATA,
    DetectorNetwork,
    compare_detections,
    detect_with,
    head_output_names,
    resize_rounds,
)
from tresnet.errors import ConfigError

pytest.importorskip("onnxruntime")


def _detector(name: str = "genet_light", head: str = "fcos", **options) -> torch.nn.Module:
    """A small detector whose head answers: random norms in the backbone, class logits spread wide enough that its
    boxes pass the threshold with scores that do not tie, and boxes large enough to overlap (for NMS to act)."""
    options.setdefault("train_norms", True)
    detector = tresnet.create_detector(name, head=head, num_classes=4, min_size=96, max_size=160, fpn_channels=64,
                                       score_threshold=0.3, **options)
    randomize_norms(detector.backbone.body, seed=3)
    with torch.no_grad():
        detector.head.classification_head.cls_logits.bias.fill_(0.0)
        detector.head.classification_head.cls_logits.weight.mul_(30.0)
        detector.head.regression_head.bbox_reg.bias.fill_(1.0)  # boxes twice their anchor: neighbours overlap
    return detector.eval()


@pytest.fixture(scope="module")
def fcos():
    return _detector()


def _images(*sizes: tuple[int, int]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    return [torch.rand(3, h, w, generator=gen) for h, w in sizes]


def _load_torchscript(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path)).eval()


def _same(got, expected) -> int:
    return compare_detections(got, expected, "test", "nowhere")  # raises when they differ


def test_torchscript_detector_gives_the_detectors_boxes(fcos, tmp_path):
    report = export_model(fcos, tmp_path / "det.pt", format="torchscript")
    assert report.max_rel_diff <= report.limit and report.boxes_checked > 0
    loaded = _load_torchscript(tmp_path / "det.pt")
    assert loaded.score_thresh == pytest.approx(0.3) and loaded.nms_thresh == pytest.approx(fcos.nms_thresh)
    images = _images((96, 96), (96, 160))  # the detector's own size: its resize is the identity in both
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _, got = loaded(images)
        expected = fcos(images)
    assert sum(len(d["boxes"]) for d in expected) > 0
    _same(got, expected)
    extra = {f"{DETECTOR_METADATA}.json": ""}
    torch.jit.load(str(tmp_path / "det.pt"), _extra_files=extra)
    recorded = json.loads(extra[f"{DETECTOR_METADATA}.json"])
    assert recorded["head"] == "fcos" and recorded["network"]["num_classes"] == 4


def test_onnx_detector_takes_one_image_of_any_size_and_a_threshold(fcos, tmp_path):
    import onnx
    import onnxruntime as ort

    report = export_model(fcos, tmp_path / "det.onnx", format="onnx")
    assert report.format == "onnx" and report.takes == "one image of any size"
    session = ort.InferenceSession(str(tmp_path / "det.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "score_threshold"]
    for image in _images((96, 96), (96, 144), (64, 96)):  # the last one is resized (to 96 x 144) by the file
        boxes, scores, labels = session.run(None, {"image": image.numpy(),
                                                   "score_threshold": torch.tensor(0.3).numpy()})
        with torch.no_grad():
            expected = fcos([image])
        got = [{"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(scores),
                "labels": torch.from_numpy(labels)}]
        assert len(expected[0]["boxes"]) > 0
        _same(got, expected)
        assert (boxes[:, 2] <= image.shape[2] + 1e-3).all()  # in the image's own pixels
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "det.onnx")).metadata_props}
    assert json.loads(props[DETECTOR_METADATA])["network"]["score_threshold"] == pytest.approx(0.3)


def test_retinanet_on_tresnet_exports_with_its_norms_folded(tmp_path):
    detector = _detector("tresnet_m", head="retinanet")
    report = export_model(detector, tmp_path / "retina.pt", format="torchscript")
    assert report.fused and report.max_rel_diff <= report.limit
    assert head_output_names(detector) == ("cls_logits", "bbox_regression")


def test_unfused_detector_with_frozen_norms_exports(tmp_path):
    detector = _detector(train_norms=False)
    report = export_model(detector, tmp_path / "det.pt", format="torchscript", fused=False)
    assert not report.fused and report.max_rel_diff <= report.limit


def test_detect_with_the_detectors_own_network_is_its_forward(fcos):
    images = _images((96, 96), (96, 128))
    with torch.no_grad():
        network = DetectorNetwork(fcos)
        _same(detect_with(fcos, network, images), fcos(images))


def _break(monkeypatch, change) -> None:
    """The prepared (exported) copy of the detector gets ``change``; the reference stays as it was."""
    module = sys.modules["tresnet.deploy.detection_export"]
    real_fuse = module.fuse

    def broken_fuse(model):
        prepared = real_fuse(model)
        change(prepared)
        return prepared

    monkeypatch.setattr(module, "fuse", broken_fuse)


def _nudge_head(prepared) -> None:
    with torch.no_grad():
        prepared.head.regression_head.bbox_reg.weight.mul_(1.05)


def _halve_std(prepared) -> None:
    prepared.transform.image_std = [s / 2 for s in prepared.transform.image_std]


def _nms(prepared) -> None:
    prepared.nms_thresh = 0.2


@pytest.mark.parametrize("change, format, part", [
    (_nudge_head, "torchscript", "too far to be rounding"), (_halve_std, "onnx", "post-processing gives other boxes"),
    (_nms, "torchscript", "post-processing gives other boxes"), (_nms, "onnx", "post-processing gives other boxes"),
], ids=["network", "transform", "post-processing", "onnx-post-processing"])
def test_a_broken_file_is_refused_and_nothing_is_written(fcos, monkeypatch, tmp_path, change, format, part):
    _break(monkeypatch, change)
    with pytest.raises(ExportMismatchError, match=f"{part}.*nothing was written"):
        export_model(fcos, tmp_path / "det.out", format=format)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("options, message", [
    (dict(number_format="fp16"), "fp32 only"),
    (dict(dynamic_batch=True), "any size and number"),
    (dict(img_size=128), "resizes each image itself"),
    (dict(format="onnx", opset=10), "opset 11"),
])
def test_options_a_detector_file_does_not_take(fcos, tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        export_model(fcos, tmp_path / "det.out", **{"format": "torchscript", **options})


def test_a_size_whose_exported_resize_rounds_is_refused(tmp_path):
    detector = tresnet.create_detector("genet_light", num_classes=2, min_size=107, fpn_channels=64)
    with pytest.raises(ConfigError, match="min_size 107: .*multiple of 32"):
        export_model(detector, tmp_path / "det.pt", format="torchscript")
    assert not resize_rounds(800) and not resize_rounds(128)


def test_a_runtime_refusal_is_one_export_error(fcos, monkeypatch, tmp_path):
    module = sys.modules["tresnet.deploy.detection_export"]

    def refuse(*args, **kwargs):
        raise RuntimeError("first line\nunsupported operator")

    monkeypatch.setattr(module, "_script", refuse)
    with pytest.raises(ExportError, match="torchscript export of the FCOS detector failed: unsupported operator"):
        export_model(fcos, tmp_path / "det.pt", format="torchscript")


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_export_command_writes_a_detector_checkpoint(fcos, tmp_path):
    checkpoint = tmp_path / "det.safetensors"
    save_checkpoint(fcos, checkpoint, class_names=["a", "b", "c", "d"])
    code, out, err = _run("export", "--checkpoint", str(checkpoint), "--task", "detection", "--format", "onnx",
                          "--output", str(tmp_path / "det.onnx"))
    assert code == 0, err
    assert "one image of any size" in out and (tmp_path / "det.onnx").is_file()
    code, _, err = _run("export", "--checkpoint", str(checkpoint), "--task", "multiclass", "--format", "onnx",
                        "--output", str(tmp_path / "x.onnx"))
    assert code != 0 and "holds a detection model" in err and "Traceback" not in err
    code, _, err = _run("export", "--model", "genet_light", "--task", "detection", "--format", "torchscript",
                        "--output", str(tmp_path / "x.pt"))
    assert code != 0 and "not a detection network" in err and "Traceback" not in err
