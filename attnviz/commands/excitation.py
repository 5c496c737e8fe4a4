"""``attnviz excitation``: SENet's role of excitation from the command line (and its demo).

    attnviz excitation --model se_tiny --images DIR --out OUT [--classes disc ring] [--channels 50]
        [--permutations 300] [--seed 0]

Writes ``OUT/result/``, ``OUT/figures/`` and ``OUT/summary.txt``; unusable image files are
skipped and listed with their reasons.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._common import (
    add_analysis_arguments,
    add_subparser,
    distributed_session,
    load_cli_model,
    model_fingerprint,
    non_negative_int,
    on_main_rank,
    output_folder,
    positive_int,
    replicate_options,
    report,
    run_options,
    run_replicates_cli,
    sites_argument,
)

ANALYSIS = "excitation_profile"
FIG6_MAX_CLASSES = 4  # the paper shows four classes (goldfish, pug, plane, cliff)


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = add_subparser(
        subparsers,
        "excitation",
        help="SENet role of excitation: class-wise channel gates (SE, ECA, CBAM, ...) per depth",
        description=(
            "Average the channel excitation of every image per class at the last channel-gate "
            "site of each stage plus all sites of the last stage (SENet TPAMI Fig. 6/7), and "
            "report a class-specificity score per site beside two controls: the same score of "
            "the squeeze input GAP(x) and a seeded label-permutation null (mean, 95th "
            "percentile, p-value). Without labels the classes are the model's predictions "
            "(warned: partly circular)."
        ),
    )
    add_analysis_arguments(p, example="se_tiny or timm:seresnet50")
    p.add_argument(
        "--classes",
        nargs="+",
        default=None,
        help="class names or labels for Fig. 6 / 7 (default: all present)",
    )
    p.add_argument(
        "--channels",
        type=positive_int,
        default=50,
        help="evenly spaced channels shown per site (default 50)",
    )
    p.add_argument(
        "--permutations",
        type=non_negative_int,
        default=300,
        help="label permutations of the specificity null (default 300; 0: no null, and no "
        "per-image vectors kept)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the permutations (default 0)")
    p.set_defaults(func=run)


def figure_classes(result: Any, classes: Sequence[int | str] | None = None) -> list[int | str]:
    """The classes drawn in Fig. 6 / 7: those given, else the first four recorded ones."""
    if classes:
        return list(classes)
    return [result.class_names[k] for k in range(min(FIG6_MAX_CLASSES, len(result.classes)))]


def excitation_figures(result: Any, classes: Sequence[int | str] | None = None) -> dict:
    """Fig. 6 (chosen classes + all; and as heatmaps of every class), Fig. 7 (the first
    chosen class), the gate per stage, specificity vs depth."""
    from ..plot.excitation import (
        plot_excitation_by_class,
        plot_excitation_heatmap,
        plot_excitation_std,
        plot_gate_stage_bars,
        plot_specificity,
    )

    shown = figure_classes(result, classes)
    return {
        "fig6_excitation_by_class": plot_excitation_by_class(result, shown),
        "fig7_excitation_std": plot_excitation_std(result, shown[0]),
        "fig6_excitation_heatmap": plot_excitation_heatmap(result),
        "gate_stage_bars": plot_gate_stage_bars(result),
        "specificity_vs_depth": plot_specificity(result),
    }


def run(args: argparse.Namespace) -> int:
    from ..analysis.excitation import excitation_profile

    with (
        distributed_session(args.device) as main,
        output_folder(args.out, [args.images], ANALYSIS) as out,
    ):
        model, config = load_cli_model(args)

        def analyse(model: Any, **options: Any) -> Any:  # the run and its replicates alike
            return excitation_profile(
                model,
                args.images,
                classes=args.classes,
                sites=sites_argument(args.sites),
                channels=args.channels,
                permutations=args.permutations,
                seed=args.seed,
                **options,
            )

        result = analyse(model, **run_options(args, out, config, model_fingerprint(args)))

        def write() -> None:  # rank 0 alone, without collectives (on_main_rank)
            out.save_result(result)
            out.save_figures(excitation_figures(result, args.classes))
            report(out, result, result.summary())
            run_replicates_cli(
                args, out, result,
                lambda models: analyse(models[args.model], **replicate_options(args, out, config)),
            )  # fmt: skip

        on_main_rank(main, write)
        out.remove_checkpoint(ANALYSIS)
    return 0


# --------------------------------------------------------------------------- demo part


def demo(out_dir: Path, images: Path) -> str:
    """Excitation on ``se_tiny`` over the generated images ``images``."""
    from ..analysis.excitation import excitation_profile
    from ..models import load_model

    model, config = load_model("se_tiny")
    with output_folder(out_dir, [images]) as out:
        result = excitation_profile(model, images, preprocess=config, batch_size=50, progress=False)
        result.meta["model"] = "se_tiny"
        out.save_result(result)
        out.save_figures(excitation_figures(result))
        out.save_summary(result.summary())
    return f"Excitation on se_tiny: {result.summary()}\nfigures: {out_dir / 'figures'}"
