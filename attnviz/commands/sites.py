"""``attnviz sites MODEL``: list a model's attention sites and their captured shapes."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ..analysis._eval_mode import eval_mode
from ..capture import capture, find_sites
from ..errors import AttnvizError
from ._common import resolve_spec


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sites",
        help="list the attention sites of a model",
        description=(
            "List name, kind, alias and captured shape of every attention site. MODEL is a "
            "bundled name (sk_tiny, ...), a timm name (random weights unless --weights), or a "
            "spec timm:NAME, torchvision:NAME, python:pkg.module:factory."
        ),
    )
    p.add_argument("model")
    p.add_argument("--weights", default=None, help="local .safetensors / .pth file")
    p.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"), default=None)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def site_table(model: torch.nn.Module, input_size: tuple[int, int, int]) -> list[dict]:
    """One row per site: name, kind, alias, module type and the shape captured for one image."""
    sites = find_sites(model)
    with eval_mode(model), capture(model) as cache, torch.no_grad():
        model(torch.zeros(1, *input_size))
    rows = []
    for s in sites:
        shape = list(cache[s.name].shape) if s.name in cache else None
        rows.append(
            {
                "name": s.name,
                "kind": s.kind,
                "alias": s.alias,
                "dims": list(s.dims),
                "shape": shape,
                "module_type": s.module_type,
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    from ..models import load_model

    try:
        model, pre = load_model(resolve_spec(args.model), weights=args.weights)
        size = tuple(pre.input_size)
        if args.input_size:
            size = (size[0], *args.input_size)
        rows = site_table(model, size)
    except (AttnvizError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"attnviz sites: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"model": args.model, "input_size": list(size), "sites": rows}, indent=1))
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{len(rows)} attention sites in {args.model} (input {size[1]}x{size[2]}):")
    print(f"{'alias':<10} {'kind':<14} {'name':<{width}}  shape")
    for r in rows:
        shape = "x".join(map(str, r["shape"])) if r["shape"] else "(did not run)"
        print(f"{r['alias']:<10} {r['kind']:<14} {r['name']:<{width}}  {shape}")
    return 0
