"""``attnviz sweep``: the SKNet object-scale sweep from the command line (and its demo part).

    attnviz sweep --model sk_tiny --images DIR --out OUT [--scales 1.0 1.5 2.0] [--resume]
    attnviz sweep --model sk_tiny --shapes 100 --out OUT   # generated scenes, rendered natively
    attnviz sweep --model sk_tiny --shapes 100 --content-controls --out OUT   # + content controls
    torchrun --nproc_per_node 2 -m attnviz sweep ...   # each rank sweeps a shard

Writes ``OUT/result/``, ``OUT/figures/`` and ``OUT/summary.txt``; checkpoints go to
``OUT/checkpoint/`` and are removed after success.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import (
    UsageError,
    add_analysis_arguments,
    add_subparser,
    distributed_session,
    load_cli_model,
    model_fingerprint,
    on_main_rank,
    output_folder,
    positive_int,
    replicate_options,
    report,
    run_options,
    run_replicates_cli,
    scale_value,
    sites_argument,
)

ANALYSIS = "scale_sweep"


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = add_subparser(
        subparsers,
        "sweep",
        help="SKNet object-scale sweep: SK attention at 1.0x / 1.5x / 2.0x object size",
        description=(
            "Show every image at several object scales, capture the SK branch attention, and "
            "report D = mean(b) - mean(a) per SK site and scale and its paired change with "
            "scale. --shapes N renders N generated scenes natively at each scale; --images "
            "crops the zoom views from the original pixels and adds a resolution control for "
            "every zoom view that needed upsampling. Bad image files are skipped and listed."
        ),
    )
    add_analysis_arguments(p, example="sk_tiny or timm:skresnet18", batch_size=32)
    p.add_argument(
        "--scales",
        type=scale_value,
        nargs="+",
        default=[1.0, 1.5, 2.0],
        help="view scales, finite numbers >= 1 (default 1.0 1.5 2.0)",
    )
    for action in p._actions:  # --images or --shapes (checked in run)
        if action.dest == "images":
            action.required = False
            action.help = "image folder (class subfolders = labels); or use --shapes"
    p.add_argument(
        "--shapes",
        type=positive_int,
        default=None,
        metavar="N",
        help="sweep N generated scenes rendered natively at each scale (instead of --images)",
    )
    p.add_argument(
        "--shapes-seed", type=int, default=20_000, help="seed of the generated scenes (20000)"
    )
    p.add_argument(
        "--content-controls",
        nargs="*",
        default=None,
        metavar="NAME",
        help="with --shapes: content controls beside the native views (no name: all of "
        "copies, copies_perimeter, constant_area, contrast_matched, background_swap)",
    )
    p.add_argument(
        "--no-control",
        action="store_true",
        help="no resolution control for upsampled zoom views (--images only)",
    )
    p.add_argument(
        "--figure-image",
        default="0",
        help="the image of the Fig. 3 views figure: an index or id (default 0)",
    )
    p.add_argument("--per-image", action="store_true", help="also keep D of every image")
    p.add_argument("--no-figures", action="store_true", help="write the result only")
    p.set_defaults(func=run)


def sweep_figures(result: Any, fig3: tuple[Any, list] | None = None) -> dict[str, Any]:
    """The sweep's figures: paired change bars (with controls), Fig. 4 per class, Fig. 3
    (``fig3`` = (a per-image result of one image, its views)), D bars, channel curves,
    heatmap."""
    from ..plot.sweep import (
        plot_channel_attention,
        plot_class_d,
        plot_class_delta,
        plot_d_heatmap,
        plot_delta_bars,
        plot_image_views,
        plot_stage_bars,
    )

    figures = {"stage_bars": plot_stage_bars(result), "d_heatmap": plot_d_heatmap(result)}
    if len(result.scales) > 1:
        figures["delta_bars"] = plot_delta_bars(result)
    last = result.stage_last_sites()
    # Fig. 3a/b: the last site of stage 3 (SK_3_4 in SKNet-50)
    site = next((a for a in last if result.site(a).stage == 3), last[0])
    figures[f"channel_attention_{site}"] = plot_channel_attention(result, site)
    if result.class_names:
        figures["class_d"] = plot_class_d(result)
        if len(result.scales) > 1:
            figures["fig4_class_d"] = plot_class_delta(result)
    if fig3 is not None:
        one, views = fig3
        figures["fig3_views"] = plot_image_views(one, views, 0, n_images=result.n_images)
    return figures


def _figure_item(args: argparse.Namespace, images: Any, config: Any, scales) -> tuple[Any, list]:
    """(what to sweep for Fig. 3: one item, its views as PIL images); the image asked for, or
    the first usable one after it if that one is skipped (too large, unreadable)."""
    from ..data.shapes import ShapeScenes
    from ..data.sources import image_source
    from ..data.views import zoom_views

    key = str(args.figure_image)
    if isinstance(images, ShapeScenes):
        k = int(key.lstrip("#")) if key.lstrip("#").isdigit() else 0
        k = min(max(k, 0), len(images) - 1)
        return images.select([k]), images.views(k)
    source = image_source(images, exclude=[args.out], max_pixels=args.max_pixels)
    ids = list(source.ids)
    k = int(key) if key.isdigit() and int(key) < len(ids) else (ids.index(key) if key in ids else 0)
    if source.paths is None:
        raise UsageError("--figure-image needs an image file")
    for j in [*range(k, len(ids)), *range(k)]:
        image, _, _ = source.load(j)  # never decodes past --max-pixels
        if image is not None:
            return [source.paths[j]], zoom_views(image, config, scales)[0]
    raise UsageError("no usable image for the Fig. 3 views")


def run(args: argparse.Namespace) -> int:
    from ..analysis.scale_sweep import scale_sweep
    from ..data.scene_controls import CONTENT_CONTROLS
    from ..data.shapes import ShapeScenes, train_object_size_range

    if (args.images is None) == (args.shapes is None):
        raise UsageError("give exactly one of --images DIR and --shapes N")
    content: tuple[str, ...] = ()
    if args.content_controls is not None:
        if args.shapes is None:
            raise UsageError("--content-controls needs --shapes N (natively rendered scenes)")
        content = tuple(args.content_controls) or tuple(CONTENT_CONTROLS)
        bad = [c for c in content if c not in CONTENT_CONTROLS]
        if bad:
            raise UsageError(f"unknown content control(s) {bad}; valid: {list(CONTENT_CONTROLS)}")
    folders = [args.images] if args.images else []
    with (
        distributed_session(args.device) as main,
        output_folder(args.out, folders, ANALYSIS) as out,
    ):
        model, config = load_cli_model(args)
        if args.shapes is not None:
            size = int(config.input_size[-1]) if 64 <= int(config.input_size[-1]) <= 96 else 64
            images: Any = ShapeScenes(
                args.shapes,
                scales=args.scales,
                size=size,
                seed=args.shapes_seed,
                object_range=train_object_size_range(args.model),
                controls=content,
            )
        else:
            images = args.images

        def analyse(model: Any, **options: Any) -> Any:  # the run and its replicates alike
            return scale_sweep(
                model,
                images,
                scales=args.scales,
                sites=sites_argument(args.sites),
                controls=not args.no_control,
                **options,
            )

        result = analyse(
            model,
            per_image=args.per_image,
            **run_options(args, out, config, model_fingerprint(args)),
        )

        def write() -> None:  # rank 0 alone, without collectives (on_main_rank)
            result.meta.setdefault("model", args.model)
            out.save_result(result)
            if not args.no_figures:
                item, views = _figure_item(args, images, config, args.scales)
                one = scale_sweep(
                    model, item, scales=args.scales, sites=sites_argument(args.sites),
                    per_image=True, controls=False, preprocess=config, progress=False,
                )  # fmt: skip
                one.meta["model"] = args.model
                out.save_figures(sweep_figures(result, (one, views)))
            report(out, result, result.summary())
            run_replicates_cli(
                args, out, result,
                lambda models: analyse(models[args.model], **replicate_options(args, out, config)),
            )  # fmt: skip

        on_main_rank(main, write)
        out.remove_checkpoint(ANALYSIS)
    return 0


# --------------------------------------------------------------------------- demo part


def demo(out_dir: Path, images: Any) -> str:
    """The scale sweep on the bundled ``sk_tiny``: ``images`` = the number of generated scenes
    rendered natively at 1.0x / 1.5x / 2.0x (or an image folder: zoom crops + controls)."""
    from ..analysis.scale_sweep import scale_sweep
    from ..data.shapes import ShapeScenes, train_object_size_range
    from ..models import load_model

    model, config = load_model("sk_tiny")
    if isinstance(images, int):
        images = ShapeScenes(images, object_range=train_object_size_range("sk_tiny"))
        folders: list = []
        what = f"{len(images)} generated scenes rendered natively"
    else:
        folders = [images]
        what = f"the images in {images}"
    with output_folder(out_dir, folders) as out:
        result = scale_sweep(
            model, images, preprocess=config, batch_size=32, progress=False, exclude=[out.path]
        )
        result.meta["model"] = "sk_tiny"
        out.save_result(result)
        if isinstance(images, ShapeScenes):
            fig3 = (images.select([0]), images.views(0))
        else:
            from PIL import Image

            from ..data.sources import image_source
            from ..data.views import zoom_views

            path = image_source(images, exclude=[out.path]).paths[0]
            with Image.open(path) as im:
                fig3 = ([path], zoom_views(im.convert("RGB"), config, result.scales)[0])
        one = scale_sweep(
            model, fig3[0], preprocess=config, per_image=True, controls=False, progress=False
        )
        one.meta["model"] = "sk_tiny"
        out.save_figures(sweep_figures(result, (one, fig3[1])))
        out.save_summary(result.summary())
    figures = out_dir / "figures"
    return f"SKNet scale sweep on sk_tiny, {what}:\n{result.summary()}\nfigures: {figures}"
