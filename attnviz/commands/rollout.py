"""``attnviz rollout``: attention rollout of a ViT-family model (Abnar & Zuidema 2020).

    attnviz rollout --model vit_tiny_patch16_224 --images DIR --out OUT [--figure-images 3]
        [--residual 0.5] [--sites TOK_...]

Writes ``OUT/result/`` (per image the rollout rows of the prefix tokens and the patch mean
over the patch grid), ``OUT/figures/rollout`` (the class token's rollout beside the image) and
``OUT/summary.txt``. A timm name without weights builds the model with random weights
(``--weights`` loads a local file). Rollout assumes residual mixing of 0.5 and ignores the
MLPs and the values' norms: it is not a faithful attribution.
"""

from __future__ import annotations

import argparse
from typing import Any

from ._common import (
    UsageError,
    add_analysis_arguments,
    add_subparser,
    distributed_session,
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

ANALYSIS = "attention_rollout"


def _residual(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"--residual must be in [0, 1], got {text}")
    return value


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = add_subparser(
        subparsers,
        "rollout",
        help="attention rollout of a ViT-family model (Abnar & Zuidema 2020)",
        description=(
            "Multiply the head-mean token attention of every layer, mixed with the identity "
            "for the residual (0.5 A + 0.5 I, rows renormalised), and draw the class token's "
            "rollout over the patch grid beside the image. Not a faithful attribution: it "
            "ignores the MLPs and the values' norms."
        ),
    )
    add_analysis_arguments(p, example="vit_tiny_patch16_224", batch_size=8)
    p.add_argument(
        "--figure-images",
        type=non_negative_int,
        default=3,
        help="images in the rollout figure (default 3)",
    )
    p.add_argument(
        "--residual",
        type=_residual,
        default=0.5,
        help="weight of the identity (the residual path) in each layer (default 0.5, the paper's)",
    )
    p.set_defaults(func=run)


def rollout_figures(result: Any) -> dict[str, Any]:
    from ..plot.rollout import plot_rollout

    if not len(result.images):
        return {}
    return {"rollout": plot_rollout(result)}


def run(args: argparse.Namespace) -> int:
    from ..analysis.rollout import rollout

    if args.seeds:
        raise UsageError("--seeds needs bundled models; rollout runs on transformer models")
    with (
        distributed_session(args.device) as main,
        output_folder(args.out, [args.images], ANALYSIS) as out,
    ):
        model, config = load_cli_model(args)

        def analyse(model: Any, **options: Any) -> Any:  # the run and its replicates alike
            return rollout(
                model,
                args.images,
                sites=sites_argument(args.sites),
                residual=args.residual,
                model_name=args.model,
                **options,
            )

        result = analyse(
            model,
            map_images=args.figure_images,
            **run_options(args, out, config, model_fingerprint(args)),
        )

        def write() -> None:  # rank 0 alone, without collectives (on_main_rank)
            out.save_result(result)
            out.save_figures(rollout_figures(result))
            report(out, result, result.summary())
            run_replicates_cli(
                args, out, result,
                lambda models: analyse(
                    models[args.model], map_images=0, **replicate_options(args, out, config)
                ),
            )  # fmt: skip

        on_main_rank(main, write)
        out.remove_checkpoint(ANALYSIS)
    return 0
