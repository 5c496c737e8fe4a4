"""Scale-sweep cost: the end-to-end sweep against the same pipeline without capture/accumulation.

Throughput: both pipelines decode the same PNG files, build the same 1.0x/1.5x/2.0x views,
and run one forward per batch of views; the sweep adds capture of every SK unit and the float64
accumulation. They alternate in one run; each figure is the median of ``--repeats`` timings
after a warm-up. Cases: timm ``skresnet18`` (random weights) at 224 px and ``sk_tiny`` at 64 px.

Memory: peak memory of the sweep over 200 and over 2,000 generated images (sk_tiny at 32 px, to
keep the run short), each in a fresh subprocess: peak RSS (``ru_maxrss``) and the peak of
Python-level allocations (``tracemalloc``).

    .venv/bin/python benchmarks/bench_sweep.py             # full run (several minutes)
    .venv/bin/python benchmarks/bench_sweep.py --quick     # smoke check
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

from attnviz.analysis.scale_sweep import scale_sweep
from attnviz.data import ShapesDataset
from attnviz.data.sources import image_source
from attnviz.data.views import scale_views, view_spec
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


def plain_pipeline(model, images, config, batch_size: int) -> int:
    """Decode, views, one forward per batch: the sweep's pipeline with no capture/sums."""
    spec = view_spec(config)
    source = image_source(images, None, id_style="relative")
    n = 0
    with torch.no_grad():
        for start in range(0, len(source), batch_size):
            views = []
            for i in range(start, min(start + batch_size, len(source))):
                img, _, _ = source.load(i)
                if img is not None:
                    views.append(scale_views(img, spec, SCALES))
            x = torch.stack(views, dim=1)
            model(x.reshape(-1, *x.shape[2:]))
            n += len(views)
    return n


def sweep_pipeline(model, images, config, batch_size: int) -> int:
    return scale_sweep(
        model, images, scales=SCALES, preprocess=config, batch_size=batch_size, progress=False
    ).n_images


def throughput(name, model, images, config, batch_size, repeats) -> dict:
    model.eval()
    n = plain_pipeline(model, images, config, batch_size)  # warm-up (and file cache)
    sweep_pipeline(model, images, config, batch_size)
    t_plain, t_sweep = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        plain_pipeline(model, images, config, batch_size)
        t_plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sweep_pipeline(model, images, config, batch_size)
        t_sweep.append(time.perf_counter() - t0)
    p, s = statistics.median(t_plain), statistics.median(t_sweep)
    return {
        "case": name,
        "images": n,
        "batch": batch_size,
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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--parts", nargs="+", default=["skresnet18", "sk_tiny", "memory"], help="what to run"
    )
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        _memory_child(args.memory_child)
        return
    repeats = 2 if args.quick else args.repeats
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
        big = write_images(Path(tmp) / "img256", n_big, 256)
        small = write_images(Path(tmp) / "img64", 64 if args.quick else 200, 64)
        if "skresnet18" in args.parts:
            torch.manual_seed(0)
            sk18 = timm.create_model("skresnet18", pretrained=False)
            from timm.data import resolve_data_config

            cfg18 = resolve_data_config(model=sk18)
            results["throughput"].append(
                throughput("timm skresnet18, 224 px", sk18, big, cfg18, 8, repeats)
            )
            print(json.dumps(results["throughput"][-1]), flush=True)
        if "sk_tiny" in args.parts:
            torch.manual_seed(0)
            tiny = create_tiny("sk_tiny")
            results["throughput"].append(
                throughput("sk_tiny, 64 px", tiny, small, TINY_CFG, 32, repeats)
            )
            print(json.dumps(results["throughput"][-1]), flush=True)
    if "memory" in args.parts:
        results["memory"] = memory(200, 400 if args.quick else 2000)
        print(json.dumps(results["memory"]), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
