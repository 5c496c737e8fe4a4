"""The result folder format (``attnviz.results``): atomic writes, permissions, cleanup after a
failed write, what a save may delete, what a load refuses. Written to kill the mutants that
survived the first mutation run (see TESTING.md)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest

from attnviz.errors import AttnvizError
from attnviz.results import Result, ResultFormatError, atomic_write, read_manifest


@dataclass
class Tiny(Result):
    kind: ClassVar[str] = "tiny"
    format_version: ClassVar[int] = 2

    values: np.ndarray
    name: str = "café"  # not ASCII
    extra: dict[str, Any] = field(default_factory=dict)
    own_versions: dict[str, str] | None = None

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"v": self.values})

    def summary(self) -> str:
        return "tiny"

    def _payload(self):
        fields: dict[str, Any] = {"name": self.name, "extra": self.extra}
        if self.own_versions is not None:
            fields["versions"] = self.own_versions
        return {"values": self.values}, {"tiny.csv": self.to_frame()}, fields

    @classmethod
    def _restore(cls, manifest, arrays):
        return cls(values=arrays["values"], name=manifest["name"], extra=manifest["extra"])


def test_atomic_write_uses_a_hidden_temporary_beside_the_target(tmp_path):
    seen = []

    def write(p: Path) -> None:
        seen.append(p)
        p.write_text("x")

    atomic_write(tmp_path / "table.csv", write)
    (tmp,) = seen
    assert tmp.parent == tmp_path and tmp.name.startswith(".table.csv.tmp-")
    assert (tmp_path / "table.csv").read_text() == "x" and not tmp.exists()


def test_atomic_write_permissions_follow_the_umask(tmp_path):
    for umask, mode in ((0o027, 0o640), (0o022, 0o644)):
        old = os.umask(umask)
        try:
            atomic_write(tmp_path / "a.txt", lambda p: p.write_text("a"))
        finally:
            os.umask(old)
        assert (tmp_path / "a.txt").stat().st_mode & 0o777 == mode
    assert os.umask(old) == old  # the process umask is unchanged


def test_atomic_write_cleans_up_and_reraises(tmp_path):
    def fails(p: Path) -> None:
        p.write_text("half")
        raise ValueError("disk full")

    with pytest.raises(ValueError, match="disk full"):
        atomic_write(tmp_path / "b.txt", fails)
    assert list(tmp_path.iterdir()) == []

    def removes_then_fails(p: Path) -> None:
        p.unlink()
        raise KeyError("gone")

    with pytest.raises(KeyError, match="gone"):
        atomic_write(tmp_path / "c.txt", removes_then_fails)
    assert list(tmp_path.iterdir()) == []


def test_manifest_is_indented_ascii_json_with_versions(tmp_path):
    r = Tiny(np.arange(3.0), extra={"n": np.int64(3), "x": np.float32(0.5), "p": Path("a/b")})
    r.save(tmp_path)
    raw = (tmp_path / "manifest.json").read_bytes()
    assert raw.isascii() and b'\n  "kind": "tiny"' in raw
    manifest = json.loads(raw)
    assert manifest["name"] == "café" and manifest["extra"] == {"n": 3, "x": 0.5, "p": "a/b"}
    assert {"attnviz", "numpy", "python"} <= set(manifest["versions"])
    assert manifest["files"] == ["tiny.npz", "tiny.csv", "manifest.json"]
    # a result may carry the versions it was made with
    Tiny(np.arange(2.0), own_versions={"attnviz": "0.0.1"}).save(tmp_path / "own")
    assert read_manifest(tmp_path / "own")["versions"] == {"attnviz": "0.0.1"}
    assert Tiny.load(tmp_path).name == "café"


def test_save_deletes_only_its_own_stale_plain_files(tmp_path):
    (tmp_path / "out").mkdir()
    outside = tmp_path / "outside.csv"
    outside.write_text("keep")
    (tmp_path / "out" / "mine.csv").write_text("user")
    (tmp_path / "out" / "stale.csv").write_text("old")
    manifest = {"files": ["stale.csv", "../outside.csv", 7, "gone.csv", "manifest.json"]}
    manifest["kind"] = Tiny.kind  # only an earlier save of the same kind lists its own files
    (tmp_path / "out" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="not a plain file name"):
        Tiny(np.arange(2.0)).save(tmp_path / "out")
    assert outside.read_text() == "keep"  # not a plain name: never touched
    assert (tmp_path / "out" / "mine.csv").read_text() == "user"
    assert not (tmp_path / "out" / "stale.csv").exists()  # listed by the earlier save
    # an earlier manifest that is not an object is ignored
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "manifest.json").write_text("[1, 2]")
    Tiny(np.arange(2.0)).save(tmp_path / "odd")
    assert Tiny.load(tmp_path / "odd").values.tolist() == [0.0, 1.0]


def test_save_to_a_file_is_refused_with_its_name(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(AttnvizError, match="cannot save a result to .*f: it is a file"):
        Tiny(np.arange(2.0)).save(tmp_path / "f")


def test_load_refusals_name_the_problem(tmp_path):
    r = Tiny(np.arange(2.0))
    folder = r.save(tmp_path / "r")
    manifest = json.loads((folder / "manifest.json").read_text())
    # an old manifest without a format version still loads (version 0)
    del manifest["format_version"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert Tiny.load(folder).values.tolist() == [0.0, 1.0]
    # no kind
    del manifest["kind"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        ResultFormatError, match="holds a result of unknown kind, not of kind 'tiny'"
    ):
        Tiny.load(folder)
    # unreadable manifest and npz
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(ResultFormatError, match=r"cannot read .*manifest.json"):
        Tiny.load(folder)
    folder = r.save(tmp_path / "s")
    (folder / "tiny.npz").write_bytes(b"not a zip")
    with pytest.raises(ResultFormatError, match=r"cannot read .*tiny.npz"):
        Tiny.load(folder)


def test_load_never_unpickles(tmp_path):
    folder = Tiny(np.arange(2.0)).save(tmp_path / "p")
    with open(folder / "tiny.npz", "wb") as fh:
        np.savez(fh, values=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ResultFormatError, match="cannot read"):
        Tiny.load(folder)
