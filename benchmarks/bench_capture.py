"""Capture overhead: a plain forward against the same forward inside ``capture()``.

Plain and captured forwards alternate in one run (so drift affects both alike); each figure is
the median of ``--repeats`` timings after warm-up. Run:

    .venv/bin/python benchmarks/bench_capture.py            # 224 px, batch 16, 7 repeats
    .venv/bin/python benchmarks/bench_capture.py --quick    # smaller, for a smoke check
    .venv/bin/python benchmarks/bench_capture.py --only resnest26d botnet26t_256 halonet26t

The hybrid families (ResNeSt, BoTNet, HaloNet; issue 11) run at their own input size (their
pretrained config) and batch ``--own-batch`` (8) whatever ``--size`` / ``--batch`` say.
``hooks s`` is the time spent inside the capture's hooks (reading, canonical layout, caching),
a figure that load on a shared machine disturbs much less than the wall-clock ratio.
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
from attnviz.capture import core as capture_core

_HOOK_SECONDS = [0.0]
_record = capture_core.Capture._record


def _timed_record(self, *args, **kwargs):
    """Capture._record, timed: the work of the hooks (reading, canonical layout, caching)."""
    t0 = time.perf_counter()
    try:
        return _record(self, *args, **kwargs)
    finally:
        _HOOK_SECONDS[0] += time.perf_counter() - t0


capture_core.Capture._record = _timed_record

OWN = "own"  # the model's own input size and --own-batch
CASES = (
    ("skresnet18", {}, {}, None),
    ("seresnet50", {}, {}, None),
    ("resnet50+nl", {"block_args": {"attn_layer": "nl"}}, {}, None),
    (
        "resnet50+nl, 4 queries",
        {"block_args": {"attn_layer": "nl"}},
        {"queries": [(0, 0)] * 4},
        None,
    ),
    ("resnest26d", {}, {}, OWN),
    ("botnet26t_256", {}, {}, OWN),
    ("halonet26t", {}, {}, OWN),
)


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(name: str, model_kw: dict, capture_kw: dict, size, batch: int, repeats: int):
    arch = name.split("+")[0].split(",")[0]
    model = timm.create_model(arch, pretrained=False, **model_kw).eval()
    shape = model.pretrained_cfg["input_size"] if size == OWN else (3, size, size)
    x = torch.randn(batch, *shape)
    n_sites = len(attnviz.find_sites(model))

    def plain():
        with torch.inference_mode():
            model(x)

    def captured():
        with attnviz.capture(model, **capture_kw) as cache, torch.inference_mode():
            model(x)
        captured.nbytes = cache.nbytes()

    plain(), captured()  # warm-up
    t_plain, t_capt, t_hooks = [], [], []
    for _ in range(repeats):
        t_plain.append(_time(plain))
        _HOOK_SECONDS[0] = 0.0
        t_capt.append(_time(captured))
        t_hooks.append(_HOOK_SECONDS[0])
    p, c = statistics.median(t_plain), statistics.median(t_capt)
    return {
        "model": name,
        "input": f"{batch}x{shape[1]}x{shape[2]}",
        "sites": n_sites,
        "plain_s": round(p, 4),
        "capture_s": round(c, 4),
        "ratio": round(c / p, 4),
        "hooks_s": round(statistics.median(t_hooks), 4),
        "cache_MiB": round(captured.nbytes / 2**20, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--own-batch", type=int, default=8, help="batch of the own-size models")
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
    header = ("model", "input", "sites", "plain s", "capture s", "ratio", "hooks s", "cache MiB")
    print("{:<22} {:>12} {:>5} {:>9} {:>10} {:>7} {:>8} {:>10}".format(*header))
    rows = []
    for name, model_kw, capture_kw, size in CASES:
        if args.only and name not in args.only:
            continue
        own = size == OWN
        batch = args.own_batch if own else args.batch
        r = bench(name, model_kw, capture_kw, OWN if own else args.size, batch, args.repeats)
        rows.append(r)
        print(
            f"{r['model']:<22} {r['input']:>12} {r['sites']:>5} {r['plain_s']:>9.3f} "
            f"{r['capture_s']:>10.3f} {r['ratio']:>7.3f} {r['hooks_s']:>8.3f} "
            f"{r['cache_MiB']:>10.1f}"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
