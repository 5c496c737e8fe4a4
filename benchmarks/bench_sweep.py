"""Scale-sweep cost: the sweep through the runner against a plain pipeline without capture.

Throughput: both pipelines read the same PNG files through the same input pipeline
(``image_source`` / ``iter_batches``, ``--workers`` decoding processes), build the same views
(1.0x/1.5x/2.0x zoom views cropped from the original pixels plus the two resolution controls:
``ScaleSweep.view_images``) with the model's ``preprocess_for`` transform, and run one forward
per batch of views; the sweep (``attnviz.analysis.runner.run``) adds eval-mode handling,
capture of every SK site and the float64 accumulation. They alternate in one run; each figure
is the median of ``--repeats`` timings after a warm-up. Cases: timm ``skresnet18`` (random
weights) at 224 px, ``sk_tiny`` at 64 px, and ``scenes``: ``sk_tiny`` over generated scenes
rendered natively at each scale (``ShapeScenes``; 3 views, no controls). The issue's target:
ratio (sweep / plain throughput) >= 0.90.

Memory: peak memory of the sweep over 200 and over 2,000 generated images (sk_tiny at 32 px, to
keep the run short), each in a fresh subprocess: peak RSS (``ru_maxrss``) and the peak of
Python-level allocations (``tracemalloc``).

    .venv/bin/python benchmarks/bench_sweep.py             # full run (several minutes)
    .venv/bin/python benchmarks/bench_sweep.py --quick     # smoke check
    .venv/bin/python benchmarks/bench_sweep.py --parts sk_tiny --images 20 --repeats 1
    .venv/bin/python benchmarks/bench_sweep.py --parts scenes --images 50 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from attnviz.analysis.scale_sweep import ScaleSweep, scale_sweep
from attnviz.data import ShapesDataset
from attnviz.data.preprocess import preprocess_for
from attnviz.data.shapes import ShapeScenes
from attnviz.data.sources import image_source, iter_batches
from attnviz.models.tiny import create_tiny

SCALES = (1.0, 1.5, 2.0)
TINY_CFG = dict(
    input_size=(3, 64, 64),
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    interpolation="bilinear",
    crop_pct=1.0,
)


def write_images(root: Path, n: int, side: int) -> Path:
    """n generated shape images of ``side`` px as PNGs in class subfolders."""
    ds = ShapesDataset(-(-n // 10), size=96, seed=5)
    for i in range(n):
        img, label = ds[i]
        d = root / ds.classes[label]
        d.mkdir(parents=True, exist_ok=True)
        if side != 96:
            img = img.resize((side, side), Image.Resampling.BICUBIC)
        img.save(d / f"{i:05d}.png")
    return root


def plain_pipeline(model, images, config, batch_size: int, workers: int = 0) -> int:
    """The sweep's input pipeline, views and forwards, with no runner, capture or sums:
    the same source and batches, the same ``preprocess_for`` views, one forward per batch."""
    transform = preprocess_for(config)
    source = image_source(images)
    views = ScaleSweep(SCALES, native=isinstance(images, ShapeScenes))

    def prepare(img):  # (V, 3, H, W): the zoom views (and controls) the sweep builds
        return torch.stack([transform.tensor(v) for v in views.view_images(img, transform)[0]])

    n = 0
    with torch.no_grad():
        for batch in iter_batches(source, range(len(source)), batch_size, prepare,
                                  workers=workers):  # fmt: skip
            if not len(batch):
                continue
            b, s = batch.x.shape[:2]  # view-major (V * B, 3, H, W), as the sweep runs it
            model(batch.x.transpose(0, 1).reshape(s * b, *batch.x.shape[2:]))
            n += len(batch)
    return n


def sweep_pipeline(model, images, config, batch_size: int, workers: int = 0) -> int:
    return scale_sweep(
        model,
        images,
        scales=None if isinstance(images, ShapeScenes) else SCALES,
        preprocess=config,
        batch_size=batch_size,
        workers=workers,
        progress=False,
    ).n_images


def throughput(name, model, images, config, batch_size, repeats, workers=0) -> dict:
    model.eval()
    n = plain_pipeline(model, images, config, batch_size, workers)  # warm-up (and file cache)
    assert sweep_pipeline(model, images, config, batch_size, workers) == n
    t_plain, t_sweep = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        plain_pipeline(model, images, config, batch_size, workers)
        t_plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sweep_pipeline(model, images, config, batch_size, workers)
        t_sweep.append(time.perf_counter() - t0)
    p, s = statistics.median(t_plain), statistics.median(t_sweep)
    return {
        "case": name,
        "images": n,
        "batch": batch_size,
        "workers": workers,
        "plain_img_per_s": round(n / p, 2),
        "sweep_img_per_s": round(n / s, 2),
        "ratio": round(p / s, 3),
        "plain_s": [round(t, 3) for t in t_plain],
        "sweep_s": [round(t, 3) for t in t_sweep],
    }


def _memory_child(n: int) -> None:
    """Run in a subprocess: sweep n generated images, print peak RSS and tracemalloc peak."""
    import tracemalloc

    torch.manual_seed(0)
    model = create_tiny("sk_tiny").eval()
    cfg = dict(TINY_CFG, input_size=(3, 32, 32))
    ds = ShapesDataset(n // 10, size=64, seed=9)
    tracemalloc.start()
    res = scale_sweep(model, ds, preprocess=cfg, batch_size=50, progress=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # VmHWM: this process's own peak RSS (ru_maxrss would include the parent's before exec)
    status = Path("/proc/self/status").read_text().splitlines()
    hwm = [line for line in status if line.startswith("VmHWM:")]
    rss_mb = (
        int(hwm[0].split()[1]) / 1024
        if hwm
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    print(json.dumps({"images": res.n_images, "peak_rss_mb": rss_mb, "tracemalloc_peak_mb":
                      peak / 2**20}))  # fmt: skip


def memory(n_small: int, n_large: int) -> dict:
    out = {}
    for n in (n_small, n_large):
        run = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(n)],
            capture_output=True,
            text=True,
            check=True,
        )
        out[n] = json.loads(run.stdout.strip().splitlines()[-1])
    small, large = out[n_small], out[n_large]
    return {
        "small": small,
        "large": large,
        "rss_growth_pct": round(100 * (large["peak_rss_mb"] / small["peak_rss_mb"] - 1), 2),
        "tracemalloc_growth_pct": round(
            100 * (large["tracemalloc_peak_mb"] / small["tracemalloc_peak_mb"] - 1), 2
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="fewer images and 2 repeats")
    ap.add_argument("--repeats", type=int, default=5, help="timings per pipeline (median)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader decoding processes")
    ap.add_argument("--images", type=int, default=None,
                    help="images of the sk_tiny case (default 200, --quick 64)")  # fmt: skip
    ap.add_argument("--parts", nargs="+", default=["skresnet18", "sk_tiny", "memory"],
                    choices=["skresnet18", "sk_tiny", "scenes", "memory"],
                    help="what to run")  # fmt: skip
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        _memory_child(args.memory_child)
        return
    repeats = 2 if args.quick else args.repeats
    n_small = args.images or (64 if args.quick else 200)
    import timm

    results = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "timm": timm.__version__,
            "numpy": np.__version__,
            "cpu": platform.processor() or platform.machine(),
            "threads": args.threads,
        },
        "throughput": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        n_big = 8 if args.quick else 16
        if "skresnet18" in args.parts:
            big = write_images(Path(tmp) / "img256", n_big, 256)
            torch.manual_seed(0)
            sk18 = timm.create_model("skresnet18", pretrained=False)
            cfg18 = sk18  # preprocess_for(model): timm's own evaluation transform
            results["throughput"].append(
                throughput("timm skresnet18, 224 px", sk18, big, cfg18, 8, repeats, args.workers)
            )
            print(json.dumps(results["throughput"][-1]), flush=True)
        if "sk_tiny" in args.parts:
            small = write_images(Path(tmp) / "img64", n_small, 64)
            torch.manual_seed(0)
            tiny = create_tiny("sk_tiny")
            results["throughput"].append(
                throughput("sk_tiny, 64 px", tiny, small, TINY_CFG, 32, repeats, args.workers)
            )
            print(json.dumps(results["throughput"][-1]), flush=True)
        if "scenes" in args.parts:
            torch.manual_seed(0)
            tiny = create_tiny("sk_tiny")
            scenes = ShapeScenes(n_small, seed=20_000)
            results["throughput"].append(
                throughput(
                    "sk_tiny, native scenes", tiny, scenes, TINY_CFG, 32, repeats, args.workers
                )  # fmt: skip
            )
            print(json.dumps(results["throughput"][-1]), flush=True)
    if "memory" in args.parts:
        results["memory"] = memory(200, 400 if args.quick else 2000)
        print(json.dumps(results["memory"]), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
