"""``attnviz report OUT...``: one self-contained ``report.html`` from result folders.

    attnviz report attnviz-out [--html attnviz-out/report.html] [--title TEXT]

Reads every analysis folder (``result/manifest.json``) under the given folders, as the other
commands wrote them, and writes their summary tables, figures (inline SVG) and query viewers
into one HTML file with no outside reference (:mod:`attnviz.report`).
"""

from __future__ import annotations

import argparse

from ._common import UsageError, add_subparser


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = add_subparser(
        subparsers,
        "report",
        help="write one self-contained report.html from result folders",
        description=(
            "Collect the summary tables, figures and query viewers of the analyses under OUT "
            "folders (written by the other commands) into one self-contained HTML file."
        ),
    )
    p.add_argument("out", nargs="+", metavar="OUT", help="result folder(s) of attnviz commands")
    p.add_argument("--html", default=None, help="the report file (default OUT/report.html)")
    p.add_argument("--title", default="attnviz report", help="the report's title")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..report import find_analyses, write_report

    for folder in args.out:
        if not Path(folder).is_dir():
            raise UsageError(f"no such folder: {folder}")
    if not find_analyses(args.out):
        raise UsageError(f"no analysis results under {', '.join(args.out)}")
    path = write_report(args.out, args.html, args.title)
    print(f"wrote {path}")
    return 0
