"""``attnviz sites MODEL``: list a model's attention sites and their captured shapes.

The input size is the model's own (its pretrained config, or the bundled manifest) unless
``--input-size`` is given; a size the model cannot take is refused with the size it needs.
Attention-like modules that no adapter reads are named below the table.
"""

from __future__ import annotations

import argparse
import json
import warnings
from typing import Any

import torch

from ..errors import AttnvizError
from ._common import UsageError, add_subparser, check_device, positive_int, resolve_spec


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    p = add_subparser(
        subparsers,
        "sites",
        help="list the attention sites of a model",
        description=(
            "List alias, kind, name and captured shape of every attention site, and name the "
            "attention-like modules no adapter reads. MODEL is a bundled name (sk_tiny, ...), a "
            "timm name (random weights unless --weights), or a spec timm:NAME, "
            "torchvision:NAME, python:pkg.module:factory."
        ),
    )
    p.add_argument("model", nargs="?", default=None, help="the model (or use --model)")
    p.add_argument("--model", dest="model_option", default=None, help="same as MODEL")
    p.add_argument("--weights", default=None, help="local .safetensors / .pth weights file")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument(
        "--input-size",
        nargs=2,
        type=positive_int,
        metavar=("H", "W"),
        default=None,
        help="input size (default: the model's own, from its pretrained config)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def site_table(model: torch.nn.Module, input_size: tuple[int, int, int]) -> list[dict]:
    """One row per site: name, kind, alias, module type and the shape captured for one image."""
    from ..analysis._eval_mode import eval_mode
    from ..capture import capture, find_sites

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # unread modules are reported by the caller
        sites = find_sites(model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with eval_mode(model), capture(model) as cache, torch.no_grad():
        model(torch.zeros(1, *input_size, device=device))
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


def own_input_size(model: torch.nn.Module) -> tuple[tuple[int, int, int] | None, bool]:
    """(input size of the model's pretrained config, whether the model is fixed to it)."""
    cfg: Any = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    fixed = bool(cfg.get("fixed_input_size", False)) if isinstance(cfg, dict) else False
    return (tuple(int(v) for v in size) if size else None), fixed


def _load(spec: str, weights: str | None):
    from ..models import load_model

    try:
        return load_model(resolve_spec(spec), weights=weights)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise UsageError(f"unknown model {spec!r}: {exc}") from None
        raise


def run(args: argparse.Namespace) -> int:
    from ..capture.core import not_attention_modules, unread_message, unread_modules

    spec = args.model_option or args.model
    if not spec:
        raise UsageError("name the model: attnviz sites MODEL (or --model MODEL)")
    if args.model and args.model_option and args.model != args.model_option:
        raise UsageError(f"two models given: {args.model!r} and --model {args.model_option!r}")
    device = check_device(args.device)
    model, pre = _load(spec, args.weights)
    model = model.to(device)
    own, fixed = own_input_size(model)
    size = tuple(own or pre.input_size)
    if args.input_size:
        size = (size[0], *args.input_size)
    needs = f"{own[1]}x{own[2]}" if own else None
    if fixed and own and size != own:  # found once the model is loaded: a run-time failure
        raise ValueError(
            f"{spec} takes only its own input size {needs}, not {size[1]}x{size[2]}; "
            f"drop --input-size or pass --input-size {own[1]} {own[2]}"
        )
    try:
        rows = site_table(model, size)
    except AttnvizError:
        raise
    except (AssertionError, RuntimeError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ""
        if needs and size != own:
            hint = f"; it needs its own input size {needs}: drop --input-size"
        raise RuntimeError(
            f"{spec} cannot take input {size[1]}x{size[2]} ({detail}){hint}"
        ) from exc
    unread = unread_modules(model)
    not_attention = not_attention_modules(model)
    if args.json:
        print(
            json.dumps(
                {
                    "model": spec,
                    "input_size": list(size),
                    "sites": rows,
                    "unread": unread,
                    "not_attention": {
                        k: {"reason": r, "modules": n} for k, (r, n) in not_attention.items()
                    },
                },
                indent=1,
            )  # fmt: skip
        )
        return 0
    width = max([len(r["name"]) for r in rows] + [4])
    print(f"{len(rows)} attention sites in {spec} (input {size[1]}x{size[2]}):")
    print(f"{'alias':<12} {'kind':<14} {'name':<{width}}  shape")
    for r in rows:
        shape = "x".join(map(str, r["shape"])) if r["shape"] else "(did not run)"
        print(f"{r['alias']:<12} {r['kind']:<14} {r['name']:<{width}}  {shape}")
    for cls_name, (reason, names) in not_attention.items():
        n = len(names)
        print(
            f"{n} {cls_name} module{'s' if n > 1 else ''} not read: no attention weights ({reason})"
        )
    if unread:
        print(unread_message(unread))
    return 0
