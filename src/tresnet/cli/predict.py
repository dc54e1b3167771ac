"""`tresnet predict`: the top-k classes of each image, with probabilities; for a multi-label model first
the labels whose probability exceeds the threshold."""

from __future__ import annotations

import argparse
import sys

from tresnet.cli import _common as common
from tresnet.data.bundled import BUNDLED_SETS, bundled_set
from tresnet.errors import ConfigError
from tresnet.inference.evaluate import Scoring
from tresnet.inference.predict import predict, save_drawn
from tresnet.runtime import resolve_device


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict", help="top-k classes of images",
        description="Classify images: the top-k classes with probabilities. A multilabel model (--task "
                    "multilabel, or a multi-label checkpoint) gives each class its own probability (sigmoid) "
                    "and first lists the labels above --threshold. Folders are expanded to the "
                    "image files inside them (recursively, sorted). A file that cannot be read is reported "
                    "on stderr and the others are still answered; the exit code is then 1.",
    )
    parser.add_argument("inputs", nargs="*", metavar="IMAGE_OR_DIR", help="image files or folders of images")
    parser.add_argument("--data", metavar="NAME",
                        help="also answer for the validation images of a bundled set, digits, digits-multilabel or "
                             "digits-detection "
                             "(the split the checkpoint's run validated on; answers named NAME:val/INDEX)")
    common.add_inference_arguments(parser)
    common.add_task_arguments(parser)
    parser.add_argument("--class-map", metavar="FILE",
                        help="name the model's classes as validate --class-map does (a name per line in model "
                             "order, or name,index lines)")
    parser.add_argument("--topk", type=int, default=5, metavar="K", help="classes shown per image (default 5)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per batch (default 32)")
    parser.add_argument("--save-images", metavar="DIR",
                        help="detection: also write each image with its boxes, labels and scores drawn, as DIR/NNNNN-NAME.png")
    parser.add_argument("--json", metavar="PATH",
                        help='also write {"model", "checkpoint", "task", "threshold", "preprocessing", "predictions": '
                             '[{"file", "topk": [{"index", "label", "prob"}]}]} as JSON (ImageNet-1k models: with '
                             '"synset"; multilabel: with "labels", the classes above the threshold, in the same form)')
    parser.set_defaults(func=run)


def _print(answer) -> None:
    if answer.error is not None:
        common.say("predict", "error", answer.error)
        return
    print("\n".join(answer.lines()))
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    if args.topk < 1:
        raise ConfigError(f"--topk must be at least 1, got {args.topk}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.data is not None and bundled_set(args.data) is None:
        raise ConfigError(f"--data names a bundled set ({', '.join(BUNDLED_SETS)}), not {args.data!r}: give image "
                          f"files and folders as arguments")
    if not args.inputs and args.data is None:
        raise ConfigError("nothing to classify: give image files or folders, or --data digits")
    device = resolve_device(args.device)
    run_options = common.run_options(args, device)
    model = common.load_model(args, "predict")
    preprocessing = common.resolve_preprocessing(args, model)
    scoring = Scoring(task=args.task, threshold=args.threshold, class_map=args.class_map)
    task, threshold = scoring.resolve(model)
    if args.save_images and not task.draws:
        raise ConfigError(f"--save-images draws a detector's boxes: a {task.name} model has none to draw")
    common.announce_deployment(args, run_options.number_format, "predict")
    print(f"{model.pretrained_cfg['model']}: {model.num_classes} classes{'' if task.maps_classes else f', {task.name}'}, "
          f"{common.weights_description(model)}", file=sys.stderr)
    print(f"preprocessing: {preprocessing.describe()}", file=sys.stderr)
    answers = []
    with common.warnings_above_progress_bar("predict"):
        for answer in predict(model, args.inputs, topk=args.topk, batch_size=args.batch_size,
                              preprocessing=preprocessing, device=device, run=run_options, scoring=scoring,
                              data=args.data):
            _print(answer)
            answers.append(answer)
    if args.save_images:
        written = save_drawn(model, answers, args.save_images, preprocessing=preprocessing, scoring=scoring, data=args.data)
        print(f"tresnet predict: {len(written)} images with their boxes drawn in {args.save_images}", file=sys.stderr)
    if args.json:
        common.write_json(args.json, _report(model, task, threshold, preprocessing, answers))
    failed = sum(1 for answer in answers if answer.error is not None)
    if failed:
        print(f"tresnet predict: {failed} of {len(answers)} inputs failed", file=sys.stderr)
        return 1
    return 0


def _report(model, task, threshold: float, preprocessing, answers: list) -> dict:
    """What ``--json`` writes: the model, its weights, task and preprocessing, then the answers."""
    info = getattr(model, "checkpoint_info", None)
    return {"model": model.pretrained_cfg["model"], "checkpoint": str(info.path) if info is not None else None,
            "task": task.name, "threshold": task.threshold_of(threshold),
            "preprocessing": preprocessing.to_dict(), "predictions": [answer.to_dict() for answer in answers]}
