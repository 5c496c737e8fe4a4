"""The ablation notebook (issue 22) runs top to bottom on the bundled models, shows each of its
five figures once, and prints the numbers an independent computation gives: the SE gates of
stage 5 set to 1 and the SK selections of the 2.0x renderings replaced by those of the 1.0x
renderings, both by plain forward hooks on the blocks' own submodules (``gate``, ``select``)
and NumPy preprocessing, no attnviz intervention code."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from nbclient import NotebookClient
from test_notebook_outputs import assert_outputs_current

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "ablation.ipynb"


@pytest.fixture(scope="session")
def executed(built_once):
    from attnviz.models import bundled_models

    missing = {"se_tiny", "nl_tiny", "sk_tiny"} - set(bundled_models())
    assert not missing, f"bundled checkpoints missing: {missing}"

    def build(path):  # executed once per test run, whichever worker asks first
        book = nbformat.read(NOTEBOOK, as_version=4)
        NotebookClient(
            book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path)}}
        ).execute()
        nbformat.write(book, path / "executed.ipynb")

    book = nbformat.read(built_once("ablation-notebook", build) / "executed.ipynb", as_version=4)
    outputs = [out for cell in book.cells if cell.cell_type == "code" for out in cell.outputs]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, errors[0].get("evalue") if errors else ""
    text = "".join(o.get("text", "") for o in outputs)
    return book, outputs, text


@pytest.mark.slow
def test_ablation_notebook_is_committed_with_current_outputs(executed):
    book, _, _ = executed
    assert_outputs_current(NOTEBOOK, book)


def _normalise(images, config) -> torch.Tensor:
    mean = np.asarray(config.mean, np.float32)
    std = np.asarray(config.std, np.float32)
    arr = np.stack([(np.asarray(im, np.float32) / 255.0 - mean) / std for im in images])
    return torch.from_numpy(arr.transpose(0, 3, 1, 2).copy())


def _hand_se_stage5() -> float:
    """Mean change of P(label) over the notebook's 20 images with every stage-5 SE gate
    (``layer4.*.attn.gate``, SE_5_1 and SE_5_2) returning ones."""
    from attnviz.data import ShapesDataset
    from attnviz.models import load_model

    model, config = load_model("se_tiny")
    model.eval()
    data = ShapesDataset(2, size=64, seed=30_000)
    x = _normalise([data[i][0] for i in range(len(data))], config)
    y = torch.tensor([data[i][1] for i in range(len(data))])
    rows = torch.arange(len(y))
    with torch.no_grad():
        p0 = model(x).softmax(-1)[rows, y]
        gates = [model.get_submodule(f"layer4.{b}.attn.gate") for b in (0, 1)]
        hooks = [g.register_forward_hook(lambda m, i, o: torch.ones_like(o)) for g in gates]
        try:
            p1 = model(x).softmax(-1)[rows, y]
        finally:
            for h in hooks:
                h.remove()
    return float((p1 - p0).double().mean())


def _hand_sk_patch_all() -> float:
    """Mean change of P(label) on the 2.0x renderings of the notebook's 20 scenes when every
    SK unit's ``select`` output is the one it gave on the 1.0x rendering of the same scene."""
    from attnviz.data import ShapeScenes
    from attnviz.data.shapes import train_object_size_range
    from attnviz.models import load_model

    model, config = load_model("sk_tiny")
    model.eval()
    scenes = ShapeScenes(
        20, scales=(1.0, 2.0), seed=20_000, object_range=train_object_size_range("sk_tiny")
    )
    views = [scenes.views(k) for k in range(20)]
    small = _normalise([v[0] for v in views], config)
    large = _normalise([v[1] for v in views], config)
    y = torch.tensor([scenes.record(k).label for k in range(20)])
    units = [m.select for m in model.modules() if type(m).__name__ == "SKConv"]
    assert len(units) == 8
    kept: dict[int, torch.Tensor] = {}
    rows = torch.arange(20)
    with torch.no_grad():
        hooks = [
            u.register_forward_hook(lambda m, i, o, k=k: kept.__setitem__(k, o.clone()))
            for k, u in enumerate(units)
        ]
        model(small)
        for h in hooks:
            h.remove()
        p0 = model(large).softmax(-1)[rows, y]
        hooks = [u.register_forward_hook(lambda m, i, o, k=k: kept[k]) for k, u in enumerate(units)]
        try:
            p1 = model(large).softmax(-1)[rows, y]
        finally:
            for h in hooks:
                h.remove()
    return float((p1 - p0).double().mean())


def _printed(pattern: str, text: str) -> list[float]:
    match = re.search(pattern, text)
    assert match, pattern
    return [float(v) for v in match.groups()]


@pytest.mark.slow
def test_ablation_notebook_shows_each_figure_once(executed):
    book, outputs, text = executed
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert images == 5  # SE bars, SE heatmap, NL bars, SK heatmap, the patching figure
    assert "20 images; ['SE_2_1'" in text and "model unchanged afterwards: True" in text
    assert "gates used in SE_5_1 (min, max): 1.0 1.0" in text
    assert "Ablation on se_tiny: 20 images" in text and "Ablation on nl_tiny: 20 images" in text
    sources = "\n".join(c.source for c in book.cells if c.cell_type == "code")
    assert "import attnviz" in sources and "attnviz.analysis" not in sources  # public API
    assert "attnviz.scale_patching(" in sources and "wrong scene" in text


@pytest.mark.slow
def test_ablation_notebook_prints_the_hand_computed_changes(executed):
    _, _, text = executed
    hand = _hand_se_stage5()
    (by_hand,) = _printed(r"stage-5 SE gates = 1: mean change of P\(true class\) (\S+)", text)
    (by_api,) = _printed(
        r"ablation, stage:5 constant:1: mean change of P\(true class\) (\S+)", text
    )
    assert by_hand == pytest.approx(hand, abs=6e-5)  # printed with 4 decimals
    assert by_api == pytest.approx(hand, abs=6e-5)
    same, control = _printed(
        r"all SK sites patched into 2.0x: 1.0x selection of the same scene (\S+), "
        r"another scene's at 2.0x (\S+):",
        text,
    )
    assert same == pytest.approx(_hand_sk_patch_all(), abs=6e-5)
    assert ("hurts more" in text) == (same < control)
