"""The scale-sweep notebook runs top to bottom on the bundled sk_tiny, shows its figures, and
prints the numbers a hand computation gives (same bundled model, same scenes; D from plain
forward hooks on the SK units' softmax and NumPy, no attnviz analysis code)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient
from test_notebook_outputs import assert_outputs_current

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "scale_sweep.ipynb"


@pytest.fixture(scope="session")
def executed(built_once):
    from attnviz.models import bundled_models

    assert "sk_tiny" in bundled_models(), "bundled sk_tiny checkpoint missing"

    def build(path):  # executed once per test run, whichever worker asks first
        book = nbformat.read(NOTEBOOK, as_version=4)
        NotebookClient(
            book, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(path)}}
        ).execute()
        nbformat.write(book, path / "executed.ipynb")

    book = nbformat.read(built_once("sweep-notebook", build) / "executed.ipynb", as_version=4)
    outputs = [out for cell in book.cells if cell.cell_type == "code" for out in cell.outputs]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, errors[0].get("evalue") if errors else ""
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    return outputs, text, book


@pytest.mark.slow
def test_scale_sweep_notebook_is_committed_with_current_outputs(executed):
    assert_outputs_current(NOTEBOOK, executed[2])


@pytest.mark.slow
def test_scale_sweep_notebook_prints_the_hand_computed_d(executed):
    """A swap of the SK branches flips the sign of D, and fails here."""
    _, text, _ = executed
    hand_d = _hand_d()
    for site, d in hand_d.items():
        printed = re.search(
            rf"{site} +D: ([+-]\S+) ([+-]\S+) ([+-]\S+) +native dD\(2.0x\): ([+-]\S+) ", text
        ).groups()
        values = [float(v) for v in printed]
        # printed with 4 decimals: |error| <= 5e-5 plus float32 noise
        np.testing.assert_allclose(values[:3], d.mean(axis=0), atol=6e-5, err_msg=site)
        assert values[3] == pytest.approx((d[:, 2] - d[:, 0]).mean(), abs=6e-5), site


@pytest.mark.slow
def test_scale_sweep_notebook(executed):
    outputs, text, _ = executed
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert images == 5  # the views, Fig. 3, delta bars, Fig. 4, delta bars with controls
    assert "sk_tiny: 60 images, views = native renders" in text
    assert "SK_2_1: 3x3 d1 | 3x3 d2" in text
    assert "resolution control" in text and "zoom - control" in text
    assert re.search(r"60 images, 0 skipped, [\d.]+ s \([\d.]+ images/s\)", text)
    # the table shows the paired columns
    frame = next(o["data"]["text/plain"] for o in outputs if "delta_D_se" in o.get("data", {}).get(
        "text/plain", ""))  # fmt: skip
    assert "site" in frame.split("\n")[0] and "condition" in frame.split("\n")[0]
    # the numbers it prints are the numbers it stored
    from attnviz.analysis.scale_sweep import ScaleSweepResult

    saved = Path(re.search(r"saved to (\S+) ", text).group(1))
    result = ScaleSweepResult.load(saved)
    assert result.n_images == 60 and result.views_native and result.site_aliases[0] == "SK_2_1"
    assert "views.csv" in text
    findings = pd.read_csv(re.search(r"findings: (\S+)", text).group(1))
    assert findings.site.tolist() == result.site_aliases
    for site in result.site_aliases:
        printed = re.search(
            rf"{site} +D: ([+-]\S+) ([+-]\S+) ([+-]\S+) +native dD\(2.0x\): ([+-]\S+) ", text
        ).groups()
        values = [float(v) for v in printed]
        np.testing.assert_allclose(values[:3], result.d_mean[site], atol=5e-5)
        assert values[3] == pytest.approx(result.delta(site, 2.0)[0], abs=5e-5)
        row = findings[findings.site == site].iloc[0]
        np.testing.assert_allclose(
            [row["D_1.0x"], row["D_1.5x"], row["D_2.0x"]], result.d_mean[site], atol=1e-12
        )
        assert row["native_dD_z"] == pytest.approx(result.delta(site, 2.0)[2], rel=1e-9)
    assert (saved.parent / "summary.txt").read_text() == result.summary() + "\n"


def _hand_d() -> dict[str, np.ndarray]:
    """(60, 3) D per scene and scale per SK unit: the 60 scenes of the notebook (seed 20000,
    sk_tiny's training object sizes), each native view normalised with NumPy, one forward per
    view, b - a averaged over channels from the ``select`` softmax (Li et al. Eq. 5-6)."""
    import torch

    from attnviz.data.shapes import ShapeScenes, train_object_size_range
    from attnviz.models import load_model

    model, config = load_model("sk_tiny")
    model.eval()
    scenes = ShapeScenes(
        60, scales=(1.0, 1.5, 2.0), seed=20_000, object_range=train_object_size_range("sk_tiny")
    )
    units = [(n, m) for n, m in model.named_modules() if type(m).__name__ == "SKConv"]
    names = {}
    for n, _ in units:  # paper aliases SK_<stage>_<block>: layerX.Y -> stage X + 1, block Y + 1
        layer, block = n.split(".")[:2]
        names[n] = f"SK_{int(layer[5:]) + 1}_{int(block) + 1}"
    seen: dict[str, np.ndarray] = {}
    hooks = [
        m.select.register_forward_hook(
            lambda mod, i, out, key=names[n]: seen.__setitem__(key, out.detach().double())
        )
        for n, m in units
    ]
    mean = np.asarray(config.mean, np.float32)
    std = np.asarray(config.std, np.float32)
    d = {a: np.zeros((60, 3)) for a in names.values()}
    try:
        for k in range(60):
            for s, view in enumerate(scenes.views(k)):
                assert view.size == (64, 64)  # native renders at the input size
                arr = (np.asarray(view, np.float32) / 255.0 - mean) / std
                x = torch.from_numpy(arr.transpose(2, 0, 1).copy())[None]
                with torch.no_grad():
                    model(x)
                for a, att in seen.items():
                    w = att.reshape(att.shape[1], -1).numpy()  # (M, C), branch 0 = 3x3
                    d[a][k, s] = w[-1].mean() - w[0].mean()
    finally:
        for h in hooks:
            h.remove()
    return d
