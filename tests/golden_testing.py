"""Reviewed golden JSON files of named cases (``tests/golden/``): read once per run, rewritten
only with ``ATTNVIZ_UPDATE_GOLDEN=1`` after the diff was reviewed."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable
from pathlib import Path

import pytest

UPDATE = bool(os.environ.get("ATTNVIZ_UPDATE_GOLDEN"))


@functools.cache
def read_golden(path: Path) -> dict:
    """The cases of a golden file ({} when it does not exist yet)."""
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def assert_matches_golden(path: Path, got: dict, what: str = "cases") -> None:
    """Every case of ``got`` equals the golden file's, and no golden case is missing."""
    want = read_golden(path)
    diffs = [f"{k}:\n  want {want.get(k)!r}\n  got  {got.get(k)!r}"
             for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)]  # fmt: skip
    assert not diffs, f"{len(diffs)} {what} differ (review, then regenerate):\n" + "\n".join(diffs)


def write_golden(path: Path, got: dict, cases: Iterable[str]) -> None:
    """Merge the regenerated cases ``got`` into the golden file, keeping only ``cases``."""
    keep = set(cases)
    merged = {**read_golden(path), **got}
    read_golden.cache_clear()
    path.parent.mkdir(exist_ok=True)
    ordered = {k: merged[k] for k in sorted(merged) if k in keep}
    path.write_text(json.dumps(ordered, indent=1, sort_keys=True) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def golden_updates(request: pytest.FixtureRequest):
    """With ``ATTNVIZ_UPDATE_GOLDEN=1``: the cases a test module regenerates, written into its
    ``GOLDEN`` file (keeping its ``CASES``) once the module is done."""
    got: dict[str, dict] = {}
    yield got
    if got:
        write_golden(request.module.GOLDEN, got, request.module.CASES)
