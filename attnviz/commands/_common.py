"""What every CLI command shares: one vocabulary of options, the output folder, errors.

Every analysis command takes ``--model``, ``--weights``, ``--images``, ``--out``, ``--sites``,
``--device``, ``--input-size``, ``--batch-size``, ``--workers``, ``--limit``, ``--resume``,
``--overwrite``, ``--strict``, ``--no-progress`` and ``--max-pixels``
(:func:`add_analysis_arguments`), and writes ``result/``, ``figures/`` and ``summary.txt``
into OUT, or into ``OUT/<analysis>/`` when OUT already holds another analysis's result
(:class:`OutputFolder`).

Under torchrun every rank runs the command; what rank 0 does alone after the analysis
(saving, figures, the query viewer, replicates) goes through :func:`on_main_rank`, which runs
it without collectives (:func:`attnviz.distributed.local_only`) while the other ranks wait.

Errors print one line, ``attnviz CMD: error: ...``: exit 2 for bad usage (found from the
arguments alone), 1 for failures at run time. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import math
import os
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import AttnvizError, OutputError
from ..results import atomic_write_text

LOCK_FILE = ".attnviz.lock"
FIGURES_LIST = ".attnviz-figures.json"
SUMMARY_FILE = "summary.txt"
MAX_PIXELS = 50_000_000  # = attnviz.data.images.MAX_PIXELS (not imported: the parser needs no PIL)


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
        "--max-pixels",
        type=positive_int,
        default=MAX_PIXELS,
        metavar="N",
        help=f"skip image files of more than N pixels (width x height, read before decoding; "
        f"default {MAX_PIXELS})",
    )
    p.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=20,
        help="checkpoint every N batches (default 20)",
    )
    add_replicate_arguments(p)


# ----------------------------------------------------------------------------- replicates
# the baseline kinds of attnviz.models.baselines.BASELINES, repeated here so that building the
# parser does not import torch (a test checks that they agree)
BASELINE_KINDS = ("permuted", "untrained")
DEFAULT_BASELINE_N = 3


def baseline_value(text: str) -> tuple[str, int]:
    """``--baseline untrained[:N]`` / ``permuted[:N]`` -> (kind, N) (N default 3)."""
    kind, _, count = text.partition(":")
    if kind not in BASELINE_KINDS:
        raise argparse.ArgumentTypeError(
            f"unknown baseline {text!r}: use {' or '.join(BASELINE_KINDS)}, optionally :N"
        )
    if count and (not count.isdigit() or int(count) < 1):
        raise argparse.ArgumentTypeError(f"baseline {text!r}: N must be a whole number >= 1")
    return kind, int(count) if count else DEFAULT_BASELINE_N


def add_replicate_arguments(p: argparse.ArgumentParser) -> None:
    """``--baseline`` and ``--seeds``: the same analysis on baselines and training seeds,
    joined per effect in ``OUT/replicates/`` (:mod:`attnviz.analysis.replicates`)."""
    p.add_argument(
        "--baseline",
        type=baseline_value,
        action="append",
        default=[],
        metavar="KIND[:N]",
        help="also run the analysis on N baselines of each model: 'untrained' (random "
        "initialisations of the architecture) or 'permuted' (trained weights shuffled within "
        "each tensor); N default 3; repeat for both. Writes OUT/replicates/",
    )
    p.add_argument(
        "--seeds",
        nargs="+",
        default=None,
        metavar="SEED",
        help="also run the analysis on the bundled training-seed replicates of each model: "
        "'all' or seed numbers (seed 0 is the model itself). Writes OUT/replicates/",
    )


def _chosen_seeds(args: argparse.Namespace, spec: str) -> list[int]:
    """The replicate seeds ``--seeds`` names for a bundled model (seed 0 left out)."""
    from ..models.seeds import seeds_of

    values = list(getattr(args, "seeds", None) or [])
    if not values:
        return []
    if spec not in _tiny_names() or getattr(args, "weights", None):
        raise UsageError(f"--seeds needs bundled models without --weights, not {spec!r}")
    have = seeds_of(spec)
    if values == ["all"]:
        return [s for s in have if s != 0]
    if not all(v.isdigit() for v in values):
        raise UsageError(f"--seeds takes 'all' or seed numbers, got {values}")
    missing = [int(v) for v in values if int(v) not in have]
    if missing:
        raise UsageError(f"{spec} has no bundled seed(s) {missing}; bundled seeds: {have}")
    return [int(v) for v in values if int(v) != 0]


def _tiny_names() -> set[str]:
    from ..models import TINY_MODELS

    return set(TINY_MODELS)


def replicate_options(args: argparse.Namespace, out: OutputFolder, config: Any) -> dict[str, Any]:
    """Runner options of a replicate run: those of the trained run without checkpoints."""
    return {
        "preprocess": config,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "limit": args.limit,
        "strict": args.strict,
        "progress": False,
        "exclude": [out.path],
        "max_pixels": getattr(args, "max_pixels", MAX_PIXELS),
    }


def run_replicates_cli(
    args: argparse.Namespace,
    out: OutputFolder,
    result: Any,
    analyse: Callable[[dict[str, Any]], Any],
    specs: Sequence[str] | None = None,
    name: str = "replicates",
) -> Any:
    """``--seeds`` / ``--baseline`` for any analysis command: run ``analyse({spec: model})``
    once per seed replicate (every model at that seed) and per baseline (every model made
    that baseline), join with the trained ``result`` into a
    :class:`~attnviz.analysis.replicates.ReplicatesResult`, write it to ``OUT/<name>/`` with
    its summary, print the summary and return it (None when neither option is given). Call it
    on the main rank: the replicate runs are local to it."""
    if not getattr(args, "seeds", None) and not getattr(args, "baseline", None):
        return None
    from ..analysis.replicates import run_replicates
    from ..distributed import local_only
    from ..models import create_tiny, load_model
    from ..models.baselines import baseline_models

    specs = list(specs or [args.model])
    chosen = [_chosen_seeds(args, s) for s in specs]
    common = sorted(set(chosen[0]).intersection(*map(set, chosen[1:])))
    if args.seeds and not common:
        print(
            f"--seeds {' '.join(args.seeds)}: no bundled seed replicate of {', '.join(specs)} "
            "(python -m attnviz.models.seeds bundles finished trainings)",
            file=sys.stderr,
        )

    def at_seed(k: int) -> Callable[[], dict[str, Any]]:
        return lambda: {s: load_cli_model(args, f"{s}@seed{k}")[0] for s in specs}

    def factory(spec: str) -> Callable[[], Any]:
        if spec in _tiny_names():
            return lambda: create_tiny(spec)
        size = tuple(args.input_size) if getattr(args, "input_size", None) else None
        return lambda: load_model(resolve_spec(spec), input_size=size)[0]  # no weights

    trained = {s: load_cli_model(args, s)[0] for s in specs}
    baselines: dict[str, Callable[[], dict[str, Any]]] = {}
    for kind, n in args.baseline:
        per_spec = {s: baseline_models(trained[s], kind, n, factory=factory(s)) for s in specs}
        for label in per_spec[specs[0]]:
            baselines[label] = lambda label=label, built=per_spec: {
                s: built[s][label]() for s in specs
            }
    with local_only():
        rep = run_replicates(
            lambda models, _images: analyse(models),
            trained,
            None,
            seeds={f"seed{k}": at_seed(k) for k in common},
            baselines=baselines,
            trained_result=result,
            meta={"model": ", ".join(specs), "specs": specs},
        )
    folder = rep.save(out.root / name)  # beside this analysis's own result
    text = rep.summary()
    atomic_write_text(folder / SUMMARY_FILE, text + "\n")
    print(text)
    print(f"wrote {folder}")
    return rep


# ----------------------------------------------------------------------------- the model
def resolve_spec(spec: str) -> str:
    """A bare name -> the bundled tiny model of that name, else ``timm:<name>``."""
    if ":" in spec:
        return spec
    from ..models import TINY_MODELS
    from ..models.seeds import split_seed

    return spec if split_seed(spec)[0] in TINY_MODELS else f"timm:{spec}"


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
    """``(model on args.device, PreprocessConfig with --input-size applied)``; a timm model
    sized at construction (``img_size``) is built for --input-size."""
    from ..models import load_model

    device = check_device(args.device)
    spec = spec or args.model
    if "@seed" not in spec:
        _chosen_seeds(args, spec)  # --seeds names bundled seeds: refuse before any work
    size = getattr(args, "input_size", None)
    model, config = load_model(
        resolve_spec(spec), weights=args.weights, input_size=tuple(size) if size else None
    )
    if size:
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
        "max_pixels": args.max_pixels,
    }


@contextlib.contextmanager
def distributed_session(device: str) -> Iterator[bool]:
    """Under torchrun: start the process group (gloo on CPU) for the command, stop it after.
    Yields True on the rank that writes the outputs (rank 0, or the only process); what that
    rank does alone goes through :func:`on_main_rank`."""
    from ..distributed import init_from_env, rank, shutdown

    started = init_from_env(check_device(device))
    try:
        yield rank() == 0
    finally:
        if started:
            shutdown()


T = TypeVar("T")


def on_main_rank(main: bool, step: Callable[[], T]) -> T | None:
    """Run ``step()`` on the main rank only, as if it were the only process
    (:func:`attnviz.distributed.local_only`: an analysis run inside it neither shards nor
    gathers), while every other rank waits for it; if it fails there, every rank fails (the
    main rank with its own error, the others in one line). Every rank must call this at the
    same point: it is a collective step. Returns ``step()``'s value on the main rank."""
    from ..distributed import all_reduce_max, local_only

    value: T | None = None
    error: BaseException | None = None
    if main:
        try:
            with local_only():
                value = step()
        except BaseException as exc:  # re-raised below, after the other ranks know
            error = exc
    failed = all_reduce_max(int(error is not None))
    if error is not None:
        raise error
    if failed:
        raise OutputError("rank 0 failed while writing the outputs (see its error)")
    return value


def sites_argument(values: Sequence[str] | None) -> Any:
    """``--sites`` as the analyses take it: None, ``"all"`` or a list."""
    if values is None:
        return None
    return "all" if list(values) == ["all"] else list(values)


# ----------------------------------------------------------------------------- the output folder
def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _result_kind(folder: Path) -> str | None:
    """The kind of the result in ``folder/result`` (None if there is none)."""
    from ..results import read_manifest

    with contextlib.suppress(Exception):
        kind = read_manifest(folder / "result").get("kind")
        return kind if isinstance(kind, str) and kind else None
    return None


_LOCK_RETRIES = 20


@dataclass
class OutputFolder:
    """``OUT``, checked before any work and locked while a command writes into it.

    Checks: not a file, writable, not inside (or equal to) an image folder, and not locked by
    another running attnviz (``OUT/.attnviz.lock``: an advisory ``flock`` on a plain file,
    opened without following a symlink, re-checked to be the file at that name after locking,
    and never removed, so that two writers can never hold locks on two different files; the
    second run is refused).

    Each analysis owns its files. The analysis (``analysis=``, else the kind of the first
    result saved) writes into :attr:`root`: ``OUT`` itself when OUT holds no result of another
    analysis (the single-analysis layout: ``OUT/result/``, ``OUT/figures/``,
    ``OUT/summary.txt``), else ``OUT/<analysis>/`` with the same files inside. Rerunning an
    analysis removes only the figures its own earlier run listed in
    ``figures/.attnviz-figures.json`` (plain file names inside that folder; anything else in
    the list is ignored with a warning). Checkpoints go to ``OUT/checkpoint/``, named per
    analysis.
    """

    path: Path
    images: Sequence[Path] = ()
    analysis: str | None = None
    _lock: int | None = field(default=None, repr=False)
    _root: Path | None = field(default=None, repr=False)

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint"

    @property
    def root(self) -> Path:
        """Where this analysis's result, figures, viewer and summary go (see the class)."""
        if self._root is None:
            self._root = self._root_for(self.analysis)
        return self._root

    def _root_for(self, kind: str | None) -> Path:
        if kind is None:
            return self.path
        top = _result_kind(self.path)
        if top == kind or (top is None and _result_kind(self.path / kind) != kind):
            return self.path
        return self.path / kind

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
        self._lock = self._acquire()
        return self

    def _open_lock(self) -> int:
        """A descriptor of ``OUT/.attnviz.lock``: a plain file, never through a symlink."""
        path = self.path / LOCK_FILE
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        refuse = (
            f"--out {self.path}: {LOCK_FILE} is not a plain file of its own (a symlink, folder, "
            "device or hard link); remove it and run again"
        )
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise OutputError(refuse) from None
            raise OutputError(f"cannot lock --out {self.path}: {exc.strerror or exc}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            raise OutputError(refuse)
        return fd

    def _acquire(self) -> int:
        path = self.path / LOCK_FILE
        for _ in range(_LOCK_RETRIES):
            fd = self._open_lock()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 300, 0).decode("utf-8", "replace").strip()
                os.close(fd)
                raise OutputError(
                    f"--out {self.path} is in use by another running attnviz "
                    f"({holder.splitlines()[0] if holder else 'another process'}); wait for "
                    "it or choose another output folder"
                ) from None
            # the lock holds only if the file is still the one at that name (not removed or
            # replaced between our open and our flock): else drop it and try again
            mine = os.fstat(fd)
            try:
                now = os.stat(path, follow_symlinks=False)
                same = (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                holder = f"pid {os.getpid()}: attnviz {' '.join(sys.argv[1:2])}\n"
                os.pwrite(fd, holder.encode("utf-8", "replace"), 0)
                return fd
            os.close(fd)
        raise OutputError(f"cannot lock --out {self.path}: its lock file keeps changing")

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            # the file stays: removing a locked file would let two writers lock two files
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock, 0)
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            os.close(self._lock)
            self._lock = None

    # -- writing ---------------------------------------------------------------------------
    def save_result(self, result: Any, name: str = "result") -> Path:
        if self._root is None and self.analysis is None:
            self._root = self._root_for(getattr(result, "kind", None) or None)
        return result.save(self.root / name)

    def save_figures(
        self,
        figures: dict[str, Any],
        name: str = "figures",
        formats: Sequence[str] = ("png", "svg"),
    ) -> list[Path]:
        """Write each figure as ``<name>.<fmt>``; remove the earlier run's figures not
        written again (only plain files its list names); close the figures."""
        import matplotlib.pyplot as plt

        from ..results import remove_listed_files

        directory = self.root / name
        directory.mkdir(parents=True, exist_ok=True)
        listing = directory / FIGURES_LIST
        earlier: list[Any] = []
        with contextlib.suppress(OSError, ValueError):
            listed = json.loads(listing.read_text(encoding="utf-8"))
            earlier = listed if isinstance(listed, list) else []
        written: list[Path] = []
        for stem, fig in figures.items():
            for ext in formats:
                path = directory / f"{stem}.{ext}"
                fig.savefig(path, dpi=150 if ext == "png" else None, bbox_inches="tight")
                written.append(path)
            plt.close(fig)
        names = [p.name for p in written]
        remove_listed_files(directory, earlier, keep=set(names), listing=listing)
        atomic_write_text(listing, json.dumps(names, indent=1))
        return written

    def save_summary(self, text: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(self.root / SUMMARY_FILE, text.rstrip() + "\n")

    def remove_checkpoint(self, analysis: str) -> None:
        """Remove this command's own checkpoint files, with the temporary files of their atomic
        writes that a killed run left (``.<name>.tmp-*``), and the folder if left empty."""
        folder = self.checkpoint
        if not folder.is_dir():
            return
        own = f"{analysis}-rank*-of*.npz"
        for f in [*folder.glob(own), *folder.glob(f".{own}.tmp-*")]:
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if empty


@contextlib.contextmanager
def output_folder(
    out: str | os.PathLike, images: Sequence[str | os.PathLike] = (), analysis: str | None = None
) -> Iterator[OutputFolder]:
    """The locked :class:`OutputFolder` ``out``; ``analysis``: the kind of result the command
    writes (its files go to ``OUT/<analysis>/`` if OUT holds another analysis's result)."""
    image_dirs = [Path(i) for i in images if Path(i).is_dir()]
    with OutputFolder(Path(out), image_dirs, analysis) as folder:
        yield folder


def report(out: OutputFolder, result: Any, summary: str) -> int:
    """Write ``summary.txt``, print the summary, the skipped files and what was written."""
    out.save_summary(summary)
    print(summary)
    for path, reason in getattr(result, "skipped", []):
        print(f"skipped {path}: {reason}")
    root = out.root
    print(f"wrote {root / 'result'}, {root / 'figures'} and {root / SUMMARY_FILE}")
    return 0
