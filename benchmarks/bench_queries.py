"""Benchmarks of the query-independence statistics and of query-selective capture.

1. GCNet's mean pairwise cosine distance at N = 3136 (a 56x56 Non-local site), K = 256:
   the O(N*K) identity (||mean of normalised vectors||^2) against the naive pairwise
   computation (full N x N cosine matrix in float64, O(N^2 K)), side by side in one run,
   median of repeats; values must agree (the fast one runs in the input's float32).
2. Exact average JSD (blocked, O(N^2 K)) at the bundled nl_tiny site size N = K = 256.
3. Memory of capturing a 56x56 timm NonLocalAttn site: the full attention map against a
   ``queries=`` selection of 4 points (``AttentionCache.nbytes()``), batch 1 and 4.

Run: ``.venv/bin/python benchmarks/bench_queries.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import attnviz
from attnviz.analysis.stats import avg_cosine_distance, avg_jsd


def naive_cosine_distance(v: torch.Tensor) -> float:
    """All N^2 ordered pairs (i = j included) from the full N x N cosine matrix."""
    u = torch.nn.functional.normalize(v.double(), dim=1)
    return float(((1.0 - u @ u.T) / 2.0).mean())


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall-clock and median CPU (process) seconds of ``repeats`` calls, last result.

    CPU time is the fairer measure on a shared machine: a millisecond-long call that is
    preempted once gains a whole scheduler time slice of wall-clock time.
    """
    wall, cpu, out = [], [], None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(wall), statistics.median(cpu), out


def bench_cosine(n: int, k: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(n, k, generator=g) + 0.5
    # interleaved (fast, naive, fast, naive, ...) so both see the same machine load
    fw, fc, nw, nc = [], [], [], []
    for _ in range(repeats):
        w, c, fast = timed(lambda: avg_cosine_distance(v), 1)
        fw.append(w)
        fc.append(c)
        w, c, naive = timed(lambda: naive_cosine_distance(v), 1)
        nw.append(w)
        nc.append(c)
    med = statistics.median
    return {
        "n": n,
        "k": k,
        "fast_s": med(fw),
        "naive_s": med(nw),
        "speedup": med(nw) / med(fw),
        "fast_cpu_s": med(fc),
        "naive_cpu_s": med(nc),
        "speedup_cpu": med(nc) / med(fc),
        "fast": fast,
        "naive": naive,
        "abs_diff": abs(fast - naive),
    }


def bench_jsd(n: int, k: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(n, k, generator=g), dim=1)
    t, _, value = timed(lambda: avg_jsd(p), repeats)
    t64, _, value64 = timed(lambda: avg_jsd(p, dtype=torch.float64), repeats)
    return {"n": n, "k": k, "jsd_s": t, "jsd": value, "jsd64_s": t64, "jsd64": value64}


def bench_capture_memory(batch: int, side: int = 56, channels: int = 64) -> dict:
    from timm.layers import NonLocalAttn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), NonLocalAttn(channels)).eval()
    x = torch.randn(batch, 3, side, side)
    with attnviz.capture(model) as full, torch.no_grad():
        model(x)
    queries = [(10, 10), (10, 45), (45, 10), (45, 45)]
    with attnviz.capture(model, queries=queries) as sel, torch.no_grad():
        model(x)
    return {
        "batch": batch,
        "full_bytes": full.nbytes(),
        "full_shape": tuple(next(iter(full.values())).shape),
        "queries_bytes": sel.nbytes(),
        "queries_shape": tuple(next(iter(sel.values())).shape),
        "ratio": full.nbytes() / sel.nbytes(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {args.repeats}")

    c = bench_cosine(3136, 256, args.repeats)
    print(
        f"cosine avg_dist N={c['n']} K={c['k']}: wall O(N*K) {c['fast_s'] * 1e3:.2f} ms, "
        f"naive N x N {c['naive_s'] * 1e3:.1f} ms, speed-up {c['speedup']:.0f}x; "
        f"CPU {c['fast_cpu_s'] * 1e3:.2f} ms vs {c['naive_cpu_s'] * 1e3:.1f} ms, "
        f"speed-up {c['speedup_cpu']:.0f}x; "
        f"values {c['fast']:.10f} vs {c['naive']:.10f} (|diff| {c['abs_diff']:.1e})"
    )
    assert c["abs_diff"] < 1e-6, "the O(N*K) statistic differs from the pairwise one"

    j = bench_jsd(256, 256, max(1, args.repeats // 2))
    print(
        f"exact avg JSD N={j['n']} K={j['k']}: {j['jsd_s'] * 1e3:.0f} ms float32 terms "
        f"(value {j['jsd']:.9f}), {j['jsd64_s'] * 1e3:.0f} ms float64 (value {j['jsd64']:.9f})"
    )

    for batch in (1, 4):
        m = bench_capture_memory(batch)
        print(
            f"capture 56x56 NonLocalAttn, batch {m['batch']}: full map {m['full_shape']} "
            f"{m['full_bytes'] / 2**20:.1f} MiB, queries=4 {m['queries_shape']} "
            f"{m['queries_bytes'] / 2**10:.1f} KiB ({m['ratio']:.0f}x less)"
        )


if __name__ == "__main__":
    main()
