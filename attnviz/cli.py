"""Command line: ``attnviz demo | sites | sweep | queries | rollout | excitation |
compare-attribution | ablate | report | data | train``.

Each command lives in its own file under ``attnviz/commands/``, which exposes
``register_cli(subparsers)``; argument parsing happens only there. Errors print one line,
``attnviz CMD: error: ...``, with exit code 2 for bad usage and 1 for failures at run time;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Sequence

from .commands._common import CommandParser, UsageError
from .errors import Interrupted

COMMAND_MODULES: tuple[str, ...] = (
    "attnviz.commands.sites",
    "attnviz.commands.demo",
    "attnviz.commands.sweep",
    "attnviz.commands.queries",
    "attnviz.commands.rollout",
    "attnviz.commands.excitation",
    "attnviz.commands.compare_attribution",
    "attnviz.commands.ablate",
    "attnviz.commands.report",
    "attnviz.commands.data",
    "attnviz.commands.train",
)


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="attnviz",
        description="See and measure the attention modules of convolutional networks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register_cli(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, KeyError):
        text = text.strip("'\"")
    first = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)) and getattr(
        exc, "filename", None
    ):
        first = f"{exc.strerror}: {exc.filename}"
    return first


def _warning_line(message: Warning | str, *_: object, **__: object) -> str:
    """A warning as one line: ``attnviz: warning: MESSAGE``."""
    return f"attnviz: warning: {' '.join(str(message).split())}\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported by the command's own parser: `attnviz CMD: error: ...`
        chooser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub = chooser.choices.get(getattr(args, "command", None) or "", parser)
        sub.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    prog = f"attnviz {args.command}"
    previous = warnings.formatwarning
    warnings.formatwarning = _warning_line  # one line each, no source path
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # e.g. `attnviz sites --json | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except SystemExit:
        raise
    except UsageError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if getattr(args, "debug", False):
            raise
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = previous


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
