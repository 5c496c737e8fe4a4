"""``attnviz demo``: the main job. No network; writes to ``./attnviz-out/`` and, over all
parts, one self-contained ``./attnviz-out/report.html`` (:mod:`attnviz.report`).

Each analysis joins the demo with one entry in ``DEMO_PARTS``: ``(name, module, images)``
where the module has ``demo(out_dir, images) -> str`` writing its result, figures and summary
into ``out_dir`` (``attnviz-out/<name>/``), and ``images`` = (images per class, seed) of the
generated image set it runs on (written once to ``attnviz-out/data/``, reused afterwards);
``(0, n)`` gives the part the number n instead (the sweep renders n scenes natively).
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from ..results import atomic_write_text
from ._common import UsageError, add_subparser

DEMO_PARTS: tuple[tuple[str, str, tuple[int, int]], ...] = (
    ("sweep", "attnviz.commands.sweep", (0, 100)),  # 100 generated scenes (ShapeScenes)
    ("queries", "attnviz.commands.queries", (1, 10_000)),
    ("excitation", "attnviz.commands.excitation", (10, 30_000)),
    ("attribution", "attnviz.commands.compare_attribution", (4, 30_000)),
    ("ablation", "attnviz.commands.ablate", (1, 30_000)),  # 10 images: a few seconds
)
DEFAULT_OUT = Path("attnviz-out")


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = add_subparser(
        subparsers,
        "demo",
        help="run every analysis on the bundled models and generated images (no network)",
        description=(
            "Generate small image sets, run the analyses on the bundled tiny models, and write "
            "results, figures and summaries to ./attnviz-out/."
        ),
    )
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (./attnviz-out)")
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="PART",
        help=f"run only these parts ({', '.join(n for n, _, _ in DEMO_PARTS)})",
    )
    p.set_defaults(func=run)


def demo_images(root: Path, n_per_class: int, seed: int) -> Path:
    """The generated image set ``ShapesDataset(n_per_class, seed=seed)`` under ``root``,
    written once (into a temporary folder, then renamed) and reused afterwards."""
    from ..data import ShapesDataset, write_image_folder

    target = root / f"shapes-{n_per_class}x10-seed{seed}"
    if (target / "records.csv").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
    try:
        write_image_folder(ShapesDataset(n_per_class, size=64, seed=seed), tmp)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def run(args: argparse.Namespace) -> int:
    out_root = Path(args.out).resolve()
    parts = list(DEMO_PARTS)
    if args.only:
        unknown = set(args.only) - {n for n, _, _ in DEMO_PARTS}
        if unknown:
            raise UsageError(
                f"unknown demo part(s) {sorted(unknown)}; valid: {[n for n, _, _ in DEMO_PARTS]}"
            )
        parts = [p for p in parts if p[0] in args.only]
    out_root.mkdir(parents=True, exist_ok=True)
    sections, failed = [], []
    for name, module_name, (per_class, seed) in parts:
        fn = importlib.import_module(module_name).demo
        # (0, n): the part renders its own n scenes; else an image set written once
        images = seed if per_class == 0 else demo_images(out_root / "data", per_class, seed)
        out_dir = out_root / name
        print(f"== {name} ==", flush=True)
        start = time.perf_counter()
        try:
            text = fn(out_dir, images)
        except Exception:
            if getattr(args, "debug", False):
                raise
            traceback.print_exc()
            failed.append(name)
            text = "FAILED (traceback above)"
        seconds = time.perf_counter() - start
        print(f"{text}\n({name}: {seconds:.1f} s)\n", flush=True)
        sections.append(
            f"## {name}\n\n{text}\n\n({seconds:.1f} s; images {images}; files in {out_dir})\n"
        )
    summary = out_root / "summary.md"
    atomic_write_text(summary, "# attnviz demo\n\n" + "\n".join(sections))
    print(
        f"attnviz demo: wrote results, figures and summaries under {out_root} (overview: {summary})"
    )
    try:
        from ..report import write_report

        page = write_report([out_root], out_root / "report.html", "attnviz demo")
        print(f"attnviz demo: report: {page}")
    except Exception:
        if getattr(args, "debug", False):
            raise
        traceback.print_exc()
        failed.append("report")
    if failed:
        print(f"attnviz demo: error: part(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
