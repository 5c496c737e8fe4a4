"""The scale-sweep notebook runs top to bottom on the bundled sk_tiny and shows its figures."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
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
    assert images == 7  # views, 2x stage bars, 2x channel curves, per class, heatmap
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "over 60 images" in text  # the summary table: 6 images x 10 classes
    assert re.search(r"SK_2_1 +D: [+-]\d\.\d{4}", text)
    assert "scale_sweep.npz" in text
