"""`tresnet data`: write a bundled data set's images to a folder, for those who want files (to look at, to
run `predict` on, or to validate as a folder)."""

from __future__ import annotations

import argparse

from tresnet.data.bundled import BUNDLED_SETS
from tresnet.inference.bundled import write_bundled_set


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "data", help="write a bundled data set's images to a folder",
        description="Write the images of a bundled data set (digits: a folder per class; digits-multilabel: "
                    "PNG files and a labels.csv; digits-detection: PNG files and a COCO instances.json) to --output. With --checkpoint, the validation split and image "
                    "size of that checkpoint's training run, so that `tresnet validate --data OUTPUT` and "
                    "`tresnet predict OUTPUT` answer as the run's validation did; otherwise those of the set's "
                    "demo recipe.")
    p.add_argument("name", choices=tuple(BUNDLED_SETS), help="the bundled set")
    p.add_argument("--output", required=True, metavar="DIR", help="folder to write into (created if needed)")
    p.add_argument("--split", choices=("val", "train"), default="val", help="which split (default val)")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="a checkpoint saved by `tresnet train` on this set: its image size and split")
    p.add_argument("--img-size", type=int, metavar="N",
                   help="image side (default: the checkpoint's, else the demo recipe's: 32, 128 for "
                        "digits-detection)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    written = write_bundled_set(args.name, args.output, split=args.split, checkpoint=args.checkpoint,
                                img_size=args.img_size)
    print(written.summary())
    return 0
