"""The scale-sweep notebook runs top to bottom on the bundled sk_tiny and shows its figures."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "scale_sweep.ipynb"


@pytest.mark.slow
def test_scale_sweep_notebook(tmp_path):
    from attnviz.models import bundled_models

    assert "sk_tiny" in bundled_models(), "bundled sk_tiny checkpoint missing"
    book = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        book, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [out for cell in book.cells if cell.cell_type == "code" for out in cell.outputs]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, errors[0].get("evalue") if errors else ""
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert images == 5  # the views, Fig. 3, delta bars, Fig. 4, delta bars with controls
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
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
