"""Token and window attention capture against a plain (fused) forward (issue 24, item 5).

For DeiT-S (``deit_small_patch16_224``, 12 ``Attention`` sites of 197 x 197 tokens, 6 heads)
and Swin-T (``swin_tiny_patch4_window7_224``, 12 ``WindowAttention`` sites, windows of 49),
random weights, 224 px, eval mode, timm's fused ``scaled_dot_product_attention`` left on:

* ``plain``: the model's forward, no hooks;
* ``queries``: ``attnviz.capture(model, queries=cells)`` with 4 query cells per layer (the
  corners' neighbours and the centre of each site's own query grid: a callable, as the grids
  differ per Swin stage), every site;
* ``full``: ``attnviz.capture(model)``, the full maps of every site.

The three run interleaved (plain, queries, full, plain, ...) in one process; each repeat gives
the ratios queries / plain and full / plain of that round, and the medians of those paired
ratios are reported, with the medians of the times. Before timing, the captured rows are
checked against the full maps (the same rows, bitwise) and the forwards' outputs against the
plain one. Target: ``queries`` <= 1.10x plain.

Run on a quiet machine: ``.venv/bin/python benchmarks/bench_token.py [--threads 1]
[--batch 4] [--repeats 7]``; ``--quick`` runs once at batch 1 (a check that the script works).
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

import attnviz
from attnviz.capture import get_kind

MODELS = ("deit_small_patch16_224", "swin_tiny_patch4_window7_224")


def four_cells(grid: tuple[int, int]) -> list[tuple[int, int]]:
    """4 query cells of a grid: near two corners, the centre, and near the far corner."""
    h, w = grid
    return [(min(1, h - 1), min(1, w - 1)), (h // 2, w // 2), (h - 1, 0), (h - 2, w - 2)]


def _capture(model: torch.nn.Module, x: torch.Tensor, queries) -> tuple[torch.Tensor, dict]:
    with torch.no_grad(), attnviz.capture(model, queries=queries) as cache:
        out = model(x)
    return out, cache


def check(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """Outputs unchanged, the query rows equal the full map's rows; (sites, MiB of full maps)."""
    with torch.no_grad():
        plain = model(x)
    out_q, rows = _capture(model, x, four_cells)
    out_f, full = _capture(model, x, None)
    assert torch.equal(out_q, plain) and torch.equal(out_f, plain), "capture changed the output"
    for name in full:
        # query_index counts cells of the query grid; full rows start after the prefix tokens
        index = rows.meta[name]["query_index"] + full.meta[name].get("prefix_tokens", 0)
        kind = full.site(name).kind
        q_axis = get_kind(kind).query_axis
        assert torch.equal(full[name].index_select(q_axis, index), rows[name]), name
    return len(full.sites), full.nbytes() // 2**20


def bench(name: str, batch: int, repeats: int) -> dict:
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    sites, mib = check(model, x)

    def plain():
        with torch.no_grad():
            model(x)

    runs = {"plain": plain, "queries": lambda: _capture(model, x, four_cells),
            "full": lambda: _capture(model, x, None)}  # fmt: skip
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for key, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    ratio = {
        k: statistics.median(t / p for t, p in zip(times[k], times["plain"]))
        for k in ("queries", "full")
    }
    return {
        "model": name,
        "sites": sites,
        "full_mib": mib,
        **{f"{k}_s": statistics.median(v) for k, v in times.items()},
        **{f"{k}_ratio": r for k, r in ratio.items()},
        "all_ratios": {
            k: [round(t / p, 3) for t, p in zip(times[k], times["plain"])]
            for k in ("queries", "full")
        },  # fmt: skip
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.batch, args.repeats = 1, 1
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, timm {timm.__version__}, {args.threads} thread(s), "
          f"batch {args.batch}, 224 px, {args.repeats} interleaved repeats")  # fmt: skip
    print("| model | sites | plain (s) | 4 queries/layer (s) | ratio | full maps (s) | ratio "
          "| full maps (MiB) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in MODELS:
        r = bench(name, args.batch, args.repeats)
        print(f"| {r['model']} | {r['sites']} | {r['plain_s']:.3f} | {r['queries_s']:.3f} | "
              f"**{r['queries_ratio']:.3f}** | {r['full_s']:.3f} | {r['full_ratio']:.3f} | "
              f"{r['full_mib']} |")  # fmt: skip
        print(f"  paired ratios per repeat: {r['all_ratios']}")


if __name__ == "__main__":
    main()
