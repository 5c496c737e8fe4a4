"""Benchmarks of the query-independence statistics and of query-selective capture.

1. GCNet's mean pairwise cosine distance at N = 3136 (a 56x56 Non-local site), K = 256:
   the O(N*K) identity (||mean of normalised vectors||^2) against the naive pairwise
   computation (full N x N cosine matrix in float64, O(N^2 K)), side by side in one run,
   median of repeats; values must agree (the fast one runs in the input's float32).
2. Exact average JSD (blocked, O(N^2 K)) at the bundled nl_tiny site size N = K = 256.
3. Memory of capturing a 56x56 timm NonLocalAttn site: the full attention map against a
   ``queries=`` selection of 4 points (``AttentionCache.nbytes()``), batch 1 and 4.
4. The query analyses through the runner (``query_independence`` with the figure maps kept
   from the same forward, and ``query_maps``) against the plain pipeline: the same image
   folder, the same preprocessing (``preprocess_for``), the same batches and forwards, no
   capture. Timed interleaved in one run, medians; the ratio plain / analysis is reported.
5. Full size: ``query_independence`` on a timm ResNet-50 with a Non-local block in every
   bottleneck (``block_args=dict(attn_layer="nl")``, 16 sites: 3 at 56x56, N = K = 3136;
   random weights, the zero-initialised last BNs kept random so no statistic is trivial),
   224 px, batch 4, all sites, against the plain forward of the same prepared inputs in the
   same batches (no capture), interleaved in one run; target <= 3x the plain forward. Then, on
   one image, the sampled JSD of the 56x56 sites against the exact blocked value
   (``exact=True``), with the reported standard error.

Run: ``.venv/bin/python benchmarks/bench_queries.py [--repeats 5] [--images 100]``;
``--quick`` runs every part once on a few images (a check that the script works);
``--full-size-only [--full-images 8] [--exact-sites 1]`` runs part 5 alone.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import attnviz
from attnviz.analysis import query_independence, query_maps
from attnviz.analysis.stats import avg_cosine_distance, avg_jsd
from attnviz.data import ShapesDataset, write_image_folder
from attnviz.data.preprocess import preprocess_for
from attnviz.data.sources import image_source, iter_batches
from attnviz.models import load_model


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
    lo, hi = side * 10 // 56, side * 45 // 56  # (10, 45) on the 56x56 grid
    queries = [(lo, lo), (lo, hi), (hi, lo), (hi, hi)]
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


def plain_pipeline(model: nn.Module, images: Path, config, batch_size: int) -> int:
    """The runner's work without the analysis: decode, preprocess, one forward per batch."""
    source = image_source(images)
    transform = preprocess_for(config)
    n = 0
    with torch.no_grad():
        for batch in iter_batches(source, range(len(source)), batch_size, transform):
            model(batch.x)
            n += len(batch)
    return n


def bench_runner(n_images: int, batch_size: int, repeats: int) -> list[dict]:
    """Images per second of the query analyses against the plain pipeline (part 4)."""
    model, config = load_model("nl_tiny")
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        images = write_image_folder(
            ShapesDataset(max(1, n_images // 10), size=int(config.input_size[-1]), seed=10_000),
            Path(tmp) / "images",
        )
        paths = sorted(images.rglob("*.png"))
        cells = [(4, 4), (4, 11), (11, 4), (11, 11)]

        def statistics_and_maps() -> int:
            res = query_independence(model, images, preprocess=config, batch_size=batch_size,
                                     map_images=3, n_queries=4, progress=False)  # fmt: skip
            return res.n_images

        def maps_per_image() -> int:  # query_maps is one image per call: batch 1
            for path in paths:
                query_maps(model, str(path), queries=cells, query_space="cell", preprocess=config)
            return len(paths)

        cases = [
            ("query_independence (+3 figure maps)", statistics_and_maps, batch_size),
            ("query_maps, 4 cells, one image per call", maps_per_image, 1),
        ]
        rows = []
        for name, analysis, bs in cases:
            n = plain_pipeline(model, images, config, bs)  # warm-up (and file cache)
            assert analysis() == n
            t_plain, t_run = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                plain_pipeline(model, images, config, bs)
                t_plain.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                analysis()
                t_run.append(time.perf_counter() - t0)
            p, r = statistics.median(t_plain), statistics.median(t_run)
            rows.append({"case": name, "images": n, "batch": bs, "plain_img_per_s": n / p,
                         "analysis_img_per_s": n / r, "ratio": p / r})  # fmt: skip
    return rows


def full_size_model() -> nn.Module:
    import timm
    from timm.layers import NonLocalAttn

    torch.manual_seed(0)
    # random weights (no pretrained NL ResNet-50 exists offline); timm zero-initialises the last
    # BN of every bottleneck and of every Non-local block, which would make every block input
    # zero and every attention row uniform: keep them random / at 1 so no statistic is trivial
    model = timm.create_model(
        "resnet50",
        pretrained=False,
        num_classes=1000,
        block_args=dict(attn_layer="nl"),
        zero_init_last=False,
    )
    for m in model.modules():
        if isinstance(m, NonLocalAttn):
            torch.nn.init.ones_(m.norm.weight)
    return model.eval()


def bench_full_size(n_images: int, batch_size: int, repeats: int, exact_sites: int) -> dict:
    """Part 5: query_independence vs the plain forward on a full-size Non-local ResNet-50."""
    from attnviz.analysis.query_independence import EXACT_ROWS, JSD_PAIRS

    model = full_size_model()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_images, 3, 224, 224, generator=g)  # prepared inputs, as the runner takes
    n_sites = len(attnviz.find_sites(model))

    def plain() -> None:
        with torch.no_grad():
            for start in range(0, n_images, batch_size):
                model(x[start : start + batch_size])

    def analysis():
        return query_independence(model, x, batch_size=batch_size, progress=False)

    plain()  # warm-up
    t_plain, t_run, cpu_plain, cpu_run, result = [], [], [], [], None
    for _ in range(repeats):
        w, c, _ = timed(plain, 1)
        t_plain.append(w)
        cpu_plain.append(c)
        w, c, result = timed(analysis, 1)
        t_run.append(w)
        cpu_run.append(c)
    med = statistics.median
    out = {
        "images": n_images,
        "batch": batch_size,
        "sites": n_sites,
        "plain_s": med(t_plain),
        "analysis_s": med(t_run),
        "ratio": med(t_run) / med(t_plain),
        "plain_cpu_s": med(cpu_plain),
        "analysis_cpu_s": med(cpu_run),
        "cpu_ratio": med(cpu_run) / med(cpu_plain),
        "exact_rows": EXACT_ROWS,
        "pairs": JSD_PAIRS,
        "errors": [],
    }
    # the estimate against the exact value, first image, the sampled (56x56) sites
    frame = result.to_frame()
    sampled = [i for i, s in enumerate(result.sites) if frame["jsd_att_sampled"].iloc[i]]
    sampled = sampled[:exact_sites]
    if sampled:
        names = [result.sites[i]["alias"] for i in sampled]
        t0 = time.perf_counter()
        exact = query_independence(model, x[:1], sites=names, exact=True, progress=False)
        out["exact_s"] = time.perf_counter() - t0
        for j, i in enumerate(sampled):
            est, se = result.values["jsd_att"][0, i], result.jsd_se[0, i]
            ex = exact.values["jsd_att"][0, j]
            out["errors"].append((result.sites[i]["alias"], est, se, ex, est - ex))
    out["summary"] = result.summary()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--images", type=int, default=100, help="images for part 4")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size for part 4")
    parser.add_argument("--quick", action="store_true", help="one repeat, small sizes")
    parser.add_argument("--full-size-only", action="store_true", help="part 5 alone")
    parser.add_argument("--full-images", type=int, default=8, help="images for part 5")
    parser.add_argument("--full-repeats", type=int, default=3, help="repeats of part 5")
    parser.add_argument(
        "--exact-sites", type=int, default=1, help="sampled sites checked against exact (part 5)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.images = 1, 10
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {args.repeats}")
    if args.full_size_only:
        report_full_size(args)
        return

    side = 24 if args.quick else 56
    c = bench_cosine(side * side, 256, args.repeats)
    print(
        f"cosine avg_dist N={c['n']} K={c['k']}: wall O(N*K) {c['fast_s'] * 1e3:.2f} ms, "
        f"naive N x N {c['naive_s'] * 1e3:.1f} ms, speed-up {c['speedup']:.0f}x; "
        f"CPU {c['fast_cpu_s'] * 1e3:.2f} ms vs {c['naive_cpu_s'] * 1e3:.1f} ms, "
        f"speed-up {c['speedup_cpu']:.0f}x; "
        f"values {c['fast']:.10f} vs {c['naive']:.10f} (|diff| {c['abs_diff']:.1e})"
    )
    assert c["abs_diff"] < 1e-6, "the O(N*K) statistic differs from the pairwise one"

    j = bench_jsd(64 if args.quick else 256, 256, max(1, args.repeats // 2))
    print(
        f"exact avg JSD N={j['n']} K={j['k']}: {j['jsd_s'] * 1e3:.0f} ms float32 terms "
        f"(value {j['jsd']:.9f}), {j['jsd64_s'] * 1e3:.0f} ms float64 (value {j['jsd64']:.9f})"
    )

    for batch in (1,) if args.quick else (1, 4):
        m = bench_capture_memory(batch, side=side)
        print(
            f"capture {side}x{side} NonLocalAttn, batch {m['batch']}: full map {m['full_shape']} "
            f"{m['full_bytes'] / 2**20:.1f} MiB, queries=4 {m['queries_shape']} "
            f"{m['queries_bytes'] / 2**10:.1f} KiB ({m['ratio']:.0f}x less)"
        )

    for r in bench_runner(args.images, args.batch_size, args.repeats):
        print(
            f"runner vs plain pipeline (nl_tiny, {r['images']} images, batch {r['batch']}), "
            f"{r['case']}: plain {r['plain_img_per_s']:.1f} img/s, analysis "
            f"{r['analysis_img_per_s']:.1f} img/s, ratio {r['ratio']:.3f}"
        )
    if not args.quick:
        report_full_size(args)


def report_full_size(args: argparse.Namespace) -> None:
    f = bench_full_size(args.full_images, 4, args.full_repeats, args.exact_sites)
    print(
        f"full size: timm resnet50 + NonLocalAttn in every bottleneck ({f['sites']} sites), "
        f"224 px, {f['images']} images, batch {f['batch']}, all sites: plain forward "
        f"{f['plain_s']:.1f} s, query_independence {f['analysis_s']:.1f} s, "
        f"ratio {f['ratio']:.2f}x (CPU {f['plain_cpu_s']:.1f} s vs {f['analysis_cpu_s']:.1f} s, "
        f"{f['cpu_ratio']:.2f}x); JSD sampled above {f['exact_rows']} rows from {f['pairs']} pairs"
    )
    for alias, est, se, ex, err in f["errors"]:
        print(
            f"  {alias}, image 0: sampled JSD {est:.6f} (se {se:.6f}), exact {ex:.6f}, "
            f"error {err:+.6f} = {err / se:+.2f} se (exact took {f['exact_s']:.0f} s)"
        )
    print(f["summary"])


if __name__ == "__main__":
    main()
