"""Entry point of the `tresnet` command.

Each subcommand lives in its own module of this package and exposes
``add_parser(subparsers)`` (which registers its arguments and sets ``func``)
and a ``run(args) -> int``. Errors of ours are printed as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from tresnet.errors import TResNetError
from tresnet.version import __version__

# name -> module under tresnet.cli, imported when the parser is built.
SUBCOMMANDS = {
    "info": "tresnet.cli.info",
    "validate": "tresnet.cli.validate",
    "predict": "tresnet.cli.predict",
    "train": "tresnet.cli.train",
    "benchmark": "tresnet.cli.benchmark",
    "export": "tresnet.cli.export",
    "data": "tresnet.cli.data",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tresnet", description="TResNet image classifiers.")
    parser.add_argument("--version", action="version", version=f"tresnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMANDS.values():
        importlib.import_module(module_name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TResNetError as e:
        print(f"tresnet {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"tresnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`tresnet predict ... | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's advice: no error at exit
        return 141


if __name__ == "__main__":
    sys.exit(main())
