"""Result folders of the analyses: npz arrays + csv frames + ``manifest.json`` with versions.

Every analysis result's ``save(dir)`` / ``load(dir)`` goes through :func:`save_result_dir` /
:func:`load_result_dir`, so all of them are written atomically (temporary folder, then
``os.replace``) and carry the same ``versions`` record.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

MANIFEST_FILE = "manifest.json"


def versions() -> dict[str, str]:
    """Versions of the software that produced a result (for manifests); imports nothing."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    out = {"attnviz": __version__, "python": platform.python_version()}
    for package in ("torch", "torchvision", "timm", "captum", "numpy", "pillow"):
        with contextlib.suppress(PackageNotFoundError):
            out[package] = version(package)
    return out


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def save_result_dir(
    directory: str | os.PathLike,
    *,
    arrays: Mapping[str, np.ndarray],
    frames: Mapping[str, pd.DataFrame],
    manifest: Mapping[str, Any],
    npz_name: str,
    compress: bool = True,
    keep_other_files: bool = False,
) -> Path:
    """Write ``npz_name`` (``arrays``), one csv per ``frames`` entry and ``manifest.json``.

    Everything is written into a temporary folder next to ``directory`` first. By default the
    finished folder then replaces ``directory`` as a whole (one ``os.replace``; an older
    folder's files are gone). With ``keep_other_files`` the new files are moved into
    ``directory`` one by one and files not rewritten stay (e.g. figures written beside them).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    if keep_other_files:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=directory))
    else:
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        (np.savez_compressed if compress else np.savez)(tmp / npz_name, **arrays)
        for name, frame in frames.items():
            frame.to_csv(tmp / name, index=False)
        text = json.dumps(dict(manifest), indent=2, default=_json_default)
        (tmp / MANIFEST_FILE).write_text(text)
        if keep_other_files:
            for f in tmp.iterdir():
                os.replace(f, directory / f.name)
        else:
            _replace_dir(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished folder ``tmp`` to ``target``, replacing an older one."""
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "x")
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def load_result_dir(
    directory: str | os.PathLike, npz_name: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(manifest, arrays)`` of a folder written by :func:`save_result_dir`."""
    directory = Path(directory)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    with np.load(directory / npz_name) as z:
        arrays = {k: z[k] for k in z.files}
    return manifest, arrays
