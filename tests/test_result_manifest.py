"""Golden result manifest: every analysis run end to end by the one runner on a bundled model,
its result's messages and keys pinned (issue 26, the class "keys and messages nothing reads").

The analysis tests check the numbers they compute by hand; nothing read the rest of a result:
the text of ``summary()``, the columns of ``to_frame()``, the keys of ``meta`` (the run record,
the controls, the notes) and the files ``save()`` writes. For each analysis on 10 held-out
shapes (one per class) this test pins ``summary()`` (numbers compared to one unit of their last
printed digit, as the notebook outputs are), ``to_frame()``'s columns and a digest of its
values, every key and value of ``meta`` except wall-clock times and versions, ``notes``, and the
names of the saved files. After a deliberate change, review the diff, then regenerate:

    ATTNVIZ_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_result_manifest.py
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from golden_testing import UPDATE, read_golden
from test_capture_manifest import _plain
from test_notebook_outputs import text_differences
from test_plot_digest import _arr, _diff

from attnviz.analysis import (
    ablation,
    attention_vs_attribution,
    excitation_profile,
    gradcam_comparison,
    query_independence,
    query_maps,
    scale_sweep,
)
from attnviz.data import ShapesDataset
from attnviz.data.shapes import SCENE_CONTROLS, ShapeScenes
from attnviz.models import load_model

GOLDEN = Path(__file__).parent / "golden" / "result_manifest.json"
VOLATILE = {"seconds", "images_per_s", "versions", "created", "date", "time", "torch", "host"}


@functools.cache
def _images() -> list:
    held_out = ShapesDataset(1, size=64, seed=10_000)  # the bundled models' held-out split
    return [held_out[i][0] for i in range(len(held_out))]


def _model(name: str) -> tuple:
    return load_model(name)


def _excitation() -> Any:
    model, config = _model("se_tiny")
    return excitation_profile(model, ShapesDataset(1, size=64, seed=10_000), preprocess=config,
                              permutations=20, seed=1, progress=False)  # fmt: skip


def _sweep() -> Any:
    model, config = _model("sk_tiny")
    return scale_sweep(model, ShapesDataset(1, size=64, seed=10_000), scales=(1.0, 1.5),
                       preprocess=config, progress=False)  # fmt: skip


def _sweep_scenes() -> Any:
    """The sweep on natively rendered scenes with every content control."""
    model, config = _model("sk_tiny")
    scenes = ShapeScenes(4, scales=(1.0, 1.5), controls=tuple(SCENE_CONTROLS["names"]))
    return scale_sweep(model, scenes, preprocess=config, per_image=True, progress=False)


def _queries() -> Any:
    model, config = _model("nl_tiny")
    return query_independence(model, _images(), preprocess=config, model_name="nl_tiny",
                              n_queries=4, map_images=1, progress=False)  # fmt: skip


def _query_maps() -> Any:
    model, config = _model("nl_tiny")
    return query_maps(model, _images()[0], queries=[(2, 3), (12, 5)], query_space="cell",
                      preprocess=config)  # fmt: skip


def _attribution() -> Any:
    model, config = _model("cbam_tiny")
    return attention_vs_attribution(model, ShapesDataset(1, size=64, seed=10_000),
                                    preprocess=config, keep_maps=1, progress=False)  # fmt: skip


def _ablation() -> Any:
    model, config = _model("se_tiny")
    return ablation(model, ShapesDataset(1, size=64, seed=10_000), policies=["constant:1", "mean"],
                    preprocess=config, progress=False)  # fmt: skip


def _gradcam() -> Any:
    plain, config = _model("plain_tiny")
    models = {
        "plain_tiny": plain,
        "se_tiny": _model("se_tiny")[0],
        "cbam_tiny": _model("cbam_tiny")[0],
    }
    return gradcam_comparison(models, ShapesDataset(1, size=64, seed=10_000), preprocess=config,
                              keep_maps=1, progress=False)  # fmt: skip


CASES: dict[str, Callable[[], Any]] = {
    "gradcam_comparison": _gradcam,
    "excitation_profile": _excitation,
    "scale_sweep": _sweep,
    "scale_sweep_scenes": _sweep_scenes,
    "query_independence": _queries,
    "query_maps": _query_maps,
    "attention_vs_attribution": _attribution,
    "ablation": _ablation,
}


def _stable(v: Any) -> Any:
    """``_plain`` with wall-clock times and versions left out."""
    if isinstance(v, dict):
        return {str(k): _stable(x) for k, x in v.items() if str(k) not in VOLATILE}
    if isinstance(v, (list, tuple)):
        return [_stable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _arr(v) if v.dtype.kind == "f" else _plain(v.tolist())
    if isinstance(v, np.generic):
        return _stable(v.item())
    return _plain(v)


def _frame(frame: pd.DataFrame) -> dict:
    out: dict[str, Any] = {"columns": [str(c) for c in frame.columns], "rows": len(frame)}
    for col in frame.columns:
        values = frame[col]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            out[str(col)] = _arr(values.to_numpy(dtype=float))
        else:
            out[str(col)] = [str(v) for v in values.tolist()][:40]
    return out


def manifest(case: str, tmp: Path) -> dict:
    result = CASES[case]()
    folder = result.save(tmp / case)
    return json.loads(
        json.dumps(
            {
                "type": type(result).__name__,
                "summary": result.summary(),
                "frame": _frame(result.to_frame()),
                "meta": _stable(result.meta),
                "notes": _stable(getattr(result, "notes", {})),
                "files": sorted(p.name for p in Path(folder).iterdir()),
            }
        )
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_result_matches_its_reviewed_manifest(case, golden_updates, tmp_path):
    got = manifest(case, tmp_path)
    if UPDATE:
        golden_updates[case] = got
        return
    golden = read_golden(GOLDEN)
    assert case in golden, f"{case}: no golden manifest (regenerate: see the docstring)"
    want = dict(golden[case])
    diffs = [f"summary: {d}" for d in text_differences(want.pop("summary"), got.pop("summary"))]
    _diff(want, got, case, diffs)
    if diffs:
        pytest.fail(f"{len(diffs)} differences (review, then regenerate: see the docstring):\n"
                    + "\n".join(diffs[:30]))  # fmt: skip
