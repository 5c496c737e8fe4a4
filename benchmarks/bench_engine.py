"""The runner's cost: every analysis through ``attnviz.analysis.runner.run`` against a plain
pipeline with the same images, preprocessing and forwards and no capture.

For each analysis both pipelines read the same PNG files through ``image_source`` /
``iter_batches`` with the model's ``preprocess_for`` transform and run the same forwards
(the sweep: one forward of all views of a batch; the attribution: captum's Grad-CAM forward and
backward); the analysis adds eval-mode handling, capture and its per-batch step. The two
alternate in one run; each figure is the median of ``--repeats`` timings after a warm-up.
Targets (issue 10): sweep, excitation and attribution >= 0.90 of the plain throughput; the
query analyses report theirs.

    .venv/bin/python benchmarks/bench_engine.py               # full run (a few minutes)
    .venv/bin/python benchmarks/bench_engine.py --quick       # smoke check
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from attnviz.analysis.attribution import AttentionVsAttribution
from attnviz.analysis.excitation import ExcitationProfile
from attnviz.analysis.query_independence import QueryIndependence
from attnviz.analysis.runner import run
from attnviz.analysis.scale_sweep import ScaleSweep
from attnviz.data import ShapesDataset, write_image_folder
from attnviz.data.preprocess import preprocess_for
from attnviz.data.sources import image_source, iter_batches
from attnviz.models import load_model


def plain(analysis, model, images, config, batch_size: int) -> int:
    """The analysis's own inputs and forwards (its ``prepare``, ``inputs`` and ``forward``:
    the same views, the same captum Grad-CAM pass) with no runner, eval-mode handling,
    capture or per-batch statistics."""
    analysis.sites(model)  # the analysis's set-up (e.g. the Grad-CAM layer); no capture
    transform = preprocess_for(config)
    analysis.transform = transform
    source = image_source(images)
    n = 0
    grad = torch.enable_grad if analysis.needs_grad else torch.no_grad
    for batch in iter_batches(
        source, range(len(source)), batch_size, lambda img: analysis.prepare(img, transform)
    ):
        with grad():
            analysis.forward(model, analysis.inputs(batch.x), batch)
        n += len(batch)
    return n


# analysis -> (model, its Analysis with the defaults of the analysis function)
ANALYSES: dict[str, tuple[str, Callable]] = {
    "sweep": ("sk_tiny", lambda: ScaleSweep(controls=False)),
    "excitation": ("se_tiny", lambda: ExcitationProfile()),
    "excitation, no null": ("se_tiny", lambda: ExcitationProfile(permutations=0)),
    "attribution": ("cbam_tiny", lambda: AttentionVsAttribution(keep_maps=0)),
    "queries": ("nl_tiny", lambda: QueryIndependence()),
}


def bench(name: str, images: Path, repeats: int, batch_size: int) -> dict:
    spec, make = ANALYSES[name]
    model, config = load_model(spec)
    n = len(image_source(images))

    def analysis() -> None:
        run(make(), model, images, preprocess=config, batch_size=batch_size, progress=False)

    def baseline() -> None:
        assert plain(make(), model.eval(), images, config, batch_size) == n

    for f in (analysis, baseline):  # warm-up
        f()
    times: dict[str, list[float]] = {"analysis": [], "plain": []}
    for _ in range(repeats):
        for key, f in (("analysis", analysis), ("plain", baseline)):
            t0 = time.perf_counter()
            f()
            times[key].append(time.perf_counter() - t0)
    a, p = statistics.median(times["analysis"]), statistics.median(times["plain"])
    return {
        "analysis": name,
        "model": spec,
        "images": n,
        "batch_size": batch_size,
        "analysis_images_per_s": n / a,
        "plain_images_per_s": n / p,
        "ratio": p / a,
        "target": 0.90 if name != "queries" else 0.30,  # queries: issue 27
        "repeats": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--parts", nargs="+", default=list(ANALYSES), choices=list(ANALYSES))
    parser.add_argument("--quick", action="store_true", help="20 images, 1 repeat")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    if args.quick:
        args.images, args.repeats = 20, 1
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        write_image_folder(ShapesDataset(max(1, args.images // 10), seed=77), images)
        rows = [bench(name, images, args.repeats, args.batch_size) for name in args.parts]
    print(
        f"# bench_engine: {platform.processor() or platform.machine()}, torch "
        f"{torch.__version__}, 1 thread, median of {args.repeats}"
    )
    print("| analysis | model | images | runner img/s | plain img/s | ratio | target |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        target = f">= {r['target']:.2f}" if r["target"] else "report"
        print(
            f"| {r['analysis']} | {r['model']} | {r['images']} | "
            f"{r['analysis_images_per_s']:.1f} | {r['plain_images_per_s']:.1f} | "
            f"{r['ratio']:.3f} | {target} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
