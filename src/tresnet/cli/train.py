"""`tresnet train`: train or fine-tune a TResNet or a GENet on an ImageNet-style folder or the bundled digits.

Every option is also a recipe key (``--batch-size`` is ``batch_size``); see
:mod:`tresnet.training.config` for the precedence of defaults, recipes and options.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tresnet.training.config import TrainConfig

_GROUP_TITLES = {
    "run": "run",
    "schedule": "length and batch",
    "optimizer": "optimiser, schedule and regularisation",
    "model": "model and precision",
    "data": "data and augmentation",
    "distill": "distillation (kd, th-kd, sh-kd)",
}
_METAVARS = {int: "N", float: "F", str: "NAME", tuple: "F"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train``: one option per :class:`~tresnet.training.config.TrainConfig` field, plus ``--config``."""
    from tresnet.recipes import list_recipes
    from tresnet.training.config import FIELDS, field_type

    parser = subparsers.add_parser(
        "train", help="train or fine-tune a model (recipes, transfer, 448 px, resume, torchrun)",
        description="Train a TResNet or a GENet. Under `torchrun --nproc_per_node N` it trains with DDP. "
                    "`tresnet train --model tresnet_m --data digits --output runs/digits` (or --model "
                    "genet_light) trains on the bundled digits with the digits-demo recipe. A shipped recipe "
                    "with a form for the model's family (finetune -> finetune-genet) is used in that form.",
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
            metavar = {"data": "DIR|digits", "output": "DIR", "init_checkpoint": "PATH", "teacher_checkpoint": "PATH",
                       "frozen_head_from": "PATH"}.get(name, _METAVARS[base])
            group.add_argument(flag, dest=name, metavar=metavar, help=help_text)
    parser.set_defaults(func=run)
    return parser


def _build_config(args: argparse.Namespace) -> TrainConfig:
    """The run's configuration: the recipe, then the options given."""
    from tresnet.training.config import FIELDS, build_config

    overrides = {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}
    _note_family_recipe(getattr(args, "config", None), overrides)
    return build_config(getattr(args, "config", None), overrides)


def _note_family_recipe(asked: str | None, overrides: dict) -> None:
    """Say so when the recipe asked for is replaced by its form for the model's family (``finetune-genet``)."""
    from tresnet.cli._common import say
    from tresnet.training.config import run_recipe

    used = run_recipe(asked, overrides)
    if asked is not None and used is not None and str(used) != str(asked):
        say("train", "note", f"recipe {used}: the form of {asked} for this model's family")


def run(args: argparse.Namespace) -> int:
    """Build the configuration from ``args`` and train; errors of ours reach the dispatcher as one line."""
    from tresnet.training.trainer import train

    cfg = _build_config(args)
    train(cfg)
    return 0
