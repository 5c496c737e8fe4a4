"""``attnviz ablate``: does the output depend on the attention? Replace it and compare.

    attnviz ablate --model se_tiny --images DIR --out OUT [--policy remove mean shuffle]
        [--sites SE_2_1 stage:3 ...] [--scopes site stage all] [--reference DIR] [--bank 16]
    attnviz ablate --model sk_tiny --scale-patching 100 --out OUT   # SKNet, interchange

For every chosen site, every stage and all sites together, and every policy, the paired change
of the output (accuracy, P(target), target logit, KL, top-1 agreement) with s.e., bootstrap
CIs and Holm-adjusted sign-flip p. Writes ``OUT/result/``, ``OUT/figures/`` and
``OUT/summary.txt`` like every analysis command.
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
    sites_argument,
)

ANALYSIS = "ablation"
SCOPES = ("site", "stage", "all")
# the registry's names (attnviz.capture.policies), repeated so that the parser needs no torch;
# a test checks that they agree
POLICY_NAMES = ("constant", "remove", "mean", "shuffle", "uniform", "query_mean", "branch")


def policy_argument(text: str) -> str:
    """A policy spec (``constant:1``, ``branch:0``); ``patch`` needs a source the CLI lacks."""
    name = text.partition(":")[0]
    if name == "patch":
        raise argparse.ArgumentTypeError(
            "patch needs the attention of another input: use the Python API "
            "(attnviz.intervene(..., source=)) or the scale-patching recipe"
        )
    if name not in POLICY_NAMES:
        raise argparse.ArgumentTypeError(
            f"unknown policy {text!r}; valid: constant:V, remove, mean, shuffle[:SEED], "
            "uniform, query_mean, branch:K"
        )
    return text


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = add_subparser(
        subparsers,
        "ablate",
        help="interventions: replace attention at sites / stages and measure the output change",
        description=(
            "Replace the attention of each chosen site, each stage and all sites together by "
            "each policy (remove: gates 1 and distributions uniform; mean: the average "
            "attention over a reference set, input-independent; shuffle: another image's "
            "attention; constant:V, uniform, query_mean, branch:K) and report the paired "
            "change of the output with s.e., bootstrap 95%% CIs and Holm-adjusted sign-flip "
            "p-values."
        ),
    )
    add_analysis_arguments(p, example="se_tiny or timm:seresnet50", batch_size=16)
    p.add_argument(
        "--policy",
        nargs="+",
        type=policy_argument,
        default=["remove", "mean", "shuffle"],
        metavar="POLICY",
        help="policies (default: remove mean shuffle)",
    )
    p.add_argument(
        "--scopes",
        nargs="+",
        choices=SCOPES,
        default=list(SCOPES),
        help="site groups: each site, each stage, all sites (default: all three)",
    )
    p.add_argument(
        "--reference",
        default=None,
        help="image folder of the reference pass of mean/shuffle (default: --images)",
    )
    p.add_argument(
        "--bank",
        type=positive_int,
        default=16,
        help="reference images whose attention shuffle draws from (default 16)",
    )
    for action in p._actions:  # --images or --scale-patching (checked in run)
        if action.dest == "images":
            action.required = False
            action.help = "image folder (class subfolders = labels); or use --scale-patching"
    p.add_argument(
        "--scale-patching",
        type=positive_int,
        default=None,
        metavar="N",
        help="instead of --images and --policy: N generated scenes rendered at 1.0x and 2.0x; "
        "SK selections patched between the scales, against another scene's at the same scale",
    )
    p.add_argument(
        "--shapes-seed", type=int, default=20_000, help="seed of the generated scenes (20000)"
    )
    p.set_defaults(func=run)


def ablation_figures(result: Any) -> dict:
    """Per-site bars with CIs per policy, and the group x policy heatmap."""
    from ..plot import ablation as plots

    measure = (
        "accuracy"
        if result.original.get("accuracy") is not None and len(result.original["accuracy"])
        else "p_true"
    )
    figures = {"ablation_heatmap": plots.plot_ablation_heatmap(result, measure=measure)}
    if result.meta.get("analysis") == "scale_patching":
        figures["scale_patching"] = plots.plot_patching(result, scope=None)
    elif any(scope == "site" for scope in result.scopes.values()):
        figures["ablation_site_bars"] = plots.plot_ablation_bars(result, measure="p_true")
    return figures


def _analysis(args: argparse.Namespace, model: Any, options: dict[str, Any]) -> Any:
    if args.scale_patching is not None:
        from ..analysis.scale_patching import scale_patching
        from ..data.shapes import ShapeScenes, train_object_size_range

        scenes = ShapeScenes(
            args.scale_patching,
            scales=(1.0, 2.0),
            seed=args.shapes_seed,
            object_range=train_object_size_range(args.model),
        )
        return scale_patching(
            model, scenes, sites=sites_argument(args.sites), scopes=args.scopes, **options
        )
    from ..analysis.ablation import ablation

    return ablation(
        model,
        args.images,
        policies=args.policy,
        sites=sites_argument(args.sites),
        scopes=args.scopes,
        reference=args.reference,
        bank=args.bank,
        **options,
    )


def run(args: argparse.Namespace) -> int:
    if (args.images is None) == (args.scale_patching is None):
        raise UsageError("give exactly one of --images DIR and --scale-patching N")
    if args.reference is not None and not Path(args.reference).exists():
        raise UsageError(f"--reference {args.reference} does not exist")
    folders = [f for f in (args.images, args.reference) if f is not None]
    analysis = ANALYSIS if args.scale_patching is None else "scale_patching"
    with (
        distributed_session(args.device) as main,
        output_folder(args.out, folders, analysis) as out,
    ):
        model, config = load_cli_model(args)
        result = _analysis(args, model, run_options(args, out, config, model_fingerprint(args)))
        result.meta["model"] = args.model

        def write() -> None:  # rank 0 alone, without collectives (on_main_rank)
            out.save_result(result)
            out.save_figures(ablation_figures(result))
            report(out, result, result.summary())
            run_replicates_cli(
                args, out, result,
                lambda models: _analysis(
                    args, models[args.model], replicate_options(args, out, config)
                ),
            )  # fmt: skip

        on_main_rank(main, write)
        out.remove_checkpoint(analysis)
    return 0


# --------------------------------------------------------------------------- demo part
def demo(out_dir: Path, images: Path) -> str:
    """A short ablation of se_tiny (per stage, remove / mean / shuffle) on ``images``."""
    from ..analysis.ablation import ablation
    from ..models import load_model

    model, config = load_model("se_tiny")
    with output_folder(out_dir, [images]) as out:
        result = ablation(
            model,
            images,
            scopes=("stage", "all"),
            preprocess=config,
            batch_size=50,
            limit=100,
            progress=False,
        )
        result.meta["model"] = "se_tiny"
        out.save_result(result)
        out.save_figures(ablation_figures(result))
        out.save_summary(result.summary())
    return f"{result.summary()}\nfigures: {out_dir / 'figures'}"
