"""``attnviz queries``: GCNet query-independence statistics and query-map figures.

``attnviz queries --model SPEC [--weights PATH] --images DIR --out DIR [--queries 4]
[--limit N]`` writes into DIR:

* ``statistics.csv`` / ``statistics.json``: one row per Non-local / GC site, mean and std
  over images of cos_input, cos_output, cos_att, jsd_att (GC: entropy, entropy_norm);
* ``result/``: the full :class:`QueryIndependenceResult` (per-image values, manifest);
* ``query_maps.png`` (GCNet Fig. 2 style), ``query_distances.png``, ``statistics_table.png``;
* ``skipped.csv``: files that could not be used, with the reason.

:func:`demo` runs the analysis on the four bundled Non-local models over a small generated
held-out split (used by ``attnviz demo``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..analysis.query_independence import QueryIndependenceResult, query_independence
from ..analysis.query_maps import (
    grid_queries,
    pick_site,
    prepare_image,
    query_maps,
)
from ..capture import is_query_kind
from ..data.sources import image_source, iter_batches
from ..errors import AttnvizError
from ..plot.queries import (
    TABLE_METRICS,
    plot_query_distances,
    plot_query_grid,
    plot_statistics_table,
    statistics_table,
)
from ._common import resolve_spec

DEMO_MODELS = ("nl_tiny", "nl_tiny_gaussian", "nl_tiny_dot", "nl_tiny_concat")
HELD_OUT_SEED = 10_000  # attnviz.models.train: held-out data seed = training seed (0) + 10000


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "queries",
        help="GCNet query-independence statistics of Non-local attention, query-map figures",
        description=(
            "Measure how much Non-local attention maps depend on the query position (GCNet "
            "Table 1: average cosine distance of inputs, outputs and attention rows over pairs "
            "of positions, and the JSD of attention rows) and draw per-query maps (Fig. 2)."
        ),
    )
    p.add_argument(
        "--model",
        required=True,
        nargs="+",
        help="bundled name (nl_tiny, ...) or model spec; several models give one table "
        "(table1.csv / .md / .png beside GCNet's numbers) and a subfolder per model",
    )
    p.add_argument("--weights", default=None, help="local .safetensors / .pth checkpoint")
    p.add_argument("--images", required=True, help="image folder (flat or class subfolders)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--queries", type=int, default=4, help="query points per image in figures")
    p.add_argument("--limit", type=int, default=None, help="use at most N images")
    p.add_argument("--site", default=None, help="site for the figures (default: first)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--figure-images", type=int, default=3, help="images in the query-map grid")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def load_images(
    root: str | Path, preprocess: Any, limit: int | None = None
) -> tuple[list[torch.Tensor], list[str], list[tuple[str, str]]]:
    """Model inputs of the usable images under ``root``, their paths, and (path, reason) of
    the others (class subfolders are read, their labels ignored)."""
    source = image_source(root, id_style="path")
    tensors, used, skipped = [], [], []
    prepare = lambda img: prepare_image(img, preprocess)[0]  # noqa: E731
    for batch in iter_batches(source, 64, prepare, limit=limit):
        tensors.extend(batch.x[: len(batch.indices)])
        used.extend(source.ids[i] for i in batch.indices)
        skipped.extend(batch.skipped)
    return tensors, used, skipped


def write_outputs(
    out: Path,
    result: QueryIndependenceResult,
    maps: list,
    *,
    skipped: Sequence[tuple[str, str]] = (),
) -> dict[str, Path]:
    """Statistics (csv, json, result dir) and figures of one model into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    frame = result.to_frame()
    frame.to_csv(out / "statistics.csv", index=False)
    payload = {
        "model": result.model,
        "include_diagonal": result.include_diagonal,
        "n_images": result.n_images,
        "notes": result.notes,
        "sites": json.loads(frame.to_json(orient="records")),
    }
    (out / "statistics.json").write_text(json.dumps(payload, indent=2))
    result.save(out / "result")
    files = {"statistics.csv": out / "statistics.csv", "statistics.json": out / "statistics.json"}
    if any(is_query_kind(s["kind"]) for s in result.sites):
        fig = plot_statistics_table(result)
        fig.savefig(out / "statistics_table.png", dpi=120, bbox_inches="tight")
        files["statistics_table.png"] = out / "statistics_table.png"
    if maps:
        plot_query_grid(maps).savefig(out / "query_maps.png", dpi=120, bbox_inches="tight")
        files["query_maps.png"] = out / "query_maps.png"
        if maps[0].n_queries > 1:
            fig = plot_query_distances(maps[0])
            fig.savefig(out / "query_distances.png", dpi=120, bbox_inches="tight")
            files["query_distances.png"] = out / "query_distances.png"
    with open(out / "skipped.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "reason"])
        writer.writerows(skipped)
    return files


def _figure_maps(
    model: nn.Module, images: Sequence[torch.Tensor], n_queries: int, site: str | None
) -> list:
    if n_queries < 1 or not images:
        return []
    site_obj, _, _ = pick_site(model, site)
    if site_obj.kind == "gc":
        return [query_maps(model, x, queries=None, site=site_obj.name) for x in images]

    def cells(grid: tuple[int, int]) -> list[tuple[int, int]]:
        return grid_queries(grid, n_queries)

    return [
        query_maps(model, x, queries=cells, site=site_obj.name, query_space="cell") for x in images
    ]


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.weights is not None and len(args.model) > 1:
        print("attnviz queries: --weights needs a single --model", file=sys.stderr)
        return 2
    results = []
    for spec in args.model:
        sub = out if len(args.model) == 1 else out / spec.replace(":", "_").replace("/", "_")
        result = _run_one(args, spec, sub)
        if result is None:
            return 2
        results.append(result)
    if len(results) > 1:
        table = statistics_table(results)
        table.to_csv(out / "table1.csv", index=False)
        (out / "table1.md").write_text(markdown_table(table))
        fig = plot_statistics_table(results)
        fig.savefig(out / "table1.png", dpi=120, bbox_inches="tight")
        print(markdown_table(table))
    print(f"wrote {out}")
    return 0


def _run_one(args: argparse.Namespace, spec: str, out: Path) -> QueryIndependenceResult | None:
    from ..models import load_model

    try:
        model, pre = load_model(resolve_spec(spec), weights=args.weights)
    except (AttnvizError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"attnviz queries: cannot load model {spec!r}: {exc}", file=sys.stderr)
        return None
    try:
        tensors, used, skipped = load_images(args.images, pre, args.limit)
    except (NotADirectoryError, ValueError) as exc:
        print(f"attnviz queries: {exc}", file=sys.stderr)
        return None
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if not tensors:
        print(f"attnviz queries: no usable images in {args.images}", file=sys.stderr)
        return None
    try:
        result = query_independence(
            model,
            tensors,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            model_name=spec,
        )
        maps = _figure_maps(model, tensors[: args.figure_images], args.queries, args.site)
    except (AttnvizError, ValueError) as exc:
        print(f"attnviz queries: {exc}", file=sys.stderr)
        return None
    write_outputs(out, result, maps, skipped=skipped)
    print(_summary(result, used=len(used), skipped=len(skipped)))
    return result


def markdown_table(table: pd.DataFrame, digits: int = 3) -> str:
    """A :func:`statistics_table` as a Markdown table ("mean ± std", n/a where undefined)."""
    head = "| model | site | instantiation | images | cos input | cos output | cos att | JSD att |"
    lines = [head, "|" + "---|" * 8]
    for _, row in table.iterrows():
        cells = []
        for m in TABLE_METRICS:
            v, sd = row[m], row.get(f"{m}_std")
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append("n/a")
            elif sd is None or (isinstance(sd, float) and math.isnan(sd)):
                cells.append(f"{v:.{digits}f}")
            else:
                cells.append(f"{v:.{digits}f} ± {sd:.{digits}f}")
        n = row.get("n_images")
        n = "" if n is None or (isinstance(n, float) and math.isnan(n)) else str(int(n))
        lines.append(
            f"| {row['model']} | {row['site']} | {row['instantiation']} | {n} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def _summary(result: QueryIndependenceResult, *, used: int, skipped: int = 0) -> str:
    frame = result.to_frame()
    cols = ["site", "kind", "instantiation"] + [
        c for c in frame.columns if c.endswith("_mean") or c.endswith("_std")
    ]
    head = f"{result.model}: {used} images ({skipped} skipped), pairs include i = j"
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        return head + "\n" + frame[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}")


def reproduce(
    models: Sequence[str] = DEMO_MODELS,
    *,
    n_per_class: int = 2,
    seed: int = HELD_OUT_SEED,
    batch_size: int = 10,
    progress: bool = False,
) -> tuple[list[QueryIndependenceResult], pd.DataFrame]:
    """GCNet Table 1 on the bundled Non-local models over the generated held-out split.

    Images: ``ShapesDataset(n_per_class, size=64, seed=seed)`` (seed 10000 = the held-out
    split of the bundled checkpoints). Returns the results and the :func:`statistics_table`.
    """
    from ..data import ShapesDataset
    from ..models import load_model

    results = []
    for name in models:
        model, pre = load_model(name)
        ds = ShapesDataset(n_per_class, size=int(pre.input_size[-1]), seed=seed)
        images = [prepare_image(ds[i][0], pre)[0] for i in range(len(ds))]
        results.append(
            query_independence(
                model, images, batch_size=batch_size, progress=progress, model_name=name
            )
        )
    return results, statistics_table(results)


def demo(out_dir: Path) -> str:
    """Run the reproduction on the bundled nl_tiny models (small held-out split), write the
    table and figures into ``out_dir``, return a text summary."""
    from ..data import ShapesDataset
    from ..models import load_model

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, table = reproduce(DEMO_MODELS, n_per_class=1)
    table.to_csv(out_dir / "query_independence.csv", index=False)
    plot_statistics_table(results).savefig(
        out_dir / "query_independence_table.png", dpi=120, bbox_inches="tight"
    )
    model, pre = load_model(DEMO_MODELS[0])
    ds = ShapesDataset(1, size=int(pre.input_size[-1]), seed=HELD_OUT_SEED)
    images = [prepare_image(ds[i][0], pre)[0] for i in range(min(3, len(ds)))]
    maps = _figure_maps(model, images, 4, None)
    plot_query_grid(maps).savefig(out_dir / "query_maps.png", dpi=120, bbox_inches="tight")
    plot_query_distances(maps[0]).savefig(
        out_dir / "query_distances.png", dpi=120, bbox_inches="tight"
    )
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
    lines.append(f"  figures: {out_dir} ({time.perf_counter() - t0:.1f} s)")
    return "\n".join(lines)
