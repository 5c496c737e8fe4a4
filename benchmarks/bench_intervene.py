"""Intervention overhead (issue 22): a plain forward against the same forward inside
``attnviz.intervene()`` on every site, for the policies ``constant`` and ``mean``.

Plain and intervened forwards alternate in one run (plain, constant:1, mean, plain, ...); each
ratio is the median over ``--repeats`` of the paired ratio to the plain forward of the same
repeat, in wall time and in the process's CPU time (the first reference pass is the warm-up).
``mean`` needs the mean attention over a reference set: that extra pass (a captured forward over the
batch and the mean over images) is timed separately, once, in the middle repeat; an ablation
pays it once per batch of the reference set, not once per (group, policy). Then it counts the
forwards of an ablation run: per batch the original, one per (site group, policy) and one of
the reference pass of ``mean``, never one per image.

    .venv/bin/python benchmarks/bench_intervene.py               # 224 px, batch 8, 5 repeats
    .venv/bin/python benchmarks/bench_intervene.py --threads 1 --repeats 11
    .venv/bin/python benchmarks/bench_intervene.py --quick       # 64 px, batch 2, 2 repeats
    .venv/bin/python benchmarks/bench_intervene.py --only skresnet18
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import timm
import torch

import attnviz

CASES = (  # (name, timm architecture, create_model keywords)
    ("skresnet18", "skresnet18", {}),
    ("seresnet50", "seresnet50", {}),
    ("resnet50+nl", "resnet50", {"block_args": {"attn_layer": "nl"}}),
)
POLICIES = ("constant:1", "mean")
TARGET = 1.10


def _time(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of one call; CPU time is the process's, all threads summed."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def reference_means(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The extra pass of ``mean``: every site's attention averaged over the images of ``x``."""
    with attnviz.capture(model) as cache, torch.inference_mode():
        model(x)
    return {name: cache[name].mean(dim=0) for name in cache}


def bench(name: str, arch: str, model_kw: dict, size: int, batch: int, repeats: int) -> dict:
    """Medians over ``repeats`` of each policy's time and of its paired ratio to the plain
    forward of the same repeat (plain, constant:1, mean, plain, ...): the pairing removes the
    drift of a shared machine that an unpaired ratio of medians carries."""
    model = timm.create_model(arch, pretrained=False, **model_kw).eval()
    x = torch.randn(batch, 3, size, size)
    n_sites = len(attnviz.find_sites(model))
    reference = reference_means(model, x)  # also the warm-up

    def plain():
        with torch.inference_mode():
            model(x)

    def intervened(policy: str):
        def run():  # entering intervene (site resolution, hooks) is part of the cost
            with attnviz.intervene(model, {"all": policy}, reference=reference):
                with torch.inference_mode():
                    model(x)

        return run

    runs = {p: intervened(p) for p in POLICIES}
    t_plain: list[tuple[float, float]] = []
    t_ref: list[tuple[float, float]] = []
    t_pol: dict[str, list[tuple[float, float]]] = {p: [] for p in POLICIES}
    for i in range(repeats):  # interleaved: plain, then each policy
        t_plain.append(_time(plain))
        for p, run in runs.items():
            t_pol[p].append(_time(run))
        if i == repeats // 2:  # the reference pass of mean (once: an ablation pays it once)
            t_ref.append(_time(lambda: reference_means(model, x)))
    med = statistics.median
    row = {
        "model": name,
        "input": f"{batch}x{size}x{size}",
        "sites": n_sites,
        "plain_s": round(med(t[0] for t in t_plain), 4),
        "plain_cpu_s": round(med(t[1] for t in t_plain), 4),
        "mean_pass_s": round(med(t[0] for t in t_ref), 4),
    }
    for p, times in t_pol.items():
        row[f"{p}_s"] = round(med(t[0] for t in times), 4)
        for clock, label in ((0, "ratio"), (1, "cpu_ratio")):
            ratios = [t[clock] / b[clock] for t, b in zip(times, t_plain)]
            row[f"{p}_{label}"] = round(med(ratios), 4)
            row[f"{p}_{label}s"] = [round(r, 3) for r in ratios]
    return row


def count_ablation_forwards(images: int, batch: int) -> dict:
    """Forwards of the ablation of se_tiny over ``images`` generated images (every site, every
    stage, all together; policies constant:1 and mean), counted by a forward pre-hook on the
    model (the last batch may be partial)."""
    model, config = attnviz.load_model("se_tiny")
    calls = [0]
    handle = model.register_forward_pre_hook(lambda m, i: calls.__setitem__(0, calls[0] + 1))
    try:
        result = attnviz.ablation(
            model,
            attnviz.ShapesDataset(max(1, images // 10), size=64, seed=5),
            policies=list(POLICIES),
            preprocess=config,
            batch_size=batch,
            progress=False,
        )
    finally:
        handle.remove()
    frame = result.to_frame()
    groups = frame["group"].nunique()
    n = int(frame["n"].max())
    batches = -(-n // batch)
    return {
        "images": n,
        "batch": batch,
        "groups": groups,
        "policies": len(POLICIES),
        "batches": batches,
        "forwards": calls[0],
        # per batch: the original, one per (group, policy), and one of the reference pass
        "expected": batches * (2 + groups * len(POLICIES)),
        "one_per_image_would_be": n * (2 + groups * len(POLICIES)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="64 px, batch 2, 2 repeats")
    ap.add_argument("--only", nargs="*", default=None, help="model names to run")
    ap.add_argument("--no-count", action="store_true", help="skip the ablation forward count")
    args = ap.parse_args()
    if args.quick:
        args.size, args.batch, args.repeats = 64, 2, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(
        f"# torch {torch.__version__}, timm {timm.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} cpus, {torch.get_num_threads()} threads, {args.size}px, "
        f"batch {args.batch}, median of {args.repeats}; load {load[0]:.2f} {load[1]:.2f}"
    )
    header = (
        "model",
        "input",
        "sites",
        "plain s",
        "const s",
        "wall",
        "cpu",
        "mean s",
        "wall",
        "cpu",
        "mean pass s",
    )
    print("{:<12} {:>11} {:>5} {:>8} {:>8} {:>6} {:>6} {:>8} {:>6} {:>6} {:>11}".format(*header))
    rows = []
    start = time.perf_counter()
    for name, arch, model_kw in CASES:
        if args.only and name not in args.only:
            continue
        r = bench(name, arch, model_kw, args.size, args.batch, args.repeats)
        rows.append(r)
        print(
            f"{r['model']:<12} {r['input']:>11} {r['sites']:>5} {r['plain_s']:>8.3f} "
            f"{r['constant:1_s']:>8.3f} {r['constant:1_ratio']:>6.3f} "
            f"{r['constant:1_cpu_ratio']:>6.3f} {r['mean_s']:>8.3f} {r['mean_ratio']:>6.3f} "
            f"{r['mean_cpu_ratio']:>6.3f} {r['mean_pass_s']:>11.3f}",
            flush=True,
        )
    for clock in ("ratio", "cpu_ratio"):
        worst = max((r[f"{p}_{clock}"] for r in rows for p in POLICIES), default=float("nan"))
        print(f"worst median paired {clock.replace('_', ' ')} {worst:.3f} (target <= {TARGET:.2f})")
    if not args.no_count:
        c = count_ablation_forwards(20, 8)
        ok = c["forwards"] == c["expected"]
        print(
            f"ablation of se_tiny: {c['images']} images in {c['batches']} batches of "
            f"{c['batch']}, {c['groups']} groups x {c['policies']} policies: {c['forwards']} "
            f"forwards (expected {c['expected']} = per batch the original, one per (group, "
            f"policy) and one of the reference pass of mean; one per image would be "
            f"{c['one_per_image_would_be']}) -> {'ok' if ok else 'MISMATCH'}"
        )
        rows.append({"ablation_forwards": c})
    load = os.getloadavg()
    print(f"# total {time.perf_counter() - start:.0f} s; load at the end {load[0]:.2f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
