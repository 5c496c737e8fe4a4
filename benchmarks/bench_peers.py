"""Peers side by side (issue 27): attnviz ``capture()`` against the other ways to read the
attention of a model, on the same models, inputs and threads.

Tools: ``attnviz`` (``capture()`` on every site; for the Non-local model also with 4 query
cells), ``hooks`` (hand-written forward hooks storing each module's output), ``captum``
(``captum.attr.LayerActivation`` on the same modules), ``timm-fx`` / ``timm-hook``
(``timm.utils.AttentionExtract`` by fx node names / by module names) and ``torchlens``
(``torchlens.trace`` saving one operation type). Each tool's user code is a pair of small
functions below (``*_setup`` once per model, ``*_run`` per batch); the ``lines`` column counts
their statements' source lines (no docstring, no ``def``), plus the lines that switch timm's
fused attention off where the tool needs that (ViT: fused ``scaled_dot_product_attention``
never forms the weights, so no module or graph node holds them).

Timing: one process; per model, the plain forward first, then each tool, interleaved in every
repeat (plain, tool 1, tool 2, ..., plain, ...), after one warm-up call each. Each tool runs on
its own deep copy of the model (same weights; its hooks or fx graph stay off the plain model);
``setup`` (hooks, tracing) is timed once and shown apart. The ratios are medians over the
repeats of the paired ratio to the plain forward of the same repeat, in wall time and in the
process's CPU time (all threads summed). Everything runs under ``torch.inference_mode()``.

Memory: each (model, tool) in a fresh subprocess with ``MALLOC_MMAP_THRESHOLD_=65536`` (large
blocks are mmapped and unmapped on free, so the RSS follows the live memory): the model is
built, one plain forward and one run of the tool on another copy warm up (imports, first-call
work), then the peak RSS (``VmHWM``) is reset through ``/proc/self/clear_refs`` and the tool's
setup and one forward run on a fresh copy, the returned tensors kept; ``peak MiB`` is that
peak minus the RSS before it (the ``plain`` row: the forward's own peak).
``kept MiB`` is the size of the tensors the tool returns.

``returns``: each tool's tensors are compared site by site with attnviz's capture (and with
the site modules' outputs, ``io=True``) by ``torch.allclose`` after a reshape: "exact
attention" when they equal the attention at every site, else what they are.

    .venv/bin/python benchmarks/bench_peers.py                 # 224 px (BoTNet 256), b8, 5 reps
    .venv/bin/python benchmarks/bench_peers.py --threads 2 --repeats 7
    .venv/bin/python benchmarks/bench_peers.py --quick         # 64 px, batch 1, 2 repeats
    .venv/bin/python benchmarks/bench_peers.py --only skresnet18 --tools attnviz timm-fx

Peers not installed with the package come from ``pip install -e .[bench]`` (TorchLens); a tool
that is not installed or fails on a model gets its reason in the table instead of numbers.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import fnmatch
import gc
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from torch import Tensor, nn

import attnviz

QUERIES = [(0, 0), (0, 1), (1, 0), (1, 1)]  # 4 cells, valid on the smallest (2x2) quick grid
RTOL, ATOL = 1e-4, 1e-5


@dataclass(frozen=True)
class Spec:
    """One model and the names a user gives each tool to read its attention."""

    name: str
    arch: str
    kw: dict = field(default_factory=dict)
    own_size: int | None = None  # built for this input size (BoTNet's fixed position grid)
    modules: tuple[str, ...] = ()  # module names (fnmatch) for hooks, captum, timm-hook
    nodes: tuple[str, ...] | None = None  # fx node names for timm-fx (None: timm's default)
    op: str = "softmax"  # TorchLens operation type to save
    unfused: bool = False  # peers need timm's fused attention off to see the weights


SPECS = (
    # SelectiveKernelAttn returns the (B, M, C, 1, 1) branch softmax itself.
    Spec("skresnet18", "skresnet18", modules=("*.attn",)),
    # SEModule returns x * gate; its `gate` (nn.Sigmoid) returns the excitation.
    Spec(
        "seresnet50",
        "seresnet50",
        modules=("*.se.gate",),
        nodes=("*.se.gate.sigmoid",),  # fx traces through nn.Sigmoid
        op="sigmoid",
    ),
    # NonLocalAttn's softmax is functional: no submodule returns the map.
    Spec(
        "resnet50+nl",
        "resnet50",
        {"block_args": {"attn_layer": "nl"}},
        modules=("*.se",),
        nodes=("*.se.softmax",),
    ),
    # BottleneckAttn's softmax is functional too.
    Spec("botnet26t_256", "botnet26t_256", own_size=256, modules=("*.self_attn",)),
    # timm Attention: with fused_attn off, attn_drop (identity in eval) returns the weights.
    Spec("deit_tiny", "deit_tiny_patch16_224", modules=("*.attn.attn_drop",), unfused=True),
)


# ------------------------------------------------------------------------ the users' snippets
def unfuse(model):
    """Switch timm's fused attention off (the weights then exist as a tensor)."""
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False


def attnviz_run(model, x):
    """attnviz: every site, full maps."""
    with attnviz.capture(model) as cache:
        model(x)
    return dict(cache)


def attnviz_queries_run(model, x):
    """attnviz: every site, only the rows of 4 query cells at per-query sites."""
    with attnviz.capture(model, queries=QUERIES) as cache:
        model(x)
    return dict(cache)


def hooks_setup(model, names):
    """Hand-written: a forward hook on each named module storing its output."""
    store = {}
    for name, module in model.named_modules():
        if any(fnmatch.fnmatch(name, n) for n in names):
            module.register_forward_hook(lambda m, i, o, k=name: store.__setitem__(k, o.detach()))
    return model, store


def hooks_run(state, x):
    model, store = state
    model(x)
    return dict(store)


def captum_setup(model, names):
    """captum LayerActivation on the named modules."""
    from captum.attr import LayerActivation

    picked = [(n, m) for n, m in model.named_modules() if any(fnmatch.fnmatch(n, p) for p in names)]
    return LayerActivation(model, [m for _, m in picked]), [n for n, _ in picked]


def captum_run(state, x):
    layer_activation, names = state
    return dict(zip(names, layer_activation.attribute(x)))


def timm_fx_setup(model, nodes):
    """timm AttentionExtract, fx mode: the graph nodes named (None: '*attn.softmax')."""
    from timm.utils import AttentionExtract

    return AttentionExtract(model, names=nodes, method="fx")


def timm_hook_setup(model, names):
    """timm AttentionExtract, hook mode: the outputs of the named modules."""
    from timm.utils import AttentionExtract

    return AttentionExtract(model, names=names, method="hook")


def timm_run(extractor, x):
    return extractor(x)


def torchlens_run(state, x):
    """TorchLens: log the forward, keep the outputs of one operation type."""
    import torchlens
    from torchlens.options import CaptureOptions

    model, op = state
    trace = torchlens.trace(model, x, capture=CaptureOptions(layers_to_save=[op]))
    return {o.module.split(":")[0]: o.out for o in trace.saved_ops if o.func_name == op}


@dataclass(frozen=True)
class Tool:
    """A peer: ``setup(model, spec) -> state`` once, ``run(state, x) -> {name: tensor}``."""

    name: str
    snippets: tuple[Callable, ...]  # the user's code (counted)
    setup: Callable[[nn.Module, Spec], Any]
    run: Callable[[Any, Tensor], dict]
    needs_unfused: bool = True  # applies unfuse() on models with Spec.unfused
    only: tuple[str, ...] | None = None  # models it applies to (None: all)
    module: str | None = None  # the package it needs


TOOLS = (
    Tool("attnviz", (attnviz_run,), lambda m, s: m, attnviz_run, needs_unfused=False),
    Tool(
        "attnviz-4q",
        (attnviz_queries_run,),
        lambda m, s: m,
        attnviz_queries_run,
        needs_unfused=False,
        only=("resnet50+nl",),
    ),
    Tool("hooks", (hooks_setup, hooks_run), lambda m, s: hooks_setup(m, s.modules), hooks_run),
    Tool(
        "captum",
        (captum_setup, captum_run),
        lambda m, s: captum_setup(m, s.modules),
        captum_run,
        module="captum",
    ),
    Tool("timm-fx", (timm_fx_setup, timm_run), lambda m, s: timm_fx_setup(m, s.nodes), timm_run),
    Tool(
        "timm-hook",
        (timm_hook_setup, timm_run),
        lambda m, s: timm_hook_setup(m, s.modules),
        timm_run,
    ),
    Tool(
        "torchlens",
        (torchlens_run,),
        lambda m, s: (m, s.op),
        torchlens_run,
        module="torchlens",
    ),
)
TOOL_NAMES = ("plain", *(t.name for t in TOOLS))


def snippet_lines(fn: Callable) -> int:
    """Source lines of the statements in ``fn``'s body (no ``def``, docstring or blank)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    body = tree.body[0].body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    lines: set[int] = set()
    for stmt in body:
        lines.update(range(stmt.lineno, stmt.end_lineno + 1))
    return len(lines)


def user_lines(tool: Tool, spec: Spec) -> int:
    n = sum(snippet_lines(f) for f in tool.snippets)
    return n + (snippet_lines(unfuse) if spec.unfused and tool.needs_unfused else 0)


def missing_module(tool: Tool) -> str | None:
    if tool.module is None:
        return None
    try:
        __import__(tool.module)
    except ImportError:
        return f"{tool.module} not installed (pip install -e .[bench])"
    return None


def tools_for(spec: Spec, wanted: list[str] | None) -> list[Tool]:
    return [
        t
        for t in TOOLS
        if (t.only is None or spec.name in t.only) and (not wanted or t.name in wanted)
    ]


# ------------------------------------------------------------------------------- the harness
def build(spec: Spec, size: int, batch: int, quick: bool) -> tuple[nn.Module, Tensor]:
    """The model (random weights, eval) and a seeded input; BoTNet at its own size unless
    ``quick`` (then built for ``size``), the ViT built for ``size``."""
    torch.manual_seed(0)
    kw = dict(spec.kw)
    side = size if quick or spec.own_size is None else spec.own_size
    if spec.own_size is not None or spec.unfused:
        kw["img_size"] = side
    model = timm.create_model(spec.arch, pretrained=False, **kw).eval()
    x = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(1))
    return model, x


def own_copy(tool: Tool, model: nn.Module, spec: Spec) -> nn.Module:
    """The tool's own copy of the model (fused attention off where the tool needs it)."""
    mine = copy.deepcopy(model)
    if spec.unfused and tool.needs_unfused:
        unfuse(mine)
    return mine


def _time(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call; CPU time is the process's, all threads summed."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def _close(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=RTOL, atol=ATOL)


def classify(t: Tensor | None, att: Tensor, out: Tensor | None) -> str:
    """What one tensor of a tool is, against the site's attention and module output."""
    if t is None:
        return "misses the site"
    t = t.detach().float().cpu()
    same_size = t.numel() == att.numel()
    if same_size and _close(t.reshape(att.shape), att):
        return "exact attention"
    if out is not None and t.shape == out.shape:
        if _close(t, out):
            return "module outputs, not the attention"
        return "module-output-shaped tensor changed after the hook (in place), not the attention"
    if same_size:
        flat = t.reshape(att.shape)
        if _close(flat.sigmoid(), att):
            return "pre-sigmoid logits"
        if any(_close(flat.softmax(d), att) for d in range(1, att.dim())):
            return "pre-softmax logits"
    return f"another tensor {tuple(t.shape)}, not the attention"


def site_of(key: str, sites: list[str]) -> str | None:
    """The site a tool's key (module path, fx node or op's module) belongs to."""
    best = None
    for s in sites:
        if (key == s or key.startswith(s + ".")) and (best is None or len(s) > len(best)):
            best = s
    return best


def verdict(result: dict, reference: dict, outputs: dict, rows: Tensor | None) -> str:
    """'exact attention (n/n sites)' or the most common reading with its count."""
    by_site: dict[str, Tensor] = {}
    for key, t in result.items():
        s = site_of(key, list(reference))
        if s is not None and s not in by_site:
            by_site[s] = t
    counts: Counter[str] = Counter()
    for s, att in reference.items():
        if rows is not None and att.dim() == 3 and s in by_site:  # nl: (B, Nq, Nk)
            att = att.index_select(1, rows[s])
        counts[classify(by_site.get(s), att, outputs.get(s))] += 1
    n = len(reference)
    return "; ".join(f"{what} ({k}/{n} sites)" for what, k in counts.most_common())


def references(model: nn.Module, x: Tensor) -> tuple[dict, dict, dict]:
    """attnviz's attention and the site modules' outputs (cloned in the hook), and the row
    indices of QUERIES at every per-query site."""
    with torch.inference_mode(), attnviz.capture(model, io=True) as cache:
        model(x)
    att = {k: cache[k] for k in cache}
    outputs = {k: cache.outputs(k) for k in cache}
    rows = {}
    for k in cache:
        grid = cache.meta[k].get("query_grid")
        if grid is not None:
            rows[k] = torch.tensor([y * grid[1] + x_ for y, x_ in QUERIES])
    return att, outputs, rows


def bench_model(spec: Spec, args) -> list[dict]:
    """Paired time ratios and the verdict of every tool on one model."""
    model, x = build(spec, args.size, args.batch, args.quick)
    reference, outputs, rows = references(model, x)
    tools = tools_for(spec, args.tools)
    rows_out: list[dict] = []
    ready: dict[str, tuple[Callable[[], Any], dict]] = {}

    def plain():
        model(x)

    for tool in tools:
        row = {"model": spec.name, "tool": tool.name, "lines": user_lines(tool, spec)}
        rows_out.append(row)
        why = missing_module(tool)
        if why:
            row["reason"] = why
            continue
        try:
            with torch.inference_mode():
                mine = own_copy(tool, model, spec)
                w0 = time.perf_counter()
                state = tool.setup(mine, spec)
                row["setup_s"] = round(time.perf_counter() - w0, 4)
                result = tool.run(state, x)  # also the warm-up
            q = rows if tool.name == "attnviz-4q" else None
            row["returns"] = verdict(result, reference, outputs, q)
            del result
        except Exception as e:  # a peer's failure is a result to report
            row["reason"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            continue
        ready[tool.name] = (lambda t=tool, s=state: t.run(s, x), row)

    with torch.inference_mode():
        plain()  # warm-up
        t_plain: list[tuple[float, float]] = []
        t_tool: dict[str, list[tuple[float, float]]] = {k: [] for k in ready}
        for _ in range(args.repeats):
            t_plain.append(_time(plain))
            for k, (run, _) in ready.items():
                t_tool[k].append(_time(run))
    med = statistics.median
    base = {
        "model": spec.name,
        "tool": "plain",
        "input": "x".join(str(d) for d in x.shape),
        "sites": len(reference),
        "s": round(med(t[0] for t in t_plain), 4),
        "cpu_s": round(med(t[1] for t in t_plain), 4),
        "ratio": 1.0,
        "cpu_ratio": 1.0,
        "lines": 0,
        "returns": "-",
    }
    for k, (_, row) in ready.items():
        times = t_tool[k]
        row["s"] = round(med(t[0] for t in times), 4)
        for clock, label in ((0, "ratio"), (1, "cpu_ratio")):
            ratios = [t[clock] / b[clock] for t, b in zip(times, t_plain)]
            row[label] = round(med(ratios), 4)
            row[f"{label}s"] = [round(r, 3) for r in ratios]
    return [base, *rows_out]


# ------------------------------------------------------------------------------------ memory
def _status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field_name} in /proc/self/status")


def memory_child(spec: Spec, tool_name: str, args) -> dict:
    """In a fresh process: peak RSS rise of one tool's setup and forward (see the docstring)."""
    model, x = build(spec, args.size, args.batch, args.quick)
    tool = next((t for t in TOOLS if t.name == tool_name), None)
    mine = model if tool is None else own_copy(tool, model, spec)
    for mod in ("captum.attr", "timm.utils", "torchlens", "torchlens.options"):
        with contextlib.suppress(ImportError):  # imports are loaded before the reset
            __import__(mod)
    with torch.inference_mode():
        mine(x)  # warm-up: thread pools, kernels' caches
        if tool is not None:  # and the tool's one-time work (lazy imports, first call)
            tool.run(tool.setup(own_copy(tool, model, spec), spec), x)
        gc.collect()
        rss0 = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        if tool is None:  # plain
            kept = [model(x)]
        else:
            kept = list(tool.run(tool.setup(mine, spec), x).values())
        peak = _status_kib("VmHWM")
    kept_bytes = sum(t.numel() * t.element_size() for t in kept if isinstance(t, Tensor))
    return {"peak_MiB": round((peak - rss0) / 1024, 1), "kept_MiB": round(kept_bytes / 2**20, 2)}


def memory(spec: Spec, tool_name: str, args) -> dict:
    """``memory_child`` in a fresh subprocess (same size, batch, threads)."""
    cmd = [sys.executable, __file__, "--_memory", spec.name, tool_name]
    cmd += ["--size", str(args.size), "--batch", str(args.batch), "--threads", str(args.threads)]
    if args.quick:
        cmd.append("--quick")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"memory_reason": tail[:160]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# -------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="64 px, batch 1, 2 repeats")
    ap.add_argument("--only", nargs="*", default=None, help="model names to run")
    ap.add_argument("--tools", nargs="*", default=None, help="tool names to run")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    ap.add_argument("--_memory", nargs=2, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.size, args.batch, args.repeats = 64, 1, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    known = {s.name: s for s in SPECS}
    for name in args.only or []:
        if name not in known:
            ap.error(f"unknown model {name!r}; choose from {', '.join(known)}")
    for name in args.tools or []:
        if name not in TOOL_NAMES[1:]:
            ap.error(f"unknown tool {name!r}; choose from {', '.join(TOOL_NAMES[1:])}")
    if args._memory:
        print(json.dumps(memory_child(known[args._memory[0]], args._memory[1], args)))
        return
    args.threads = torch.get_num_threads()
    load = os.getloadavg()
    versions = [f"torch {torch.__version__}", f"timm {timm.__version__}"]
    for mod in ("captum", "torchlens"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            versions.append(f"{mod} not installed")
    print(
        f"# attnviz {attnviz.__version__}, {', '.join(versions)}, {platform.machine()}, "
        f"{os.cpu_count()} cpus, {args.threads} threads, {args.size}px, batch {args.batch}, "
        f"median of {args.repeats}; load {load[0]:.2f} {load[1]:.2f}",
        flush=True,
    )
    header = ("model", "tool", "s", "wall", "cpu", "setup s", "peak MiB", "kept MiB", "lines")
    fmt = "{:<13} {:<10} {:>8} {:>6} {:>6} {:>8} {:>9} {:>9} {:>5}  {}"
    print(fmt.format(*header, "returns"))
    rows: list[dict] = []
    start = time.perf_counter()
    for spec in SPECS:
        if args.only and spec.name not in args.only:
            continue
        for r in bench_model(spec, args):
            if not args.no_memory and "reason" not in r:
                r.update(memory(spec, r["tool"], args))
                if "memory_reason" in r:
                    r["returns"] += f" [memory: {r['memory_reason']}]"
            rows.append(r)

            def num(key, spec_fmt, r=r):
                return format(r[key], spec_fmt) if key in r else "-"

            print(
                fmt.format(
                    r["model"],
                    r["tool"],
                    num("s", ".3f"),
                    num("ratio", ".3f"),
                    num("cpu_ratio", ".3f"),
                    num("setup_s", ".3f"),
                    num("peak_MiB", ".1f"),
                    num("kept_MiB", ".2f"),
                    r["lines"],
                    r.get("reason") or r.get("returns", ""),
                ),
                flush=True,
            )
    for line in against_fastest_exact_peer(rows):
        print(line)
    load = os.getloadavg()
    print(f"# total {time.perf_counter() - start:.0f} s; load at the end {load[0]:.2f}")
    print(json.dumps(rows))


def against_fastest_exact_peer(rows: list[dict]) -> list[str]:
    """Issue 27's target: attnviz's wall ratio over that of the fastest peer whose tensors
    equal the attention at every site (``<= 1.03``), per model."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model and r["tool"] == "attnviz" and "ratio" in r]
        exact = [
            r
            for r in rows
            if r["model"] == model
            and not r["tool"].startswith("attnviz")
            and r.get("returns", "").startswith("exact attention")
            and "ratio" in r
        ]
        if not mine or not exact:
            out.append(f"{model}: no exact peer to compare with")
            continue
        best = min(exact, key=lambda r: r["ratio"])
        rel = mine[0]["ratio"] / best["ratio"]
        out.append(
            f"{model}: attnviz {mine[0]['ratio']:.3f} / fastest exact peer {best['tool']} "
            f"{best['ratio']:.3f} = {rel:.3f} (target <= 1.03)"
        )
    return out


if __name__ == "__main__":
    main()
