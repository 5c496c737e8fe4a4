"""Ablation wall time (issue 27): ``attnviz.ablation`` over every site x policy of seresnet50
against the plain forwards it cannot avoid.

An ablation of S sites (scope "site") with P policies needs, per batch, the original forward
and one intervened forward per (site, policy): 1 + S x P forwards; a policy with a reference
(``mean``) adds one captured forward per batch of the reference set (here the same images).
The budget is that many plain forwards of the same batches, timed in the same run; the target
is ablation time <= 1.1 x budget. Plain and ablation alternate (plain pass, ablation, plain
pass, ...); the ratio is the median over ``--repeats`` of the paired ratio, wall and process
CPU time. Random weights, prepared input tensors (no image decoding), one torch thread by
default.

    .venv/bin/python benchmarks/bench_ablation.py                # 64 images, 128 px, b8, 3 reps
    .venv/bin/python benchmarks/bench_ablation.py --size 224 --repeats 3
    .venv/bin/python benchmarks/bench_ablation.py --quick        # 16 images, 64 px, 1 repeat
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

POLICIES = ("constant:1", "mean")
TARGET = 1.10


def _time(fn) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="16 images, 64 px, 1 repeat")
    args = ap.parse_args()
    if args.quick:
        args.images, args.size, args.repeats = 16, 64, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model("seresnet50", pretrained=False).eval()
    x = torch.randn(
        args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(1)
    )
    batches = x.split(args.batch)
    sites = len(attnviz.find_sites(model))
    n_ref = sum(1 for p in POLICIES if p == "mean" or p.startswith("shuffle")) > 0
    per_batch = 1 + sites * len(POLICIES) + int(n_ref)

    def plain_pass() -> None:
        with torch.inference_mode():
            for b in batches:
                for _ in range(per_batch):
                    model(b)

    calls = [0]
    handle = model.register_forward_pre_hook(lambda m, i: calls.__setitem__(0, calls[0] + 1))

    def ablate() -> None:
        attnviz.ablation(
            model,
            x,
            policies=list(POLICIES),
            scopes=("site",),
            batch_size=args.batch,
            progress=False,
        )

    load = os.getloadavg()
    print(
        f"# torch {torch.__version__}, timm {timm.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} cpus, {torch.get_num_threads()} threads; seresnet50 {sites} sites x "
        f"{len(POLICIES)} policies {list(POLICIES)}, {args.images} images of {args.size} px in "
        f"batches of {args.batch}; load {load[0]:.2f} {load[1]:.2f}",
        flush=True,
    )
    ablate()  # warm-up (and the forward count)
    forwards = calls[0]
    handle.remove()
    expected = len(batches) * per_batch
    rows = []
    for _ in range(args.repeats):
        pw, pc = _time(plain_pass)
        aw, ac = _time(ablate)
        rows.append({"plain_s": pw, "ablation_s": aw, "wall": aw / pw, "cpu": ac / pc})
        print(f"  plain {pw:.2f} s, ablation {aw:.2f} s: wall {aw / pw:.3f}, cpu {ac / pc:.3f}")
    wall = statistics.median(r["wall"] for r in rows)
    cpu = statistics.median(r["cpu"] for r in rows)
    print(
        f"forwards of the ablation: {forwards} (expected {expected} = {len(batches)} batches x "
        f"(1 original + {sites} x {len(POLICIES)} + 1 reference pass)); budget = that many "
        f"plain forwards of the same batches"
    )
    print(
        f"median paired ratio to the budget: wall {wall:.3f}, cpu {cpu:.3f} "
        f"(target <= {TARGET:.2f}); load at the end {os.getloadavg()[0]:.2f}"
    )
    print(json.dumps({"forwards": forwards, "expected": expected, "repeats": rows}))


if __name__ == "__main__":
    main()
