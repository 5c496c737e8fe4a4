"""One result format for every analysis: :class:`Result` and its folder on disk.

A result folder holds ``<kind>.npz`` (arrays), one csv per table and ``manifest.json``
(``kind``, ``format_version``, the files it wrote, versions, and the result's own fields).

* ``save(dir)`` writes each file to a temporary name in ``dir`` and renames it into place
  (``os.replace``), the manifest last, so a reader never sees a half-written file. It writes
  only its own files: other files in ``dir`` are never touched, and of the files an earlier
  save of a result of the same kind listed in its manifest, only plain files this save no
  longer writes are removed (:func:`remove_listed_files`; a damaged list is ignored with a
  warning).
* ``load(dir)`` checks ``kind`` and refuses a newer ``format_version``, naming the path.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import pandas as pd

from ._version import __version__
from .errors import AttnvizError

MANIFEST_FILE = "manifest.json"

R = TypeVar("R", bound="Result")


class ResultFormatError(AttnvizError, ValueError):
    """A folder does not hold a result of the expected kind or format version."""


def versions() -> dict[str, str]:
    """Versions of the software that produced a result (for manifests); imports nothing."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"attnviz": __version__, "python": platform.python_version()}
    for package in ("torch", "torchvision", "timm", "captum", "numpy", "pillow"):
        with contextlib.suppress(PackageNotFoundError):
            out[package] = version(package)
    return out


def json_default(o: Any) -> Any:
    """``json.dumps`` fallback for numpy scalars and arrays, paths and tuples."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # as a plain open() would create it, not mkstemp's 0600
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise ResultFormatError(f"{directory} holds no attnviz result (no {MANIFEST_FILE})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ResultFormatError(f"cannot read {path}: {exc}") from None


def wrong_kind(directory: str | os.PathLike, found: object, expected: str) -> str:
    """The message of a result folder that holds another kind of result than the one asked."""
    what = f"a result of kind {found!r}" if found else "a result of unknown kind"
    return f"{directory} holds {what}, not of kind {expected!r}"


class Result:
    """Base of every analysis result: ``to_frame()``, ``summary()``, ``save()``, ``load()``.

    A subclass sets ``kind`` (the analysis name) and ``format_version``, and implements
    :meth:`to_frame`, :meth:`summary`, :meth:`_payload` (arrays, frames, manifest fields) and
    :meth:`_restore` (the inverse of ``_payload``).
    """

    kind: ClassVar[str] = ""
    format_version: ClassVar[int] = 1

    # -- to implement ----------------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:  # pragma: no cover - abstract
        raise NotImplementedError

    def summary(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def effects(self) -> pd.DataFrame:
        """The result's effects, one row each: key columns (site, scale, metric, ...), then
        ``effect`` (the measured value) and ``se`` (its image-sampling standard error, NaN where
        none is known). The table that seeds and baselines are compared on
        (:mod:`attnviz.analysis.replicates`)."""
        raise NotImplementedError(f"{type(self).__name__} has no effect table")

    def _payload(self) -> tuple[dict[str, np.ndarray], dict[str, pd.DataFrame], dict[str, Any]]:
        """``(arrays, frames by csv name, manifest fields)`` of this result."""
        raise NotImplementedError  # pragma: no cover - abstract

    @classmethod
    def _restore(cls: type[R], manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> R:
        raise NotImplementedError  # pragma: no cover - abstract

    # -- shared ----------------------------------------------------------------------------
    @property
    def npz_name(self) -> str:
        return f"{self.kind}.npz"

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the result into ``directory`` (created if needed); see the module docstring."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise AttnvizError(f"cannot save a result to {directory}: it is a file")
        directory.mkdir(parents=True, exist_ok=True)
        arrays, frames, fields = self._payload()
        written = [self.npz_name, *frames, MANIFEST_FILE]
        earlier = _files_of_earlier_save(directory, self.kind)
        atomic_write(directory / self.npz_name, lambda p: _write_npz(p, arrays))
        for name, frame in frames.items():
            atomic_write(directory / name, lambda p, f=frame: f.to_csv(p, index=False))
        manifest = {
            "kind": self.kind,
            "format_version": self.format_version,
            "files": written,
            **fields,
            "versions": fields.get("versions") or versions(),
        }
        text = json.dumps(manifest, indent=2, default=json_default, ensure_ascii=True)
        atomic_write_text(directory / MANIFEST_FILE, text + "\n")
        remove_listed_files(
            directory, earlier, keep=set(written), listing=directory / MANIFEST_FILE
        )
        return directory

    @classmethod
    def load(cls: type[R], directory: str | os.PathLike) -> R:
        """Read a result written by :meth:`save`, checking its kind and format version."""
        manifest = read_manifest(directory)
        kind = manifest.get("kind")
        if kind != cls.kind:
            raise ResultFormatError(wrong_kind(directory, kind, cls.kind))
        version = int(manifest.get("format_version", 0))
        if version > cls.format_version:
            raise ResultFormatError(
                f"{directory} was written in {cls.kind} format {version}, newer than this "
                f"attnviz reads ({cls.format_version}); upgrade attnviz to load it"
            )
        path = Path(directory) / f"{cls.kind}.npz"
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise ResultFormatError(f"cannot read {path}: {exc}") from None
        return cls._restore(manifest, arrays)


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **{k: np.asarray(v) for k, v in arrays.items()})


def _files_of_earlier_save(directory: Path, kind: str) -> list[Any]:
    """The files an earlier save of a ``kind`` result listed in ``directory``'s manifest
    (nothing if it holds another kind: its files are not this result's to remove)."""
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(manifest, dict) or manifest.get("kind") != kind:
        return []
    files = manifest.get("files")
    return [f for f in files if f != MANIFEST_FILE] if isinstance(files, list) else []


def _plain_name(name: Any) -> bool:
    """A file name without a folder part: not '', '.', '..', absolute or with a separator."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and name == Path(name).name
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
    )


def remove_listed_files(
    directory: Path, names: Iterable[Any], *, keep: set[str], listing: Path
) -> None:
    """Remove the files ``names`` (an earlier run's own list, in ``listing``) from
    ``directory``, except those in ``keep``. Only plain files directly inside ``directory``
    are removed; any other entry (a path, '..', a folder, a symlink, a non-string) is left
    alone with a warning, never an error: this runs after the analysis has finished."""
    import warnings

    for name in names:
        if isinstance(name, str) and name in keep:
            continue
        if not _plain_name(name):
            warnings.warn(
                f"ignored {name!r} in {listing}: not a plain file name inside the folder",
                stacklevel=2,
            )
            continue
        target = directory / name
        try:
            st = target.lstat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            warnings.warn(f"kept {target}: {exc.strerror or exc}", stacklevel=2)
            continue
        if not stat.S_ISREG(st.st_mode):
            warnings.warn(f"kept {target}: listed in {listing} but not a plain file", stacklevel=2)
            continue
        try:
            target.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            warnings.warn(f"could not remove {target}: {exc.strerror or exc}", stacklevel=2)


def keyed(prefix: str, table: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{"prefix::key": array}``: several per-site tables in one npz."""
    return {f"{prefix}::{k}": v for k, v in table.items()}


def unkeyed(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """The inverse of :func:`keyed` for one prefix."""
    head = f"{prefix}::"
    return {k[len(head) :]: v for k, v in arrays.items() if k.startswith(head)}


def records(items: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    """Skipped (id, reason) pairs as manifest records."""
    return [{"file": f, "reason": r} for f, r in items]


def from_records(items: Iterable[Mapping[str, str]] | None) -> list[tuple[str, str]]:
    return [(r["file"], r["reason"]) for r in items or ()]
