"""Capture overhead: a plain forward against the same forward inside ``capture()``.

Plain and captured forwards alternate in one run (so drift affects both alike); each figure is
the median of ``--repeats`` timings after warm-up. Run:

    .venv/bin/python benchmarks/bench_capture.py            # 224 px, batch 16, 7 repeats
    .venv/bin/python benchmarks/bench_capture.py --quick    # smaller, for a smoke check
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import timm
import torch

import attnviz

CASES = (
    ("skresnet18", {}, {}),
    ("seresnet50", {}, {}),
    ("resnet50+nl", {"block_args": {"attn_layer": "nl"}}, {}),
    ("resnet50+nl, 4 queries", {"block_args": {"attn_layer": "nl"}}, {"queries": [(0, 0)] * 4}),
)


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(name: str, model_kw: dict, capture_kw: dict, size: int, batch: int, repeats: int):
    arch = name.split("+")[0]
    model = timm.create_model(arch, pretrained=False, **model_kw).eval()
    x = torch.randn(batch, 3, size, size)
    n_sites = len(attnviz.find_sites(model))

    def plain():
        with torch.inference_mode():
            model(x)

    def captured():
        with attnviz.capture(model, **capture_kw) as cache, torch.inference_mode():
            model(x)
        captured.nbytes = cache.nbytes()

    plain(), captured()  # warm-up
    t_plain, t_capt = [], []
    for _ in range(repeats):
        t_plain.append(_time(plain))
        t_capt.append(_time(captured))
    p, c = statistics.median(t_plain), statistics.median(t_capt)
    return {
        "model": name,
        "sites": n_sites,
        "plain_s": round(p, 4),
        "capture_s": round(c, 4),
        "ratio": round(c / p, 4),
        "cache_MiB": round(captured.nbytes / 2**20, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="64 px, batch 2, 3 repeats")
    ap.add_argument("--only", nargs="*", default=None, help="model names to run")
    args = ap.parse_args()
    if args.quick:
        args.size, args.batch, args.repeats = 64, 2, 3
    print(
        f"# torch {torch.__version__}, timm {timm.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} threads, {args.size}px, batch {args.batch}, "
        f"median of {args.repeats}"
    )
    header = ("model", "sites", "plain s", "capture s", "ratio", "cache MiB")
    print("{:<22} {:>5} {:>9} {:>10} {:>7} {:>10}".format(*header))
    rows = []
    for name, model_kw, capture_kw in CASES:
        if args.only and name not in args.only:
            continue
        r = bench(name, model_kw, capture_kw, args.size, args.batch, args.repeats)
        rows.append(r)
        print(
            f"{r['model']:<22} {r['sites']:>5} {r['plain_s']:>9.3f} {r['capture_s']:>10.3f} "
            f"{r['ratio']:>7.3f} {r['cache_MiB']:>10.1f}"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
