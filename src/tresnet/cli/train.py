"""`tresnet train`: train or fine-tune a TResNet or a GENet on an ImageNet-style folder or the bundled digits.

Every option is also a recipe key in its section (``--batch-size`` is ``optimisation: {batch_size: ...}``); see
:mod:`tresnet.training.config` for the precedence of defaults, recipes and options.
"""

from __future__ import annotations

import argparse

from tresnet.cli._common import say
from tresnet.recipes import list_recipes
from tresnet.training.config import OPTIONS, TrainConfig, build_config, field_type, run_recipe
from tresnet.training.sections import SECTION_TITLES
from tresnet.training.trainer import train

_METAVARS = {int: "N", float: "F", str: "NAME", tuple: "F"}
_PATH_METAVARS = {"data": "DIR|digits", "output": "DIR", "init_checkpoint": "PATH", "teacher_checkpoint": "PATH",
                  "frozen_head_from": "PATH"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train``: one option per configuration field (:data:`~tresnet.training.config.OPTIONS`), grouped
    by section, plus ``--config``."""
    parser = subparsers.add_parser(
        "train", help="train or fine-tune a model (recipes, transfer, 448 px, resume, torchrun)",
        description="Train a TResNet or a GENet. Under `torchrun --nproc_per_node N` it trains with DDP. "
                    "`tresnet train --model tresnet_m --data digits --output runs/digits` (or --model "
                    "genet_light) trains on the bundled digits with the digits-demo recipe. A shipped recipe "
                    "with a form for the model's family (finetune -> finetune-genet) is used in that form. "
                    "Each option is a recipe key in the section its group names.",
        argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", metavar="RECIPE",
                        help=f"YAML recipe file or shipped recipe: {', '.join(list_recipes())} "
                             f"(default: digits-demo for --data digits, else none)")
    groups = {name: parser.add_argument_group(f"{title} [recipe section {name}]")
              for name, title in SECTION_TITLES.items()}
    for name, option in OPTIONS.items():
        _add_option(groups[option.section], name, option)
    parser.set_defaults(func=run)
    return parser


def _add_option(group, name: str, option) -> None:
    base, optional = field_type(name)
    flag = "--" + name.replace("_", "-")
    help_text = option.help
    if option.choices:
        help_text += f" ({', '.join(option.choices)}{', none' if optional else ''})"
    if option.name != name:
        help_text += f" [{option.place}]"
    if base is bool:
        group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, help=help_text)
    elif base is tuple:
        group.add_argument(flag, dest=name, nargs=2, metavar=("LOW", "HIGH"), help=help_text)
    else:
        group.add_argument(flag, dest=name, metavar=_PATH_METAVARS.get(name, _METAVARS[base]), help=help_text)


def _build_config(args: argparse.Namespace) -> TrainConfig:
    """The run's configuration: the recipe, then the options given."""
    overrides = {name: getattr(args, name) for name in OPTIONS if hasattr(args, name)}
    _note_family_recipe(getattr(args, "config", None), overrides)
    return build_config(getattr(args, "config", None), overrides)


def _note_family_recipe(asked: str | None, overrides: dict) -> None:
    """Say so when the recipe asked for is replaced by its form for the model's family (``finetune-genet``)."""
    used = run_recipe(asked, overrides)
    if asked is not None and used is not None and str(used) != str(asked):
        say("train", "note", f"recipe {used}: the form of {asked} for this model's family")


def run(args: argparse.Namespace) -> int:
    """Build the configuration from ``args`` and train; errors of ours reach the dispatcher as one line."""
    train(_build_config(args))
    return 0
