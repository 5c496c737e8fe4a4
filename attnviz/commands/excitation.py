"""``attnviz excitation`` and ``attnviz compare-attribution`` (and their demo part).

    attnviz excitation --model se_tiny --images DIR --out OUT [--classes disc ring] [--channels 50]
    attnviz compare-attribution --model cbam_tiny --images DIR --out OUT [--top-k 0.2]

Each writes ``OUT/result/`` (npz + csv + manifest.json), ``OUT/figures/*.png`` and
``OUT/summary.txt``; unusable image files are skipped and listed with their reasons.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

from ..errors import AttnvizError
from ._common import (
    add_image_arguments,
    add_model_arguments,
    load_cli_model,
    model_meta,
    print_error,
)

SUMMARY_FILE = "summary.txt"
FIG6_MAX_CLASSES = 4  # the paper shows four classes (goldfish, pug, plane, cliff)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "excitation",
        help="SENet role of excitation: class-wise SE / ECA / CBAM channel gates per depth",
        description=(
            "Average the channel excitation of every image per class at the last SE site of "
            "each stage plus all sites of the last stage (SENet TPAMI Fig. 6/7), and report a "
            "class-specificity score per site. MODEL is a bundled name (se_tiny, cbam_tiny), "
            "a timm name or a spec timm:NAME, torchvision:NAME."
        ),
    )
    add_model_arguments(p, example="se_tiny or timm:seresnet50")
    add_image_arguments(p)
    p.add_argument(
        "--classes", nargs="+", default=None, help="class names or labels for Fig. 6 / 7"
    )
    p.add_argument("--channels", type=int, default=50, help="channels shown per site (50)")
    p.add_argument("--sites", nargs="+", default=None, help="site aliases (default: paper rule)")
    p.set_defaults(func=run_excitation)

    q = subparsers.add_parser(
        "compare-attribution",
        help="CBAM spatial / GC context maps beside captum Grad-CAM, with agreement scores",
        description=(
            "Capture the spatial attention maps (CBAM spatial gate, GC context weights), "
            "compute Grad-CAM (captum LayerGradCam) at the last convolutional stage for the "
            "ground-truth class (the prediction when the images have no labels), and report "
            "per image the Spearman rank correlation and the IoU of the top-k regions."
        ),
    )
    add_model_arguments(q, example="cbam_tiny or timm:seresnet50")
    add_image_arguments(q)
    q.add_argument("--top-k", type=float, default=0.2, help="fraction of pixels in the region")
    q.add_argument("--sites", nargs="+", default=None, help="site aliases or 'all'")
    q.add_argument("--layer", default=None, help="Grad-CAM layer name (default: last stage)")
    q.add_argument(
        "--target",
        choices=("auto", "label", "prediction"),
        default="auto",
        help="Grad-CAM class: auto = label if known, else prediction",
    )
    q.add_argument("--figure-images", type=int, default=4, help="images in the overlay figure")
    q.set_defaults(func=run_compare)


def _save_figures(figures: dict[str, Any], directory: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figures.items():
        path = directory / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def _report(result: Any, summary: str, out: Path) -> int:
    """Write ``OUT/summary.txt``, print the summary, the skipped files and what was written."""
    (out / SUMMARY_FILE).write_text(summary + "\n")
    print(summary)
    for path, reason in result.skipped:
        print(f"skipped {path}: {reason}")
    print(f"wrote {out / 'result'}, {out / 'figures'} and {out / SUMMARY_FILE}")
    return 0


# --------------------------------------------------------------------------- excitation
def figure_classes(result: Any, classes: Sequence[int | str] | None = None) -> list[int | str]:
    """The classes drawn in Fig. 6 / 7: those given, else the first four recorded ones."""
    if classes:
        return list(classes)
    return [result.class_names[k] for k in range(min(FIG6_MAX_CLASSES, len(result.classes)))]


def excitation_figures(result: Any, classes: Sequence[int | str] | None = None) -> dict:
    """Fig. 6 (chosen classes + all), Fig. 7 (the first chosen class), specificity vs depth."""
    from ..plot.excitation import plot_excitation_by_class, plot_excitation_std, plot_specificity

    shown = figure_classes(result, classes)
    return {
        "fig6_excitation_by_class": plot_excitation_by_class(result, shown),
        "fig7_excitation_std": plot_excitation_std(result, shown[0]),
        "specificity_vs_depth": plot_specificity(result),
    }


def excitation_summary(result: Any) -> str:
    """Specificity per site as a text table, with the image and class counts."""
    table = result.specificity()[
        ["site", "channels", "mean_excitation", "class_spread", "specificity"]
    ]
    chance = result.specificity_chance()
    head = (
        f"{result.n_images} images, {len(result.classes)} classes (labels: "
        f"{result.label_source}); class-blind specificity level ~ {chance:.3f}"
    )
    return head + "\n" + table.to_string(index=False, float_format=lambda v: f"{v:.4f}")


def run_excitation(args: argparse.Namespace) -> int:
    matplotlib.use("Agg")
    from ..analysis.excitation import ExcitationResult, excitation_profile

    loaded = load_cli_model("excitation", args)
    if isinstance(loaded, int):
        return loaded
    model, config = loaded
    out = Path(args.out)
    try:
        result: ExcitationResult = excitation_profile(
            model,
            args.images,
            classes=args.classes,
            sites=args.sites,
            channels=args.channels,
            batch_size=args.batch_size,
            preprocess=config,
            limit=args.limit,
            progress=not args.no_progress,
        )
        result.meta.update(model_meta(args))
        result.save(out / "result")
        _save_figures(excitation_figures(result, args.classes), out / "figures")
    except (AttnvizError, ValueError, KeyError, NotADirectoryError) as exc:
        return print_error("excitation", str(exc).strip("'\""))
    return _report(result, excitation_summary(result), out)


# --------------------------------------------------------------------------- attribution
def overlay_sites(result: Any, max_sites: int = 4) -> list[str]:
    """Sites drawn in the overlay figure: all if few, else the last site of each stage."""
    if len(result.sites) <= max_sites:
        return result.aliases
    last: dict[Any, str] = {}
    for s in result.sites:
        last[(s["kind"], s["stage"])] = s["alias"]
    keep = set(last.values())
    return [s["alias"] for s in result.sites if s["alias"] in keep]


def attribution_figures(result: Any, n_images: int = 4) -> dict:
    """Agreement bars and, if maps were kept, overlays of the first ``n_images`` images."""
    from ..plot.attribution import plot_agreement, plot_attention_vs_gradcam

    figures = {"agreement": plot_agreement(result)}
    if result.gradcam.shape[0] and n_images > 0:
        figures["attention_vs_gradcam"] = plot_attention_vs_gradcam(
            result, max_images=n_images, sites=overlay_sites(result)
        )
    return figures


def attribution_summary(result: Any) -> str:
    table = result.summary()[["site", "n", "spearman_mean", "spearman_std", "iou_mean", "iou_std"]]
    head = (
        f"{len(result.ids)} images, Grad-CAM at {result.layer} for the {result.target_source} "
        f"class; top-{result.top_k:.0%} IoU (chance {result.summary()['iou_chance'].iloc[0]:.3f})"
    )
    return head + "\n" + table.to_string(index=False, float_format=lambda v: f"{v:.3f}")


def run_compare(args: argparse.Namespace) -> int:
    matplotlib.use("Agg")
    from ..analysis.attribution import attention_vs_attribution

    loaded = load_cli_model("compare-attribution", args)
    if isinstance(loaded, int):
        return loaded
    model, config = loaded
    out = Path(args.out)
    sites: Any = args.sites
    if sites == ["all"]:
        sites = "all"
    try:
        result = attention_vs_attribution(
            model,
            args.images,
            target=None if args.target == "auto" else args.target,
            layer=args.layer,
            sites=sites,
            top_k=args.top_k,
            batch_size=args.batch_size,
            preprocess=config,
            limit=args.limit,
            keep_maps=max(args.figure_images, 0),
            progress=not args.no_progress,
        )
        result.meta.update(model_meta(args))
        result.save(out / "result")
        _save_figures(attribution_figures(result, args.figure_images), out / "figures")
    except (AttnvizError, ValueError, KeyError, NotADirectoryError) as exc:
        return print_error("compare-attribution", str(exc).strip("'\""))
    return _report(result, attribution_summary(result), out)


# --------------------------------------------------------------------------- demo part
DEMO_SEED = 30_000  # not a training or held-out seed of the bundled models
DEMO_EXCITATION_PER_CLASS = 10
DEMO_ATTRIBUTION_PER_CLASS = 4
DEMO_FIGURE_IMAGES = 3


def demo(out_dir: Path) -> str:
    """Both analyses on the bundled models over generated images; figures under ``out_dir``.

    Excitation on ``se_tiny`` over 10 images per class; Grad-CAM agreement of every CBAM
    spatial gate of ``cbam_tiny`` and every GC block of ``gc_tiny`` over 4 images per class.
    Returns the text summary (the numbers in the README).
    """
    matplotlib.use("Agg")
    from ..analysis.attribution import attention_vs_attribution
    from ..analysis.excitation import excitation_profile
    from ..data import ShapesDataset
    from ..models import load_model

    out_dir = Path(out_dir)
    model, config = load_model("se_tiny")
    data = ShapesDataset(DEMO_EXCITATION_PER_CLASS, size=64, seed=DEMO_SEED)
    result = excitation_profile(model, data, preprocess=config, batch_size=50, progress=False)
    result.meta["model"] = "se_tiny"
    result.save(out_dir / "excitation_se_tiny" / "result")
    _save_figures(excitation_figures(result), out_dir / "excitation_se_tiny" / "figures")
    texts = [f"Excitation on se_tiny: {excitation_summary(result)}"]
    data = ShapesDataset(DEMO_ATTRIBUTION_PER_CLASS, size=64, seed=DEMO_SEED)
    for name in ("cbam_tiny", "gc_tiny"):
        model, config = load_model(name)
        comparison = attention_vs_attribution(
            model,
            data,
            preprocess=config,
            sites="all",
            batch_size=20,
            keep_maps=DEMO_FIGURE_IMAGES,
            progress=False,
        )
        comparison.meta["model"] = name
        comparison.save(out_dir / f"attribution_{name}" / "result")
        _save_figures(
            attribution_figures(comparison, DEMO_FIGURE_IMAGES),
            out_dir / f"attribution_{name}" / "figures",
        )
        texts.append(f"Spatial attention vs Grad-CAM on {name}: {attribution_summary(comparison)}")
    return "\n\n".join(texts) + f"\n\nfigures: {out_dir}/*/figures"
