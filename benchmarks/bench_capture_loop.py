"""Per-image capture (issue 27): ``capture()`` entered once per image against a plain loop.

Over ``--images`` images (batch 1), four loops alternate in every repeat, plain first:

* ``plain``: ``model(x)`` per image, no capture;
* ``per image``: ``with attnviz.capture(model) as cache: model(x)`` per image (site discovery
  served by attnviz's per-model cache, ``attnviz.capture.core._cached_scan``);
* ``once created``: one ``cap = attnviz.capture(model)`` made before the loop, ``with cap:``
  entered per image (its cache accumulates the images along the batch axis);
* ``no cache``: as ``per image``, with ``clear_site_cache()`` before each entry (what the cost
  was before the discovery cache: a full scan of the model per entry).

Each ratio is the median over ``--repeats`` of the paired ratio to the plain loop of the same
repeat, in wall time and in the process's CPU time (all threads summed); one warm-up pass of
each loop first. Target (issue 27): ``per image`` <= 1.05x the plain loop.

    .venv/bin/python benchmarks/bench_capture_loop.py            # 100 images, 32 and 224 px
    .venv/bin/python benchmarks/bench_capture_loop.py --threads 1 --repeats 7
    .venv/bin/python benchmarks/bench_capture_loop.py --quick    # 20 images, 32 px, 2 repeats
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import timm
import torch
from torch import nn

import attnviz
from attnviz.capture.core import clear_site_cache

MODELS = ("timm:skresnet18", "nl_tiny")  # specs of attnviz.load_model (random weights)
TARGET = 1.05


def loops(model: nn.Module, images: list[torch.Tensor]) -> dict[str, Callable[[], None]]:
    """The four loops over ``images`` (see the module docstring)."""

    def plain():
        for x in images:
            model(x)

    def per_image():
        for x in images:
            with attnviz.capture(model):
                model(x)

    def once_created():
        cap = attnviz.capture(model)
        for x in images:
            with cap:
                model(x)

    def no_cache():
        for x in images:
            clear_site_cache()
            with attnviz.capture(model):
                model(x)

    return {
        "plain": plain,
        "per image": per_image,
        "once created": once_created,
        "no cache": no_cache,
    }


def _time(fn: Callable[[], None]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call; CPU time is the process's, all threads summed."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def bench(spec: str, size: int, n_images: int, repeats: int) -> dict:
    model, _ = attnviz.load_model(spec)
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(1, 3, size, size, generator=g) for _ in range(n_images)]
    runs = loops(model, images)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    with torch.inference_mode():
        for run in runs.values():  # warm-up
            run()
        for _ in range(repeats):  # interleaved, plain first
            for k, run in runs.items():
                times[k].append(_time(run))
    med = statistics.median
    row = {
        "model": spec,
        "input": f"{n_images}x1x3x{size}x{size}",
        "sites": len(attnviz.find_sites(model)),
        "plain_s": round(med(t[0] for t in times["plain"]), 4),
    }
    for k in list(runs)[1:]:
        row[f"{k}_s"] = round(med(t[0] for t in times[k]), 4)
        row[f"{k}_ms_per_image"] = round(
            1e3 * med((t[0] - b[0]) / n_images for t, b in zip(times[k], times["plain"])), 3
        )
        for clock, label in ((0, "ratio"), (1, "cpu_ratio")):
            ratios = [t[clock] / b[clock] for t, b in zip(times[k], times["plain"])]
            row[f"{k}_{label}"] = round(med(ratios), 4)
            row[f"{k}_{label}s"] = [round(r, 3) for r in ratios]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="20 images, 32 px, 2 repeats")
    ap.add_argument("--only", nargs="*", default=None, choices=MODELS, help="models to run")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.images, args.repeats = [32], 20, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(
        f"# attnviz {attnviz.__version__}, torch {torch.__version__}, timm {timm.__version__}, "
        f"{platform.machine()}, {os.cpu_count()} cpus, {torch.get_num_threads()} threads, "
        f"{args.images} images of batch 1, median of {args.repeats}; "
        f"load {load[0]:.2f} {load[1]:.2f}",
        flush=True,
    )
    fmt = "{:<15} {:>5} {:>5} {:>8} " + " ".join(["{:>7} {:>6} {:>6} {:>7}"] * 3)
    head = [f"{k} {w}" for k in ("per", "once", "nocache") for w in ("s", "wall", "cpu", "ms/im")]
    print(fmt.format("model", "px", "sites", "plain s", *head))
    rows = []
    start = time.perf_counter()
    for spec in args.only or MODELS:
        for size in args.sizes:
            r = bench(spec, size, args.images, args.repeats)
            rows.append(r)
            cells = []
            for k in ("per image", "once created", "no cache"):
                cells += [
                    f"{r[f'{k}_s']:.3f}",
                    f"{r[f'{k}_ratio']:.3f}",
                    f"{r[f'{k}_cpu_ratio']:.3f}",
                    f"{r[f'{k}_ms_per_image']:.3f}",
                ]
            print(fmt.format(spec, size, r["sites"], f"{r['plain_s']:.3f}", *cells), flush=True)
    for clock in ("ratio", "cpu_ratio"):
        worst = max((r[f"per image_{clock}"] for r in rows), default=float("nan"))
        print(
            f"worst median paired {clock.replace('_', ' ')}, capture() per image: {worst:.3f} "
            f"(target <= {TARGET:.2f})"
        )
    load = os.getloadavg()
    print(f"# total {time.perf_counter() - start:.0f} s; load at the end {load[0]:.2f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
