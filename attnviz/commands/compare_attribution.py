"""``attnviz compare-attribution``: Grad-CAM across models (the CBAM paper's comparison), or
one model's spatial attention beside Grad-CAM (attnviz's own), and its demo.

    attnviz compare-attribution --model plain_tiny --model se_tiny --model cbam_tiny \
        --images DIR --out OUT            # several models: the paper's Grad-CAM + P(target)
    attnviz compare-attribution --model cbam_tiny --images DIR --out OUT [--top-k 0.2]
                                          # one model: its spatial gates against Grad-CAM

Writes ``OUT/result/``, ``OUT/figures/`` and ``OUT/summary.txt``. ``--model`` may be repeated
or take several names.
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
    fraction,
    load_cli_model,
    model_fingerprint,
    non_negative_int,
    on_main_rank,
    output_folder,
    replicate_options,
    report,
    run_options,
    run_replicates_cli,
    sites_argument,
)

ANALYSIS = "attention_vs_attribution"
PAPER_ANALYSIS = "gradcam_comparison"


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    q = add_subparser(
        subparsers,
        "compare-attribution",
        help="Grad-CAM across models with P(target) (CBAM paper), or one model's spatial "
        "attention beside Grad-CAM",
        description=(
            "With several --model: the CBAM paper's comparison (Sec. 4.3, Fig. 4): Grad-CAM "
            "(captum LayerGradCam, last convolutional stage) of every model on the same images "
            "for the same class (the label; without labels the first model's prediction), with "
            "each model's softmax probability of that class per image. With one --model: "
            "attnviz's own comparison of its spatial attention maps (CBAM spatial gate, GC "
            "context weights, ...) with Grad-CAM from the same forward, at the coarser grid of "
            "the two (the finer map average-pooled), per image the Spearman rank correlation "
            "and the IoU of the top-k regions."
        ),
        conflict_handler="resolve",  # --model is re-declared below to take several
    )
    add_analysis_arguments(q, example="cbam_tiny or timm:seresnet50", batch_size=8)
    q.add_argument(
        "--model",
        required=True,
        action="extend",
        nargs="+",
        help="model(s): a bundled name, a timm name, or timm:NAME, torchvision:NAME, "
        "python:pkg.module:factory; repeat (--model plain_tiny --model se_tiny) or list "
        "several for the paper's Grad-CAM comparison across models",
    )
    q.add_argument(
        "--top-k",
        type=fraction,
        default=0.2,
        help="fraction of pixels in the top-k region (default 0.2)",
    )
    q.add_argument("--layer", default=None, help="Grad-CAM layer name (default: last stage)")
    q.add_argument(
        "--target",
        choices=("auto", "label", "prediction"),
        default="auto",
        help="Grad-CAM class: auto = label if known, else prediction",
    )
    q.add_argument(
        "--figure-images",
        type=non_negative_int,
        default=4,
        help="images in the overlay figure (default 4)",
    )
    q.set_defaults(func=run)


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


def paper_figures(result: Any, n_images: int = 4) -> dict:
    """Grad-CAM of every model per image (CBAM Fig. 4 style), P(target) and the margin per
    model with paired differences, and (with object masks) the localisation on the object."""
    from ..plot.attribution import (
        plot_gradcam_comparison,
        plot_localisation,
        plot_target_probability,
    )

    figures = {"target_probability": plot_target_probability(result)}
    if result.margin is not None:
        figures["margin"] = plot_target_probability(result, measure="margin")
    if result.gradcam_share is not None:
        figures["localisation"] = plot_localisation(result)
    if result.gradcam.ndim == 4 and result.gradcam.shape[1] and n_images > 0:
        figures["gradcam_by_model"] = plot_gradcam_comparison(result, max_images=n_images)
    return figures


def run(args: argparse.Namespace) -> int:
    if len(args.model) > 1:
        return run_models(args)
    return run_one(args)


def run_models(args: argparse.Namespace) -> int:
    """The paper's comparison over several models."""
    from ..analysis.attribution import gradcam_comparison

    if args.weights is not None:
        raise UsageError("--weights needs a single --model")
    if args.sites is not None:
        raise UsageError(
            "--sites selects the attention sites of one --model (its gates against Grad-CAM); "
            "the comparison across models reads no sites"
        )
    if len(set(args.model)) != len(args.model):
        raise UsageError(f"--model names a model twice: {args.model}")
    with (
        distributed_session(args.device) as main,
        output_folder(args.out, [args.images], PAPER_ANALYSIS) as out,
    ):
        models, configs = {}, []
        for spec in args.model:
            models[spec], config = load_cli_model(args, spec)
            configs.append(config)
        fingerprint = {"models": [model_fingerprint(args, spec) for spec in args.model]}

        def analyse(models: Any, **options: Any) -> Any:  # the run and its replicates alike
            return gradcam_comparison(
                models,
                args.images,
                target=None if args.target == "auto" else args.target,
                layer=args.layer,
                **options,
            )

        result = analyse(
            models,
            keep_maps=args.figure_images,
            **run_options(args, out, configs[0], fingerprint),
        )

        def write() -> None:  # rank 0 alone, without collectives (on_main_rank)
            out.save_result(result)
            out.save_figures(paper_figures(result, args.figure_images))
            report(out, result, result.summary())
            run_replicates_cli(
                args, out, result,
                lambda reps: analyse(
                    reps, keep_maps=0, **replicate_options(args, out, configs[0])
                ),
                specs=list(args.model),
            )  # fmt: skip

        on_main_rank(main, write)
        out.remove_checkpoint(PAPER_ANALYSIS)
    return 0


def run_one(args: argparse.Namespace) -> int:
    from ..analysis.attribution import attention_vs_attribution

    args.model = args.model[0]
    with (
        distributed_session(args.device) as main,
        output_folder(args.out, [args.images], ANALYSIS) as out,
    ):
        model, config = load_cli_model(args)

        def analyse(model: Any, **options: Any) -> Any:  # the run and its replicates alike
            return attention_vs_attribution(
                model,
                args.images,
                target=None if args.target == "auto" else args.target,
                layer=args.layer,
                sites=sites_argument(args.sites),
                top_k=args.top_k,
                **options,
            )

        result = analyse(
            model,
            keep_maps=args.figure_images,
            **run_options(args, out, config, model_fingerprint(args)),
        )

        def write() -> None:  # rank 0 alone, without collectives (on_main_rank)
            out.save_result(result)
            out.save_figures(attribution_figures(result, args.figure_images))
            report(out, result, result.summary())
            run_replicates_cli(
                args, out, result,
                lambda models: analyse(
                    models[args.model], keep_maps=0, **replicate_options(args, out, config)
                ),
            )  # fmt: skip

        on_main_rank(main, write)
        out.remove_checkpoint(ANALYSIS)
    return 0


# --------------------------------------------------------------------------- demo part
DEMO_FIGURE_IMAGES = 3


def demo(out_dir: Path, images: Path) -> str:
    """Grad-CAM agreement of every spatial site of ``cbam_tiny`` and ``gc_tiny``."""
    from ..analysis.attribution import attention_vs_attribution
    from ..models import load_model

    texts = []
    for name in ("cbam_tiny", "gc_tiny"):
        model, config = load_model(name)
        with output_folder(out_dir / name, [images]) as out:
            result = attention_vs_attribution(
                model,
                images,
                preprocess=config,
                sites="all",
                batch_size=20,
                keep_maps=DEMO_FIGURE_IMAGES,
                progress=False,
            )
            result.meta["model"] = name
            out.save_result(result)
            out.save_figures(attribution_figures(result, DEMO_FIGURE_IMAGES))
            out.save_summary(result.summary())
        texts.append(f"Spatial attention vs Grad-CAM on {name}: {result.summary()}")
    texts.append(demo_models(out_dir / "models", images))
    return "\n\n".join(t for t in texts if t) + f"\nfigures: {out_dir}/*/figures"


PAPER_MODELS = ("plain_tiny", "se_tiny", "cbam_tiny")


def demo_models(out_dir: Path, images: Path) -> str:
    """The paper's comparison over the bundled plain_tiny, se_tiny and cbam_tiny (those of
    them that are bundled; nothing if fewer than two are)."""
    from ..analysis.attribution import gradcam_comparison
    from ..models import bundled_models, load_model

    names = [n for n in PAPER_MODELS if n in bundled_models()]
    if len(names) < 2:
        return ""
    models, configs = {}, []
    for name in names:
        models[name], config = load_model(name)
        configs.append(config)
    with output_folder(out_dir, [images]) as out:
        result = gradcam_comparison(
            models,
            images,
            preprocess=configs[0],
            batch_size=20,
            keep_maps=DEMO_FIGURE_IMAGES,
            progress=False,
        )
        out.save_result(result)
        out.save_figures(paper_figures(result, DEMO_FIGURE_IMAGES))
        out.save_summary(result.summary())
    return f"Grad-CAM across models (CBAM paper Sec. 4.3): {result.summary()}"
