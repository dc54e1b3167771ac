"""`tresnet validate`: top-1 / top-5 of a model on a folder of class sub-folders (ImageNet val, its subsets
and variants) or a flat folder with a ground-truth file, with ReaL top-1 on request; or mAP and
CP/CR/CF1/OP/OR/OF1 of a multi-label model on COCO-style annotations or a labels CSV."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tresnet.checkpoint import read_checkpoint_metadata
from tresnet.cli import _common as common
from tresnet.data.published import PUBLISHED_SETS
from tresnet.data.sources import ValidationOptions, data_tasks
from tresnet.errors import CheckpointError
from tresnet.inference.evaluate import Scoring
from tresnet.inference.validate import open_validation_data, prepare_validation
from tresnet.runtime import resolve_device
from tresnet.tasks import DEFAULT_TASK


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "validate", help="top-1 / top-5 accuracy on an ImageNet-style folder, or multi-label mAP",
        description="Measure top-1 and top-5 accuracy of a model on a folder with one sub-folder per "
                    "class, with the model's own preprocessing. Folders map to the model's classes by the "
                    "first rule that fits: --class-map, the class names the checkpoint records, ImageNet "
                    "synsets (n01440764, any number of them), class indices (0 ... 999, as ImageNetV2), "
                    "sorted names (as torchvision's ImageFolder); a subset of the classes (ImageNet-A/R) is "
                    "scored over those classes only. The flat ImageNet val folder needs --ground-truth; "
                    "--real-labels adds ReaL top-1. A multilabel model (--task multilabel, or a multi-label "
                    "checkpoint) is measured by mAP and CP/CR/CF1/OP/OR/OF1 on COCO-style annotations "
                    "(--annotations FILE, --data the images folder) or a labels CSV (--data labels.csv, "
                    "columns file,labels). Unreadable files are skipped with a warning and counted.",
    )
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="folder of class sub-folders, e.g. imagenet/val; a published set as distributed, "
                             f"NAME:ROOT with NAME one of {', '.join(PUBLISHED_SETS)} (its test split; see "
                             "--split); multilabel: the images folder of --annotations, or a CSV with columns "
                             "file,labels (labels: class names separated by spaces); or a bundled set, digits or "
                             "digits-multilabel (the validation split of its training run)")
    parser.add_argument("--split", metavar="NAME",
                        help="a published set (--data NAME:ROOT): the split evaluated, e.g. val (default: test)")
    common.add_inference_arguments(parser)
    common.add_task_arguments(parser)
    parser.add_argument("--ground-truth", metavar="FILE",
                        help="labels of the images of a flat --data folder (ImageNet val): LOC_val_solution.csv "
                             "(ImageId,PredictionString) or the devkit's ILSVRC2012_validation_ground_truth.txt")
    parser.add_argument("--class-map", metavar="FILE",
                        help="which model class each folder is: a folder name per line in model order, or "
                             "name,index lines")
    parser.add_argument("--real-labels", metavar="FILE",
                        help="ImageNet-ReaL labels (real.json): also report ReaL top-1 / top-5 over the images "
                             "that have a ReaL label")
    parser.add_argument("--annotations", metavar="FILE",
                        help="multilabel or detection: COCO instances JSON (e.g. instances_val2017.json) of the "
                             "--data images")
    parser.add_argument("--classes", metavar="FILE",
                        help="multilabel: a text file of class names, one per line, in the model's order: the "
                             "classes of a CSV (default: the sorted names found in it), a check of the COCO "
                             "categories with --annotations")
    parser.add_argument("--without-labels", choices=("skip", "negative"), default="skip",
                        help="COCO images without annotations: skip them (default, as ASL's evaluation) or keep "
                             "them with no positive label")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per batch (default 64)")
    parser.add_argument("--workers", type=int, default=common.DEFAULT_WORKERS, metavar="N",
                        help=f"decoding processes, 0 = in this process (default {common.DEFAULT_WORKERS})")
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="evaluate only N images, taken evenly over the folder so every class is seen")
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable file instead of skipping it")
    parser.add_argument("--detections", metavar="FILE",
                        help="detection: also write the boxes found as COCO results JSON (image_id, the data's "
                             "category_id, bbox [x, y, w, h], score), which any COCO tool scores")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the results as JSON (top1/top5, class_mapping, real_top1..., or map, "
                             "ap_per_class and cp/cr/cf1/op/or/of1; in percent)")
    parser.set_defaults(func=run)


def _published(cfg: dict) -> str | None:
    """``80.8%``; with timm's own evaluation on record (GENet), both figures with their image sizes."""
    top1, timm_eval = cfg.get("top1"), cfg.get("timm_eval")
    if top1 is None:
        return None
    if not timm_eval:
        return f"{top1}%"
    return (f"{top1}% at {cfg['input_size'][-1]} px (the paper's evaluation), {timm_eval['top1']}% at "
            f"{timm_eval['img_size']} px (timm's)")


def _recorded_task(args: argparse.Namespace) -> str | None:
    """The task a safetensors ``--checkpoint`` records (its header only: cheap); None for other files."""
    path = Path(args.checkpoint).expanduser() if args.checkpoint else None
    if path is None or path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        return read_checkpoint_metadata(path).get("task")
    except CheckpointError:  # reported when the model loads
        return None


def _data_task(args: argparse.Namespace) -> str | None:
    """The task of the data when it says (a bundled set, COCO annotations, a CSV): the checkpoint's among those it
    serves (a COCO file serves multilabel and detection), else its first; the checkpoint's for a plain folder."""
    recorded, served = _recorded_task(args), data_tasks(args.data, args.annotations)
    if not served:
        return recorded
    return recorded if recorded in served else served[0]


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    run_options = common.run_options(args, device)
    # bad data fails before the model loads; the task is the data's when --task does not name it
    task = args.task or _data_task(args) or DEFAULT_TASK
    dataset = open_validation_data(args.data, task=task, options=ValidationOptions(
        annotations=args.annotations, classes=args.classes, ground_truth=args.ground_truth, strict=args.strict,
        without_labels=args.without_labels, split=args.split))
    model = common.load_model(args, "validate")
    preprocessing = common.resolve_preprocessing(args, model)
    common.announce_deployment(args, run_options.number_format, "validate")
    scoring = Scoring(task=args.task, threshold=args.threshold, class_map=args.class_map, real_labels=args.real_labels)
    with common.warnings_above_progress_bar("validate"):
        validation = prepare_validation(model, dataset, preprocessing=preprocessing, device=device, run=run_options,
                                        scoring=scoring, batch_size=args.batch_size, workers=args.workers,
                                        limit=args.limit)
        _print_setup(args, model, validation, device)
        report = validation.run(progress=not args.no_progress, results_file=args.detections)
    for line in report.lines(published=_published(model.pretrained_cfg)):
        print(line)
    if args.json:
        common.write_json(args.json, report.to_dict())
    return 0


def _run_description(args: argparse.Namespace, validation) -> str:
    """``bf16 autocast``, ``int8 (calibrated on N images of DIR)``, ``channels-last``: what is not the default."""
    number_format = validation.inference.options.number_format
    described = {
        "int8": f"int8 (calibrated on {validation.settings.get('calibration_images')} images of {args.calibration})",
        "bf16": "bf16 (folded, bfloat16 weights and activations)",
    }
    options = ((f"{validation.precision} autocast", validation.precision != "fp32"),
               (described.get(number_format, number_format), number_format != "fp32"),
               ("channels-last", args.channels_last))
    return ", ".join(option for option, on in options if on)


def _print_setup(args: argparse.Namespace, model, validation, device) -> None:
    dataset = validation.dataset
    options = _run_description(args, validation)
    task = "" if validation.task.maps_classes else f", {validation.task.name}"
    print(f"{model.pretrained_cfg['model']}: {model.num_classes} classes{task}, {common.weights_description(model)}")
    print(f"preprocessing: {validation.preprocessing.describe()}")
    print(f"data: {args.data}, {len(validation.subset)} of {len(dataset)} images in {len(dataset.classes)} classes; "
          f"device {device}, batch {args.batch_size}, {args.workers} workers" + (f", {options}" if options else ""))
    if validation.class_mapping is not None:
        print(f"classes: {validation.class_mapping.describe()}")
    if validation.real_labels is not None:
        print(f"ReaL labels: {validation.real_labels}")
    sys.stdout.flush()
