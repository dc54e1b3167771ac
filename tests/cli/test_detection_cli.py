"""`--task detection` in validate and predict: validate's AP is pycocotools' on the detections file it writes (gapped
category ids, an image without boxes), predict prints, writes and draws boxes, and bad input fails in one line."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tresnet
from helpers import randomize_norms
from tresnet.checkpoint import save_checkpoint
from tresnet.cli.main import main

CATEGORIES = [{"id": 3, "name": "red"}, {"id": 7, "name": "green"}, {"id": 90, "name": "blue"}]
COLOURS = {3: (230, 40, 40), 7: (40, 230, 40), 90: (40, 40, 230)}


def _coco_folder(root: Path) -> tuple[Path, Path]:
    """Five images of coloured squares with their boxes (category ids 3, 7, 90: gapped), the last without any; a
    crowd box and areas unlike w * h, as COCO's segmentation areas are."""
    rng = np.random.default_rng(0)
    images, annotations = [], []
    (root / "img").mkdir(parents=True)
    for index in range(5):
        pixels = rng.integers(0, 60, (72, 96, 3), dtype=np.uint8)
        for k, category in enumerate((3, 7, 90)[: 0 if index == 4 else 1 + index % 3]):
            x, y, side = 4 + 30 * k, int(rng.integers(2, 40)), int(rng.integers(14, 28))
            pixels[y:y + side, x:x + side] = COLOURS[category]
            annotations.append({"id": len(annotations) + 1, "image_id": 10 + index, "category_id": category,
                                "bbox": [x, y, side, side], "area": 0.8 * side * side, "iscrowd": int(k == 2)})
        Image.fromarray(pixels).save(root / "img" / f"{index}.png")
        images.append({"id": 10 + index, "file_name": f"{index}.png", "width": 96, "height": 72})
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return root / "img", path


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    images, annotations = _coco_folder(root)
    detector = tresnet.create_detector("genet_light", num_classes=3, min_size=64, fpn_channels=64, train_norms=True,
                                       score_threshold=0.05)
    randomize_norms(detector.backbone.body, seed=5)
    with torch.no_grad():  # a head that answers: its boxes pass the score threshold
        detector.head.classification_head.cls_logits.bias.fill_(0.0)
    checkpoint = root / "det.safetensors"
    save_checkpoint(detector, checkpoint, class_names=[c["name"] for c in CATEGORIES])
    return images, annotations, checkpoint


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _pycocotools(annotations: Path, detections: Path) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(annotations))
        evaluation = COCOeval(truth, truth.loadRes(str(detections)), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return [float(v) for v in evaluation.stats]


def test_validate_gives_pycocotools_figures_on_the_file_it_writes(coco, tmp_path):
    images, annotations, checkpoint = coco
    detections, report = tmp_path / "dets.json", tmp_path / "report.json"
    code, out, _ = _run("validate", "--data", images, "--annotations", annotations, "--checkpoint", checkpoint,
                        "--detections", detections, "--json", report, "--no-progress", "--workers", "0")
    assert code == 0 and "AP " in out and "AR100" in out
    results = json.loads(detections.read_text())
    assert results and {r["category_id"] for r in results} <= {3, 7, 90}
    assert {r["image_id"] for r in results} <= {10, 11, 12, 13, 14}
    reported = json.loads(report.read_text())
    assert reported["task"] == "detection" and reported["images"] == 5 and reported["detections_file"] == str(detections)
    names = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar1", "ar10", "ar100", "ar_small",
             "ar_medium", "ar_large")
    expected = _pycocotools(annotations, detections)
    assert [reported[name] for name in names] == [100 * v if v >= 0 else v for v in expected]


def test_predict_prints_writes_and_draws_boxes(coco, tmp_path):
    images, _, checkpoint = coco
    drawn, report = tmp_path / "drawn", tmp_path / "predictions.json"
    code, out, err = _run("predict", images, "--checkpoint", checkpoint, "--threshold", "0.05", "--json", report,
                          "--save-images", drawn)
    assert code == 0 and "objects (score > 0.05)" in out
    predictions = json.loads(report.read_text())
    assert predictions["task"] == "detection" and predictions["threshold"] == 0.05
    first = predictions["predictions"][0]
    assert first["boxes"] and set(first["boxes"][0]) == {"index", "label", "score", "box"}
    assert first["boxes"][0]["label"] in ("red", "green", "blue")
    pictures = sorted(drawn.glob("*.png"))
    assert len(pictures) == 5 and Image.open(pictures[0]).size == (96, 72)
    assert not np.array_equal(np.asarray(Image.open(pictures[0])), np.asarray(Image.open(images / "0.png")))


def test_bad_detection_input_fails_in_one_line(coco, tmp_path):
    images, annotations, checkpoint = coco
    classifier = tmp_path / "classifier.safetensors"
    save_checkpoint(tresnet.create_model("genet_light", num_classes=3), classifier)
    code, _, err = _run("validate", "--data", images, "--annotations", annotations, "--checkpoint", classifier,
                        "--task", "detection")
    assert code != 0 and "holds a multiclass model" in err and err.count("\n") == 1
    code, _, err = _run("validate", "--data", images, "--annotations", annotations, "--checkpoint", checkpoint,
                        "--task", "multilabel")
    assert code != 0 and "detection" in err and err.count("\n") == 1
    code, _, err = _run("predict", images, "--checkpoint", classifier, "--save-images", tmp_path / "x")
    assert code != 0 and "--save-images draws a detector's boxes" in err
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"images": []}))
    code, _, err = _run("validate", "--data", images, "--annotations", broken, "--checkpoint", checkpoint)
    assert code != 0 and "broken.json" in err and err.count("\n") == 1
    code, _, err = _run("validate", "--data", images, "--annotations", annotations, "--checkpoint", checkpoint,
                        "--number-format", "bf16")
    assert code != 0 and "runs in fp32" in err
