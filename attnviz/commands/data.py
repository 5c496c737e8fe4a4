"""``attnviz data make-shapes DIR --n-per-class N``: write the generated shapes dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import CommandParser, UsageError, add_subparser, positive_int


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    data = add_subparser(subparsers, "data", help="generated datasets")
    sub = data.add_subparsers(dest="data_command", required=True, parser_class=CommandParser)
    p = sub.add_parser(
        "make-shapes",
        help="write the generated multi-scale shapes dataset as an image folder",
        description="Write ShapesDataset(N, size, seed) as class subfolders of PNGs plus "
        "records.csv (each image's class, object scale and box).",
    )
    p.add_argument(
        "dir", help="output folder (class subfolders + records.csv); must be new or empty"
    )
    p.add_argument("--n-per-class", type=positive_int, required=True, help="images per class")
    p.add_argument("--size", type=positive_int, default=64, help="image side in pixels (64)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (0)")
    p.add_argument(
        "--scale-range",
        type=float,
        nargs=2,
        default=(0.15, 0.75),
        metavar=("LO", "HI"),
        help="object side / image side range (0.15 0.75)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import ShapesDataset, write_image_folder

    root = Path(args.dir)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UsageError(f"{root} exists and is not an empty folder; choose a new folder")
    lo, hi = args.scale_range
    if not 0 < lo <= hi <= 1:
        raise UsageError(f"--scale-range needs 0 < LO <= HI <= 1, got {lo} {hi}")
    ds = ShapesDataset(args.n_per_class, size=args.size, seed=args.seed, scale_range=(lo, hi))
    write_image_folder(ds, root)
    print(f"wrote {len(ds)} images ({ds.num_classes} classes) and records.csv to {root}")
    return 0
