"""Command line: ``attnviz demo | sites | sweep | queries | excitation | ...``.

Each command lives with its feature: a module listed in ``COMMAND_MODULES`` exposes
``register_cli(subparsers)``, which adds its parser and sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES: tuple[str, ...] = (
    "attnviz.commands.sites",
    "attnviz.commands.demo",
    "attnviz.commands.sweep",
    "attnviz.commands.queries",
    "attnviz.commands.excitation",
    "attnviz.data.shapes",
    "attnviz.models.train",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnviz",
        description="See and measure the attention modules of convolutional networks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
