"""The Non-local queries notebook runs top to bottom and shows its figures and table."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "nonlocal_queries.ipynb"


def _missing(names: list[str]) -> list[str]:
    from attnviz.models import bundled_models

    have = set(bundled_models())
    return [n for n in names if n not in have]


@pytest.mark.slow
def test_nonlocal_queries_notebook():
    missing = _missing(["nl_tiny", "nl_tiny_gaussian", "nl_tiny_dot", "nl_tiny_concat"])
    assert not missing, f"bundled checkpoints missing: {missing}"
    book = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        book,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()
    outputs = [out for cell in book.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert images >= 3  # Fig. 2 grid, distance heatmap, Table 1 figure
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "20 held-out images" in text
    for name in ("nl_tiny_gaussian", "nl_tiny_dot", "nl_tiny_concat", "GCNet paper"):
        assert f"| {name} |" in text
    assert "query (3, 12)" in text
    assert "eff_keys" in text and "near_one_hot" in text  # the degeneracy table
    # the Fig. 2 maps kept from the statistics' one forward equal query_maps on the same images
    diff = text.split("max |difference| of the kept maps:")[1].split()[0]
    assert float(diff) < 1e-5
    assert any(
        "application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs
    )  # the inspector displayed as a widget
