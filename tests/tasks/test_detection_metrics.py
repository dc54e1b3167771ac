"""tresnet.tasks.detection_metrics against pycocotools run on json files: the 12 COCOeval numbers equal exactly
(gapped category ids, a negative image, a crowd object, areas that differ from w * h, jittered boxes, false
positives); perfect and missing predictions; the category id mapping; merging the records of several processes,
and the gather over two gloo processes."""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch

from tresnet.collectives import DistInfo
from tresnet.errors import ConfigError, DataError, MissingDependencyError
from tresnet.tasks.detection_metrics import (
    DetectionRecords,
    DetectionScores,
    DetectionTally,
    _gather,
    _merge,
    coco_ground_truth,
    coco_results,
    coco_stats,
    write_results,
)

pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

CATEGORY_IDS = [1, 5, 90]  # gapped, as COCO's
CLASSES = ["person", "car", "toothbrush"]
NEGATIVE_IMAGE = 13


def _quarter(value: float) -> float:
    # multiples of 1/4 are exact in float32, so boxes survive the XYXY tensors of the targets unchanged
    return round(value * 4) / 4


def _ground_truth(seed: int = 0) -> dict:
    """A COCO ground-truth dict: 10 images (ids with gaps, one without objects), objects of every size, one
    crowd, annotation ids that do not start at 1, areas below w * h (as segmentation areas are)."""
    g = torch.Generator().manual_seed(seed)
    image_ids = [3, 7, 8, NEGATIVE_IMAGE, 21, 22, 40, 41, 57, 99]
    annotations, next_id = [], 501
    for image_id in image_ids:
        if image_id == NEGATIVE_IMAGE:
            continue
        for _ in range(int(torch.randint(1, 6, (), generator=g))):
            side = float(torch.tensor([12.0, 60.0, 180.0])[torch.randint(0, 3, (), generator=g)])  # S, M, L
            w = _quarter(side * (0.6 + 0.8 * float(torch.rand((), generator=g))))
            h = _quarter(side * (0.6 + 0.8 * float(torch.rand((), generator=g))))
            x, y = _quarter(float(torch.rand((), generator=g)) * 400), _quarter(float(torch.rand((), generator=g)) * 300)
            category = CATEGORY_IDS[int(torch.randint(0, 3, (), generator=g))]
            area = round(w * h * 0.8 * 2) / 2  # a segmentation's area: smaller than its box, exact in float32
            annotations.append({"id": next_id, "image_id": image_id, "category_id": category, "bbox": [x, y, w, h],
                                "area": area, "iscrowd": 0})
            next_id += 3
    annotations[2]["iscrowd"] = 1
    return {"images": [{"id": i, "width": 640, "height": 480} for i in image_ids], "annotations": annotations,
            "categories": [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, CLASSES, strict=True)]}


def _targets(gt: dict) -> list[dict]:
    """The data set's targets of ``gt``: XYXY float32 boxes, class indices, area and iscrowd tensors."""
    targets = []
    for image in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                             dtype=torch.float32).reshape(-1, 4)
        targets.append({"boxes": boxes, "labels": torch.tensor([CATEGORY_IDS.index(a["category_id"]) for a in anns],
                                                               dtype=torch.int64),
                        "image_id": image["id"], "area": torch.tensor([a["area"] for a in anns], dtype=torch.float32),
                        "iscrowd": torch.tensor([a["iscrowd"] for a in anns], dtype=torch.int64)})
    return targets


def _predictions(targets: list[dict], seed: int = 0) -> list[dict]:
    """Imperfect detections: most objects found with jittered boxes (some with the wrong class), some missed,
    false positives on every image (the negative one too), scores of every level, a few tied."""
    g = torch.Generator().manual_seed(seed)
    outputs = []
    for target in targets:
        n = len(target["boxes"])
        found = torch.rand(n, generator=g) < 0.8
        boxes = target["boxes"][found]
        sizes = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        boxes = boxes + sizes * 0.15 * torch.randn(boxes.shape, generator=g)
        labels = target["labels"][found].clone()
        wrong = torch.rand(len(labels), generator=g) < 0.15
        labels[wrong] = (labels[wrong] + 1) % len(CATEGORY_IDS)
        extra = int(torch.randint(1, 4, (), generator=g))
        corner = torch.rand(extra, 2, generator=g) * 400
        false_boxes = torch.cat([corner, corner + 10 + torch.rand(extra, 2, generator=g) * 150], dim=1)
        scores = torch.rand(len(boxes) + extra, generator=g)
        scores[:2] = 0.5  # a tie
        outputs.append({"boxes": torch.cat([boxes, false_boxes]).float(), "scores": scores,
                        "labels": torch.cat([labels, torch.randint(0, 3, (extra,), generator=g)])})
    return outputs


def _tally(outputs: list[dict], targets: list[dict], batch: int = 3) -> DetectionTally:
    tally = DetectionTally("cpu", CATEGORY_IDS, CLASSES)
    for start in range(0, len(targets), batch):
        tally.add(outputs[start:start + batch], targets[start:start + batch])
    return tally


def _pycocotools_on_files(gt_file: str, results_file: str) -> tuple[tuple[float, ...], list[str]]:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_file)
        dt = gt.loadRes(results_file)
        evaluation = COCOeval(gt, dt, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        evaluation.summarize()
    return tuple(float(s) for s in evaluation.stats), printed.getvalue().splitlines()


@pytest.mark.parametrize("seed", [0, 1])
def test_the_tally_gives_exactly_what_pycocotools_gives_on_the_json_files(tmp_path, seed):
    gt = _ground_truth(seed)
    targets = _targets(gt)
    outputs = _predictions(targets, seed)
    tally = _tally(outputs, targets)
    scores = tally.result(seconds=2.0)

    gt_file, results_file = tmp_path / "instances.json", tmp_path / "results.json"
    gt_file.write_text(json.dumps(gt))
    write_results(results_file, coco_results(outputs, [t["image_id"] for t in targets], CATEGORY_IDS))
    expected, printed = _pycocotools_on_files(str(gt_file), str(results_file))

    assert scores.stats == expected
    assert 0 < scores.ap < 1 and all(s != -1 for s in expected)  # imperfect, and every size has objects
    assert scores.summary_lines() == printed
    assert scores.images == len(gt["images"]) == 10 and scores.skipped == 0
    assert tally.evaluated is not None and json.loads(results_file.read_text()) == tally.evaluated.results


def test_perfect_predictions_give_ap_1():
    gt = _ground_truth()
    for a in gt["annotations"]:
        a["iscrowd"] = 0
    targets = _targets(gt)
    outputs = [{"boxes": t["boxes"], "scores": torch.linspace(1.0, 0.5, len(t["boxes"])), "labels": t["labels"]}
               for t in targets]
    scores = _tally(outputs, targets).result(seconds=1.0)
    assert scores.ap == scores.ap50 == scores.ap75 == scores.score == 1.0
    assert scores.ap_small == scores.ap_medium == scores.ap_large == 1.0
    assert scores.ar100 == 1.0


def _nothing_found(targets: list[dict]) -> list[dict]:
    return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
            for _ in targets]


def test_no_predictions_give_ap_0_and_minus_1_where_there_is_no_ground_truth():
    gt = _ground_truth()
    gt["annotations"] = [a for a in gt["annotations"] if a["area"] > 96 ** 2]  # large objects only
    targets = _targets(gt)
    scores = _tally(_nothing_found(targets), targets).result(seconds=1.0)
    assert scores.ap == scores.ap50 == scores.ap75 == scores.ap_large == 0.0
    assert scores.ar1 == scores.ar10 == scores.ar100 == scores.ar_large == 0.0
    assert scores.ap_small == scores.ap_medium == scores.ar_small == scores.ar_medium == -1.0


def test_only_negative_images_give_minus_1_with_or_without_detections():
    targets = [{"boxes": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64), "image_id": i,
                "area": torch.zeros(0), "iscrowd": torch.zeros(0, dtype=torch.int64)} for i in (1, 2)]
    assert _tally(_nothing_found(targets), targets).result(1.0).stats == (-1.0,) * 12
    found = [{"boxes": torch.tensor([[1.0, 2.0, 30.0, 40.0]]), "scores": torch.tensor([0.9]),
              "labels": torch.tensor([1])}, _nothing_found(targets)[0]]
    tally = _tally(found, targets)
    assert tally.images == 2 and tally.result(1.0).stats == (-1.0,) * 12


def test_coco_results_map_class_indices_to_the_original_category_ids():
    outputs = [{"boxes": torch.tensor([[10.0, 20.0, 40.5, 60.25], [0.0, 0.0, 1.0, 2.0], [5.0, 5.0, 6.0, 7.0]]),
                "scores": torch.tensor([0.75, 0.5, 0.125]), "labels": torch.tensor([0, 2, 1])},
               {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}]
    results = coco_results(outputs, [42, torch.tensor(43)], CATEGORY_IDS)
    assert results == [
        {"image_id": 42, "category_id": 1, "bbox": [10.0, 20.0, 30.5, 40.25], "score": 0.75},
        {"image_id": 42, "category_id": 90, "bbox": [0.0, 0.0, 1.0, 2.0], "score": 0.5},
        {"image_id": 42, "category_id": 5, "bbox": [5.0, 5.0, 1.0, 2.0], "score": 0.125},
    ]
    assert all(type(v) is float for r in results for v in [*r["bbox"], r["score"]])
    assert all(type(r["image_id"]) is int and type(r["category_id"]) is int for r in results)


def test_coco_results_keep_full_precision():
    box = torch.tensor([[1.1, 2.2, 3.3, 4.4]])  # float32 values that are not short decimals
    entry = coco_results([{"boxes": box, "scores": torch.tensor([0.1]), "labels": torch.tensor([0])}], [1],
                         CATEGORY_IDS)[0]
    x1, y1, x2, y2 = box.double()[0].tolist()
    assert entry["bbox"] == [x1, y1, x2 - x1, y2 - y1] and entry["score"] == torch.tensor(0.1).item()


@pytest.mark.parametrize("label", [3, -1])
def test_a_label_outside_the_categories_is_a_one_line_data_error(label):
    output = {"boxes": torch.ones(1, 4), "scores": torch.ones(1), "labels": torch.tensor([label])}
    with pytest.raises(DataError, match=f"class index {label} outside the 3 classes") as info:
        coco_results([output], [7], CATEGORY_IDS)
    assert "\n" not in str(info.value)
    target = {"boxes": torch.ones(1, 4), "labels": torch.tensor([label]), "image_id": 7}
    tally = DetectionTally("cpu", CATEGORY_IDS, CLASSES)
    with pytest.raises(DataError, match="the target of image 7"):
        tally.add(_nothing_found([target]), [target])
    assert tally.images == 0 and tally.records.results == []  # nothing of a bad batch is kept


def test_misuse_is_named():
    with pytest.raises(DataError, match="2 detector outputs for 1 image ids"):
        coco_results(_nothing_found([{}, {}]), [1], CATEGORY_IDS)
    with pytest.raises(DataError, match=r"the boxes of image 1 has shape \(2, 3\)"):
        coco_results([{"boxes": torch.ones(2, 3), "scores": torch.ones(2), "labels": torch.zeros(2)}], [1],
                     CATEGORY_IDS)
    with pytest.raises(DataError, match="2 boxes, 1 scores"):
        coco_results([{"boxes": torch.ones(2, 4), "scores": torch.ones(1), "labels": torch.zeros(2)}], [1],
                     CATEGORY_IDS)
    with pytest.raises(ConfigError, match="3 category ids for 2 classes"):
        DetectionTally("cpu", CATEGORY_IDS, CLASSES[:2])
    with pytest.raises(ConfigError, match="repeat"):
        DetectionTally("cpu", [1, 1, 2], CLASSES)
    with pytest.raises(DataError, match="nothing was evaluated"):
        DetectionTally("cpu", CATEGORY_IDS, CLASSES).result(1.0)


def test_targets_without_area_or_iscrowd_use_the_box_area_and_no_crowd():
    target = {"boxes": torch.tensor([[0.0, 0.0, 4.0, 8.0]]), "labels": torch.tensor([2]), "image_id": 5}
    tally = DetectionTally("cpu", CATEGORY_IDS, CLASSES)
    tally.add(_nothing_found([target]), [target])
    assert tally.records.annotations == [{"image_id": 5, "category_id": 90, "bbox": [0.0, 0.0, 4.0, 8.0],
                                          "area": 32.0, "iscrowd": 0}]


def test_scores_dict_stats_lines_and_postfix():
    gt = _ground_truth()
    targets = _targets(gt)
    tally = _tally(_predictions(targets), targets)
    assert tally.postfix() == {"images": 10}
    tally.skipped += 2
    scores = tally.result(seconds=4.0)
    assert DetectionScores.STAT_NAMES == ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar1", "ar10",
                                          "ar100", "ar_small", "ar_medium", "ar_large")
    figures = scores.to_dict()
    assert list(figures)[:12] == list(DetectionScores.STAT_NAMES)
    assert tuple(figures[name] for name in DetectionScores.STAT_NAMES) == scores.stats
    assert figures["images"] == 10 and figures["skipped"] == 2 and figures["img_per_s"] == 2.5
    assert math.isnan(figures["loss"]) and figures["seconds"] == 4.0
    lines = scores.summary_lines()
    assert len(lines) == 12
    assert lines[0] == f" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = {scores.ap:0.3f}"
    assert lines[6] == f" Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ] = {scores.ar1:0.3f}"


def test_write_results_round_trips_exactly(tmp_path):
    results = coco_results(_predictions(_targets(_ground_truth())), list(range(10)), CATEGORY_IDS)
    path = write_results(tmp_path / "out" / "results.json", results)
    assert json.loads(path.read_text()) == results and not list(path.parent.glob("*.tmp*"))


def test_merging_the_records_of_two_processes_scores_as_one_process():
    gt = _ground_truth()
    targets = _targets(gt)
    outputs = _predictions(targets)
    whole = _tally(outputs, targets).result(1.0)
    # shards as ShardedEpochSampler(shuffle=False) deals them: every second image
    parts = [_tally(outputs[rank::2], targets[rank::2]) for rank in (0, 1)]
    parts[1].skipped = 3
    merged = _merge([p.records for p in parts])
    assert merged.skipped == 3 and sorted(merged.image_ids) == sorted(t["image_id"] for t in targets)
    assert coco_stats(coco_ground_truth(merged, CATEGORY_IDS, CLASSES), merged.results) == whole.stats
    assert [a["id"] for a in coco_ground_truth(merged, CATEGORY_IDS, CLASSES)["annotations"]] == \
        list(range(1, len(gt["annotations"]) + 1))
    with pytest.raises(DataError, match="image id 3 was evaluated twice"):
        _merge([parts[0].records, parts[0].records])


def test_gather_in_one_process_is_the_process_own_records():
    records = DetectionRecords(image_ids=[1, 2], annotations=[], results=[], skipped=1)
    assert _gather(records, None) == records == _gather(records, DistInfo())


def test_scoring_without_pycocotools_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)  # makes the import fail
    with pytest.raises(MissingDependencyError, match=r"pip install 'tresnet\[detection\]'"):
        coco_stats({"images": [], "annotations": [], "categories": []}, [])


_WORKER = textwrap.dedent("""
    import json, sys
    import torch
    import torch.distributed as dist
    from tresnet.collectives import DistInfo
    from tresnet.tasks.detection_metrics import DetectionTally

    rank, init_file, data_file, out_file = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        data = torch.load(data_file)
        tally = DetectionTally("cpu", data["category_ids"], data["classes"])
        outputs, targets = data["outputs"][rank::2], data["targets"][rank::2]
        for start in range(0, len(targets), 2):
            tally.add(outputs[start:start + 2], targets[start:start + 2])
        tally.skipped = rank
        scores = tally.result(1.0, DistInfo(rank=rank, world_size=2))
        with open(out_file, "w") as f:
            json.dump({"stats": scores.stats, "images": scores.images, "skipped": scores.skipped,
                       "local": tally.images}, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()
""")


@pytest.mark.slow
def test_two_gloo_processes_give_the_single_process_figures(tmp_path):
    targets = _targets(_ground_truth())
    outputs = _predictions(targets)
    whole = _tally(outputs, targets).result(1.0)
    data_file = tmp_path / "data.pt"
    torch.save({"outputs": outputs, "targets": targets, "category_ids": CATEGORY_IDS, "classes": CLASSES}, data_file)
    workers = [subprocess.Popen([sys.executable, "-c", _WORKER, str(rank), str(tmp_path / "init"), str(data_file),
                                 str(tmp_path / f"rank{rank}.json")]) for rank in (0, 1)]
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert tuple(seen["stats"]) == whole.stats
        assert seen["images"] == 10 and seen["skipped"] == 1 and seen["local"] == 5
