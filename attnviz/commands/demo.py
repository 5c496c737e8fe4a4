"""``attnviz demo``: the main job. No arguments, no network; writes to ``./attnviz-out/``.

Each analysis joins the demo with one entry in ``DEMO_PARTS``: ``(name, module)`` where the
module has a function ``demo(out_dir: Path) -> str`` that writes its figures and results into
``out_dir`` (``attnviz-out/<name>/``) and returns a short text summary. Parts whose module does
not exist (yet) are left out.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
import traceback
from pathlib import Path

DEMO_PARTS: tuple[tuple[str, str], ...] = (
    ("sweep", "attnviz.commands.sweep"),
    ("queries", "attnviz.commands.queries"),
    ("excitation", "attnviz.commands.excitation"),
)
DEFAULT_OUT = Path("attnviz-out")


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run every analysis on the bundled models and generated images (no network)",
        description=(
            "Generate small image sets, run the analyses on the bundled tiny models, and write "
            "figures and summaries to ./attnviz-out/."
        ),
    )
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (./attnviz-out)")
    p.add_argument("--only", nargs="+", default=None, metavar="PART", help="run only these parts")
    p.set_defaults(func=run)


def available_parts() -> list[tuple[str, str]]:
    """The demo parts whose module exists."""
    out = []
    for name, module in DEMO_PARTS:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            out.append((name, module))
    return out


def run(args: argparse.Namespace) -> int:
    out_root = Path(args.out).resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    parts = available_parts()
    if args.only:
        unknown = set(args.only) - {n for n, _ in DEMO_PARTS}
        if unknown:
            print(f"attnviz demo: error: unknown part(s) {sorted(unknown)}", file=sys.stderr)
            return 2
        parts = [(n, m) for n, m in parts if n in args.only]
    sections = []
    failed = []
    for name, module_name in parts:
        fn = getattr(importlib.import_module(module_name), "demo", None)
        if fn is None:
            continue
        out_dir = out_root / name
        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"== {name} ==", flush=True)
        start = time.perf_counter()
        try:
            text = fn(out_dir)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            text = "FAILED (traceback above)"
        seconds = time.perf_counter() - start
        print(f"{text}\n({name}: {seconds:.1f} s)\n", flush=True)
        sections.append(f"## {name}\n\n{text}\n\n({seconds:.1f} s; files in {out_dir})\n")
    summary = out_root / "summary.md"
    summary.write_text("# attnviz demo\n\n" + "\n".join(sections))
    print(f"attnviz demo: wrote figures and summaries under {out_root} (overview: {summary})")
    if failed:
        print(f"attnviz demo: error: part(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
