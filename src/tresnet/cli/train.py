"""`tresnet train`: train or fine-tune a TResNet on an ImageNet-style folder or the bundled digits.

Every option is also a recipe key (``--batch-size`` is ``batch_size``); see
:mod:`tresnet.engine.config` for the precedence of defaults, recipes and options.
"""

from __future__ import annotations

import argparse

_GROUP_TITLES = {
    "run": "run",
    "schedule": "length and batch",
    "optimizer": "optimiser, schedule and regularisation",
    "model": "model and precision",
    "data": "data and augmentation",
}
_METAVARS = {int: "N", float: "F", str: "NAME", tuple: "F"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train``: one option per :class:`~tresnet.engine.config.TrainConfig` field, plus ``--config``."""
    from tresnet.engine.config import FIELDS, field_type, list_recipes

    parser = subparsers.add_parser(
        "train", help="train or fine-tune a model (recipes, transfer, 448 px, resume, torchrun)",
        description="Train a TResNet. Under `torchrun --nproc_per_node N` it trains with DDP. "
                    "`tresnet train --model tresnet_m --data digits --output runs/digits` trains on the "
                    "bundled digits with the digits-demo recipe.",
        argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", metavar="RECIPE",
                        help=f"YAML recipe file or shipped recipe: {', '.join(list_recipes())} "
                             f"(default: digits-demo for --data digits, else none)")
    groups = {key: parser.add_argument_group(title) for key, title in _GROUP_TITLES.items()}
    for name, f in FIELDS.items():
        base, optional = field_type(name)
        flag = "--" + name.replace("_", "-")
        choices = f.metadata.get("choices")
        help_text = f.metadata["help"]
        if choices:
            help_text += f" ({', '.join(choices)}{', none' if optional else ''})"
        group = groups[f.metadata["group"]]
        if base is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, help=help_text)
        elif base is tuple:
            group.add_argument(flag, dest=name, nargs=2, metavar=("LOW", "HIGH"), help=help_text)
        else:
            metavar = {"data": "DIR|digits", "output": "DIR", "init_checkpoint": "PATH"}.get(name, _METAVARS[base])
            group.add_argument(flag, dest=name, metavar=metavar, help=help_text)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Build the configuration from ``args`` and train; errors of ours reach the dispatcher as one line."""
    from tresnet.engine.config import FIELDS, build_config
    from tresnet.engine.train import train

    overrides = {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}
    cfg = build_config(getattr(args, "config", None), overrides)
    train(cfg)
    return 0
