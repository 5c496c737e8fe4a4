"""``attnviz train ARCH ...``: train a bundled tiny model (see :mod:`attnviz.models.train`)."""

from __future__ import annotations

import argparse

from ._common import add_subparser


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    from ..models import train

    p = add_subparser(
        subparsers,
        "train",
        help="train a bundled tiny model on generated shapes (deterministic, CPU)",
        description=train.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_arguments(p)
    p.set_defaults(func=train._cli)
