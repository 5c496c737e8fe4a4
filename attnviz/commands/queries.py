"""``attnviz queries``: GCNet query-independence statistics and query-map figures.

    attnviz queries --model nl_tiny --images DIR --out OUT [--n-queries 4] [--figure-images 3]
    attnviz queries --model nl_tiny nl_tiny_dot --images DIR --out OUT   # one table
    attnviz queries --model nl_tiny --model nl_tiny_dot ... [--exact]    # the same

Writes ``OUT/result/`` (per-image statistics and the maps of the figure), ``OUT/figures/``
(GCNet Fig. 2 style query maps, distances between query maps, the table; at a per-head token
site of a ViT-family model also the per-head maps with the class token's) and
``OUT/summary.txt``; with several models one subfolder each plus ``OUT/table1.csv`` / ``.md``.
Statistics and maps come from one forward per batch. ``--model vit_tiny_patch16_224`` (any
timm name) builds the model with random weights unless ``--weights`` is given; its statistics
are per head and head mean. Above 256 query rows the average JSD
is estimated from 2048 seeded random pairs with its standard error (``--exact``: exact);
the table shows each site's degeneracy (row entropy, effective keys, argmax keys) and flags
near one-hot rows.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..distributed import rank
from ..results import atomic_write_text
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
    positive_int,
    replicate_options,
    report,
    run_options,
    run_replicates_cli,
    sites_argument,
)

ANALYSIS = "query_independence"
DEMO_MODELS = ("nl_tiny", "nl_tiny_gaussian", "nl_tiny_dot", "nl_tiny_concat")
HELD_OUT_SEED = 10_000  # attnviz.models.train: held-out data seed = training seed (0) + 10000
# the analysis's limits (attnviz.analysis.query_independence), repeated here so that building
# the parser does not import torch; tests check that they agree
MAX_FIGURE_QUERIES = 16
EXACT_ROWS = 256
JSD_PAIRS = 2048


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = add_subparser(
        subparsers,
        "queries",
        help="GCNet query-independence statistics of per-query attention, query-map figures",
        description=(
            "Measure how much per-query attention maps (Non-local, self-attention, ...) depend "
            "on the query position (GCNet Table 1: average cosine distance of inputs, outputs "
            "and attention rows over pairs of positions, and the JSD of attention rows) and "
            "draw per-query maps (Fig. 2)."
        ),
        conflict_handler="resolve",  # --model is re-declared below to accumulate
    )
    add_analysis_arguments(p, example="nl_tiny", batch_size=8, several=True)
    p.add_argument(
        "--model",
        required=True,
        action="extend",
        nargs="+",
        help="model(s): a bundled name, a timm name, or timm:NAME, torchvision:NAME, "
        "python:pkg.module:factory (e.g. nl_tiny); several (listed or --model repeated) give "
        "one table",
    )
    p.add_argument(
        "--n-queries",
        type=positive_int,
        default=4,
        help=f"query points per image in the figures (default 4, at most {MAX_FIGURE_QUERIES})",
    )
    p.add_argument(
        "--figure-images",
        type=non_negative_int,
        default=3,
        help="images in the query-map figure (default 3)",
    )
    p.add_argument(
        "--exact",
        action="store_true",
        help=f"exact average JSD at every site (default: sampled from {JSD_PAIRS} random "
        f"pairs above {EXACT_ROWS} query rows, and below where the standard error of the "
        "mean over images stays within 5e-4; the standard error is reported)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled JSD pairs (default 0)")
    p.set_defaults(func=run)


def query_figures(result: Any, viewer: Any = None) -> dict[str, Any]:
    """The figures of a query-independence result; ``viewer``: the maps of every query cell
    of the first image (:func:`viewer_result`), whose per-head maps give ``query_heads`` at a
    per-head site (the figure's query cells, and the prefix tokens' maps)."""
    from ..analysis.query_maps import grid_queries
    from ..plot.queries import plot_query_distances, plot_query_grid, plot_query_heads

    # GCNet Table 1 is a real table: summary.txt, table1.md and the HTML report (not a figure)
    figures: dict[str, Any] = {}
    maps = result.query_maps()
    if maps:
        figures["query_maps"] = plot_query_grid(maps, model=result.model)
        if maps[0].n_queries > 1:
            figures["query_distances"] = plot_query_distances(maps[0], model=result.model)
    if viewer is not None and viewer.head_maps.size:
        cells = [tuple(c) for c in viewer.query_cells.tolist()]
        grid = viewer.meta.get("query_grid") or viewer.site.get("query_grid")
        wanted = [c for c in grid_queries(tuple(grid), 4) if c in cells]
        chosen = sorted({cells.index(c) for c in wanted})
        figures["query_heads"] = plot_query_heads(viewer, queries=chosen, model=result.model)
    return figures


def _image_file(images: Any, ident: str, exclude: Sequence[Any] = ()) -> Path | None:
    """The file of the image ``ident`` (an id of the source ``images``: printable text, so a
    non-UTF-8 name is found through the listing, not rebuilt from the id)."""
    from ..data.sources import image_source

    if isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
        source = image_source(images, exclude=exclude)
        ids = list(source.ids)
        if source.paths is None or ident not in ids:
            return None
        return Path(source.paths[ids.index(ident)])
    path = Path(ident)
    return path if path.is_file() else None


def save_viewer(root: Path, maps: Any) -> Path | None:
    """Save ``maps`` (:func:`viewer_result`) where ``attnviz report`` finds its HTML query
    viewer (``root/viewer/``); None when there are no maps."""
    from ..report import VIEWER_DIR

    return None if maps is None else maps.save(root / VIEWER_DIR)


def viewer_result(
    model: Any, images: Any, result: Any, preprocess: Any, *, exclude: Sequence[Any] = ()
) -> Any:
    """The maps of every query cell of the first image at the figure's site
    (:class:`~attnviz.analysis.query_maps.QueryMapsResult`, one forward), for the query viewer;
    None without a per-query site, or (saying why in one line on stderr) when the first image
    is not a file under ``images``."""
    from ..capture import is_query_kind
    from ..viewer import viewer_maps

    site = result.map_site
    if site is None or not is_query_kind(site["kind"]) or not result.ids:
        return None
    image = _image_file(images, result.ids[0], exclude)
    if image is None:
        print(f"no query viewer: the first image {result.ids[0]} is not a file", file=sys.stderr)
        return None
    maps = viewer_maps(model, image, site=site["name"], preprocess=preprocess)
    maps.meta["model"] = result.model
    return maps


def _one(args: argparse.Namespace, spec: str, out_path: Path) -> Any:
    from ..analysis.query_independence import query_independence

    with output_folder(out_path, [args.images], ANALYSIS) as out:
        model, config = load_cli_model(args, spec)

        def analyse(model: Any, **options: Any) -> Any:  # the run and its replicates alike
            return query_independence(
                model,
                args.images,
                sites=sites_argument(args.sites),
                model_name=spec,
                n_queries=args.n_queries,
                exact=args.exact,
                seed=args.seed,
                **options,
            )

        result = analyse(
            model,
            map_images=args.figure_images,
            **run_options(args, out, config, model_fingerprint(args, spec)),
        )

        def write() -> None:  # rank 0 alone, without collectives (on_main_rank)
            out.save_result(result)
            viewer = viewer_result(model, args.images, result, config, exclude=[out.path])
            out.save_figures(query_figures(result, viewer))
            save_viewer(out.root, viewer)
            report(out, result, result.summary())
            run_replicates_cli(
                args, out, result,
                lambda models: analyse(
                    models[spec], map_images=0, **replicate_options(args, out, config)
                ),
                specs=[spec],
            )  # fmt: skip

        on_main_rank(rank() == 0, write)
        out.remove_checkpoint(ANALYSIS)
    return result


def run(args: argparse.Namespace) -> int:
    from ..plot.queries import statistics_table

    if args.n_queries > MAX_FIGURE_QUERIES:
        raise UsageError(
            f"--n-queries {args.n_queries}: a figure shows at most "
            f"{MAX_FIGURE_QUERIES} query points per image"
        )
    if len(set(args.model)) != len(args.model):
        raise UsageError(f"--model names a model twice: {args.model}")
    if args.weights is not None and len(args.model) > 1:
        raise UsageError("--weights needs a single --model")
    with distributed_session(args.device) as main:
        if len(args.model) == 1:
            _one(args, args.model[0], Path(args.out))
            return 0
        results = []
        with output_folder(args.out, [args.images]) as out:
            for spec in args.model:
                sub = out.path / spec.replace(":", "_").replace("/", "_")
                results.append(_one(args, spec, sub))

            def write() -> None:
                table = statistics_table(results)
                table.to_csv(out.path / "table1.csv", index=False)
                atomic_write_text(out.path / "table1.md", markdown_table(table))
                print(markdown_table(table))

            on_main_rank(main, write)
    return 0


def markdown_table(table: pd.DataFrame, digits: int = 3) -> str:
    """A :func:`~attnviz.plot.queries.statistics_table` as Markdown ("mean ± std", "(se X)"
    after a sampled JSD, n/a, and the degeneracy column with "near one-hot" flags)."""
    from ..plot.queries import DEGENERACY_HEADER, TABLE_METRICS, _fmt, degeneracy_cell

    head = (
        "| model | site | instantiation | images | cos input | cos output | cos att | JSD att | "
        f"{DEGENERACY_HEADER} |"
    )
    lines = [head, "|" + "---|" * 9]
    for _, row in table.iterrows():
        cells = [
            _fmt(
                row[m],
                row.get(f"{m}_std"),
                digits,
                row.get("jsd_att_se") if m == "jsd_att" else None,
            )
            for m in TABLE_METRICS
        ]
        cells.append(degeneracy_cell(row))
        n = row.get("n_images")
        n = "" if n is None or (isinstance(n, float) and math.isnan(n)) else str(int(n))
        lines.append(
            f"| {row['model']} | {row['site']} | {row['instantiation']} | {n} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- demo part
def demo(out_dir: Path, images: Path) -> str:
    """GCNet Table 1 on the bundled Non-local models over the generated held-out images."""
    from ..analysis.query_independence import query_independence
    from ..models import load_model
    from ..plot.queries import TABLE_METRICS, statistics_table

    results = []
    for name in DEMO_MODELS:
        model, config = load_model(name)
        with output_folder(out_dir / name, [images]) as out:
            result = query_independence(
                model, images, preprocess=config, model_name=name, map_images=3, progress=False
            )
            out.save_result(result)
            viewer = viewer_result(model, images, result, config)
            out.save_figures(query_figures(result, viewer))
            save_viewer(out.root, viewer)
            out.save_summary(result.summary())
        results.append(result)
    table = statistics_table(results)
    table.to_csv(out_dir / "table1.csv", index=False)
    atomic_write_text(out_dir / "table1.md", markdown_table(table))
    lines = [
        f"Query independence (GCNet Table 1) on {', '.join(DEMO_MODELS)}, "
        f"{results[0].n_images} held-out images each; mean over images, pairs include i = j:"
    ]
    for _, row in table.iterrows():
        vals = "  ".join(
            f"{m}={row[m]:.3f}"
            if not (isinstance(row[m], float) and math.isnan(row[m]))
            else f"{m}=n/a"
            for m in TABLE_METRICS
        )
        lines.append(f"  {row['model']:<16} {row['instantiation']:<18} {vals}")
    lines.append(f"  figures: {out_dir}/*/figures")
    return "\n".join(lines)
