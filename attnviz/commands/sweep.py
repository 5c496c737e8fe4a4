"""``attnviz sweep``: the SKNet object-scale sweep from the command line (and its demo part).

    attnviz sweep --model sk_tiny --images DIR --out OUT [--scales 1.0 1.5 2.0] [--resume]
    torchrun --nproc_per_node 2 -m attnviz sweep ...   # each rank sweeps a shard

Writes ``OUT/result/`` (npz + csv + manifest.json), ``OUT/figures/*.png|svg`` and
``OUT/summary.txt``; checkpoints go to ``OUT/checkpoint/`` and are removed after success.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from .. import distributed as dist_utils
from ..errors import AttnvizError
from ._common import (
    add_image_arguments,
    add_model_arguments,
    load_cli_model,
    model_meta,
    print_error,
)

SUMMARY_FILE = "summary.txt"


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="SKNet object-scale sweep: SK attention at 1.0x / 1.5x / 2.0x object size",
        description=(
            "Show every image at several object scales (centre crops resized back, as in "
            "SKNet Fig. 3), capture the SK branch attention, and report D = mean(b) - mean(a) "
            "per SK unit and scale. MODEL is a bundled name (sk_tiny), a timm name or a spec "
            "timm:NAME, torchvision:NAME. Bad image files are skipped and listed."
        ),
    )
    add_model_arguments(p, example="sk_tiny or timm:skresnet18")
    add_image_arguments(p, batch_size=32)
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 1.5, 2.0])
    p.add_argument("--units", nargs="+", default=None, help="SK units by alias (default all)")
    p.add_argument("--per-image", action="store_true", help="also keep D of every image")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.add_argument("--strict", action="store_true", help="exit non-zero if any file is skipped")
    p.add_argument(
        "--checkpoint-every", type=int, default=20, help="checkpoint every N batches (20)"
    )
    p.add_argument("--no-figures", action="store_true", help="write the result only")
    p.set_defaults(func=run)


def _error(msg: str) -> int:
    return print_error("sweep", msg)


def save_figures(result: Any, directory: Path) -> list[Path]:
    """The sweep's figures as PNG and SVG: stage bars, channel curves, heatmap, per class."""
    from ..plot.sweep import (
        plot_channel_attention,
        plot_class_d,
        plot_d_heatmap,
        plot_stage_bars,
    )

    directory.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Figure] = {
        "stage_bars": plot_stage_bars(result),
        "d_heatmap": plot_d_heatmap(result),
    }
    last = result.stage_last_units()
    # Fig. 3a/b: the last unit of stage 3 (SK_3_4 in SKNet-50)
    unit = next((a for a in last if result.unit(a).stage == 3), last[0])
    figures[f"channel_attention_{unit}"] = plot_channel_attention(result, unit)
    if result.class_names:
        figures["class_d"] = plot_class_d(result)
    written = []
    for name, fig in figures.items():
        for ext in ("png", "svg"):
            path = directory / f"{name}.{ext}"
            fig.savefig(path, dpi=120)
            written.append(path)
    return written


def run(args: argparse.Namespace) -> int:
    from ..analysis.scale_sweep import BadImageError, scale_sweep

    started = dist_utils.init_from_env(args.device)
    try:
        loaded = load_cli_model("sweep", args)
        if isinstance(loaded, int):
            return loaded
        model, config = loaded
        out = Path(args.out)
        rank0 = dist_utils.rank() == 0
        try:
            result = scale_sweep(
                model,
                args.images,
                scales=args.scales,
                batch_size=args.batch_size,
                preprocess=config,
                per_image=args.per_image,
                units=args.units,
                progress=not args.no_progress,
                strict=args.strict,
                checkpoint_dir=out / "checkpoint",
                checkpoint_every=args.checkpoint_every,
                resume=args.resume,
                limit=args.limit,
            )
        except BadImageError as exc:
            return _error(f"{exc} (--strict)")
        except (AttnvizError, ValueError, NotADirectoryError) as exc:
            return _error(str(exc))
        result.meta.update(model_meta(args))
        if rank0:
            result.save(out / "result")
            if not args.no_figures:
                save_figures(result, out / "figures")
            summary = result.summary()
            (out / SUMMARY_FILE).write_text(summary + "\n")
            shutil.rmtree(out / "checkpoint", ignore_errors=True)
            print(summary)
            for path, reason in result.skipped:
                print(f"skipped {path}: {reason}")
            figures = "" if args.no_figures else f", {out / 'figures'}"
            print(f"wrote {out / 'result'}{figures} and {out / SUMMARY_FILE}")
        dist_utils.barrier()
        return 0
    finally:
        if started:
            dist_utils.shutdown()


# --------------------------------------------------------------------------- demo part
DEMO_N_PER_CLASS = 10
DEMO_SEED = 20_000  # not a training or held-out seed of the bundled models


def demo(out_dir: Path) -> str:
    """The scale sweep on the bundled ``sk_tiny`` over a generated image set in ``out_dir``."""
    from ..analysis.scale_sweep import scale_sweep
    from ..data import ShapesDataset, write_image_folder
    from ..models import load_model

    out_dir = Path(out_dir)
    images = out_dir / "images"
    if images.exists():
        shutil.rmtree(images)
    write_image_folder(ShapesDataset(DEMO_N_PER_CLASS, size=64, seed=DEMO_SEED), images)
    model, config = load_model("sk_tiny")
    result = scale_sweep(model, images, preprocess=config, batch_size=32, progress=True)
    result.meta["model"] = "sk_tiny"
    result.save(out_dir / "result")
    save_figures(result, out_dir / "figures")
    summary = result.summary()
    (out_dir / SUMMARY_FILE).write_text(summary + "\n")
    return (
        f"SKNet scale sweep on sk_tiny, {result.n_images} generated images "
        f"({len(result.class_names)} classes):\n{summary}\n"
        f"figures: {out_dir / 'figures'}"
    )
