"""Plumbing shared by the CLI commands: model specs, common arguments, model loading."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import AttnvizError


def resolve_spec(spec: str) -> str:
    """A bare name -> the bundled tiny model of that name, else ``timm:<name>``."""
    if ":" in spec:
        return spec
    from ..models import TINY_MODELS

    return spec if spec in TINY_MODELS else f"timm:{spec}"


def add_model_arguments(p: argparse.ArgumentParser, *, example: str = "sk_tiny") -> None:
    """``--model`` (required), ``--weights`` and ``--device``."""
    p.add_argument("--model", required=True, help=f"model spec, e.g. {example}")
    p.add_argument("--weights", default=None, help="local .safetensors / .pth weights file")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")


def add_image_arguments(p: argparse.ArgumentParser, *, batch_size: int = 16) -> None:
    """``--images``, ``--out``, ``--limit``, ``--batch-size`` and ``--no-progress``."""
    p.add_argument("--images", required=True, help="image folder (class subfolders = labels)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument(
        "--batch-size", type=int, default=batch_size, help=f"images per forward ({batch_size})"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def print_error(command: str, msg: str) -> int:
    """Print ``attnviz COMMAND: error: MSG`` to stderr; returns the exit code 1."""
    print(f"attnviz {command}: error: {msg}", file=sys.stderr)
    return 1


def load_cli_model(command: str, args: argparse.Namespace) -> tuple[Any, Any] | int:
    """``(model on args.device, PreprocessConfig)``, or exit code 1 after printing the error."""
    try:
        from ..models import load_model

        model, config = load_model(resolve_spec(args.model), weights=args.weights)
    except AttnvizError as exc:
        return print_error(command, str(exc))
    except (ValueError, KeyError, FileNotFoundError, RuntimeError, OSError) as exc:
        return print_error(command, f"cannot load model {args.model!r}: {exc}")
    return model.to(args.device), config


def model_meta(args: argparse.Namespace) -> dict[str, Any]:
    """Manifest entries naming the model: spec as given, resolved spec, weights and sha256."""
    from ..models.loading import sha256_file

    meta: dict[str, Any] = {"model": args.model, "model_spec": resolve_spec(args.model)}
    if args.weights:
        meta["weights"] = str(args.weights)
        meta["weights_sha256"] = sha256_file(args.weights)
    return meta
