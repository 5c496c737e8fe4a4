"""What every CLI command shares: one vocabulary of options, the output folder, errors.

Every analysis command takes ``--model``, ``--weights``, ``--images``, ``--out``, ``--sites``,
``--device``, ``--input-size``, ``--batch-size``, ``--workers``, ``--limit``, ``--resume``,
``--overwrite``, ``--strict`` and ``--no-progress`` (:func:`add_analysis_arguments`), and
writes ``OUT/result/``, ``OUT/figures/`` and ``OUT/summary.txt`` (:class:`OutputFolder`).

Errors print one line, ``attnviz CMD: error: ...``: exit 2 for bad usage (found from the
arguments alone), 1 for failures at run time. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AttnvizError, OutputError
from ..results import atomic_write_text

LOCK_FILE = ".attnviz.lock"
FIGURES_LIST = ".attnviz-figures.json"
SUMMARY_FILE = "summary.txt"


class UsageError(AttnvizError):
    """Bad usage found from the arguments alone (exit code 2)."""


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``attnviz CMD: error: MSG`` (exit 2), and
    which takes no abbreviations of options (``--site`` is not ``--sites``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


# ----------------------------------------------------------------------------- argument types
def _whole(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _whole(text, 1)


def non_negative_int(text: str) -> int:
    return _whole(text, 0)


def scale_value(text: str) -> float:
    """A view scale: a finite number >= 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 1.0:
        raise argparse.ArgumentTypeError(f"scales must be finite numbers >= 1.0, got {text}")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (0.0 < value <= 1.0):
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {text}")
    return value


def add_subparser(subparsers: argparse._SubParsersAction, name: str, **kwargs: Any):
    """A subcommand parser with one-line errors and ``--debug``."""
    p = subparsers.add_parser(name, **kwargs)
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return p


def add_model_arguments(p: argparse.ArgumentParser, *, example: str, several: bool = False):
    """``--model`` (required), ``--weights``, ``--device`` and ``--input-size``."""
    p.add_argument(
        "--model",
        required=True,
        nargs="+" if several else None,
        help=f"model: a bundled name, a timm name, or timm:NAME, torchvision:NAME, "
        f"python:pkg.module:factory (e.g. {example})"
        + ("; several give one table" if several else ""),
    )
    p.add_argument("--weights", default=None, help="local .safetensors / .pth weights file")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument(
        "--input-size",
        nargs=2,
        type=positive_int,
        metavar=("H", "W"),
        default=None,
        help="model input size (default: the model's own)",
    )


def add_analysis_arguments(
    p: argparse.ArgumentParser, *, example: str, batch_size: int = 16, several: bool = False
) -> None:
    """The shared vocabulary of every analysis command (see the module docstring)."""
    add_model_arguments(p, example=example, several=several)
    p.add_argument("--images", required=True, help="image folder (class subfolders = labels)")
    p.add_argument("--out", required=True, help="output folder (result/, figures/, summary.txt)")
    p.add_argument(
        "--sites",
        nargs="+",
        default=None,
        metavar="SITE",
        help="sites by alias or module name, or 'all' (default: the analysis's own)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=batch_size,
        help=f"images per forward (default {batch_size})",
    )
    p.add_argument(
        "--workers",
        type=non_negative_int,
        default=0,
        help="DataLoader worker processes decoding images (default 0: in the main process)",
    )
    p.add_argument("--limit", type=positive_int, default=None, help="use only the first N images")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the unfinished run checkpointed in OUT/checkpoint/",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over even if OUT/checkpoint/ holds an unfinished run",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail on the first unusable image instead of skipping it",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=20,
        help="checkpoint every N batches (default 20)",
    )


# ----------------------------------------------------------------------------- the model
def resolve_spec(spec: str) -> str:
    """A bare name -> the bundled tiny model of that name, else ``timm:<name>``."""
    if ":" in spec:
        return spec
    from ..models import TINY_MODELS

    return spec if spec in TINY_MODELS else f"timm:{spec}"


def check_device(device: str) -> str:
    """``device`` if this machine has it, else :class:`UsageError`."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: this machine has no CUDA GPU; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} GPU(s)")
    elif dev.type != "cpu":
        raise UsageError(f"unsupported device {device!r}; use cpu or cuda")
    return device


def load_cli_model(args: argparse.Namespace, spec: str | None = None) -> tuple[Any, Any]:
    """``(model on args.device, PreprocessConfig with --input-size applied)``."""
    from ..models import load_model

    device = check_device(args.device)
    spec = spec or args.model
    model, config = load_model(resolve_spec(spec), weights=args.weights)
    if getattr(args, "input_size", None):
        config.input_size = (config.input_size[0], *args.input_size)
    return model.to(device), config


def model_fingerprint(args: argparse.Namespace, spec: str | None = None) -> dict[str, Any]:
    """What a resumed run must share with its checkpoint: model spec, weights and sha256."""
    from ..models.loading import sha256_file

    spec = spec or args.model
    fp: dict[str, Any] = {
        "model": spec,
        "model_spec": resolve_spec(spec),
        "weights": None,
        "weights_sha256": None,
        "input_size": args.input_size,
    }
    if args.weights:
        fp["weights"] = str(args.weights)
        fp["weights_sha256"] = sha256_file(args.weights)
    else:
        from ..models import read_manifest

        with contextlib.suppress(FileNotFoundError, KeyError):
            fp["weights_sha256"] = read_manifest()["models"][fp["model_spec"]]["sha256"]
    return fp


def run_options(
    args: argparse.Namespace, out: OutputFolder, config: Any, fingerprint: dict[str, Any]
) -> dict[str, Any]:
    """Keyword arguments of :func:`attnviz.analysis.runner.run` from the shared options."""
    return {
        "preprocess": config,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "limit": args.limit,
        "strict": args.strict,
        "progress": not args.no_progress,
        "checkpoint": out.checkpoint,
        "checkpoint_every": args.checkpoint_every,
        "resume": args.resume,
        "overwrite": args.overwrite,
        "exclude": [out.path],
        "fingerprint": fingerprint,
    }


@contextlib.contextmanager
def distributed_session(device: str) -> Iterator[bool]:
    """Under torchrun: start the process group (gloo on CPU) for the command, stop it after.
    Yields True on the rank that writes the outputs (rank 0, or the only process)."""
    from ..distributed import init_from_env, rank, shutdown

    started = init_from_env(check_device(device))
    try:
        yield rank() == 0
    finally:
        if started:
            shutdown()


def sites_argument(values: Sequence[str] | None) -> Any:
    """``--sites`` as the analyses take it: None, ``"all"`` or a list."""
    if values is None:
        return None
    return "all" if list(values) == ["all"] else list(values)


# ----------------------------------------------------------------------------- the output folder
def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


@dataclass
class OutputFolder:
    """``OUT``, checked before any work and locked while a command writes into it.

    Checks: not a file, writable, not inside (or equal to) an image folder, and not locked by
    another running attnviz (``OUT/.attnviz.lock``, an advisory ``flock``; the second run is
    refused). Writes ``result/``, ``figures/`` (removing only the figures its own earlier run
    listed in ``figures/.attnviz-figures.json``), ``summary.txt`` and ``checkpoint/``.
    """

    path: Path
    images: Sequence[Path] = ()
    _lock: Any = field(default=None, repr=False)

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint"

    def __enter__(self) -> OutputFolder:
        out = self.path
        if out.exists() and not out.is_dir():
            raise OutputError(f"--out {out} is a file, not a folder")
        resolved = out.resolve()
        for images in self.images:
            root = Path(images).resolve()
            if _inside(resolved, root):
                raise OutputError(
                    f"--out {out} is inside the image folder {images}: its figures would be "
                    "read as images on the next run; choose an output folder outside it"
                )
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / f".attnviz-write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise OutputError(f"cannot write to --out {out}: {exc.strerror or exc}") from None
        from ..distributed import rank

        if rank() != 0:  # torchrun: rank 0 holds the lock for all ranks
            return self
        lock = open(out / LOCK_FILE, "a+")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise OutputError(
                f"--out {out} is in use by another running attnviz ({holder}); wait for it or "
                "choose another output folder"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}: attnviz {' '.join(sys.argv[1:2])}\n")
        lock.flush()
        self._lock = lock
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path / LOCK_FILE)
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    # -- writing ---------------------------------------------------------------------------
    def save_result(self, result: Any, name: str = "result") -> Path:
        return result.save(self.path / name)

    def save_figures(
        self,
        figures: dict[str, Any],
        name: str = "figures",
        formats: Sequence[str] = ("png", "svg"),
    ) -> list[Path]:
        """Write each figure as ``<name>.<fmt>``; remove the earlier run's figures not
        written again (only those its list names); close the figures."""
        import matplotlib.pyplot as plt

        directory = self.path / name
        directory.mkdir(parents=True, exist_ok=True)
        listing = directory / FIGURES_LIST
        earlier: list[str] = []
        with contextlib.suppress(OSError, ValueError):
            earlier = [f for f in json.loads(listing.read_text()) if f == Path(f).name]
        written: list[Path] = []
        for stem, fig in figures.items():
            for ext in formats:
                path = directory / f"{stem}.{ext}"
                fig.savefig(path, dpi=150 if ext == "png" else None, bbox_inches="tight")
                written.append(path)
            plt.close(fig)
        names = [p.name for p in written]
        for stale in set(earlier) - set(names):
            with contextlib.suppress(FileNotFoundError):
                (directory / stale).unlink()
        atomic_write_text(listing, json.dumps(names, indent=1))
        return written

    def save_summary(self, text: str) -> Path:
        return atomic_write_text(self.path / SUMMARY_FILE, text.rstrip() + "\n")

    def remove_checkpoint(self, analysis: str) -> None:
        """Remove this command's own checkpoint files (and the folder if left empty)."""
        folder = self.checkpoint
        if not folder.is_dir():
            return
        for f in folder.glob(f"{analysis}-rank*-of*.npz"):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if empty


@contextlib.contextmanager
def output_folder(
    out: str | os.PathLike, images: Sequence[str | os.PathLike] = ()
) -> Iterator[OutputFolder]:
    image_dirs = [Path(i) for i in images if Path(i).is_dir()]
    with OutputFolder(Path(out), image_dirs) as folder:
        yield folder


def report(out: OutputFolder, result: Any, summary: str) -> int:
    """Write ``summary.txt``, print the summary, the skipped files and what was written."""
    out.save_summary(summary)
    print(summary)
    for path, reason in getattr(result, "skipped", []):
        print(f"skipped {path}: {reason}")
    print(f"wrote {out.path / 'result'}, {out.path / 'figures'} and {out.path / SUMMARY_FILE}")
    return 0
