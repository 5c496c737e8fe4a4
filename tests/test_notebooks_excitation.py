"""The excitation and CBAM-vs-Grad-CAM notebooks run top to bottom and draw their figures."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _run(name: str) -> nbformat.NotebookNode:
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(
        book, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    return book


def _images(book: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in out.get("data", {})
        for cell in book.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )


def _errors(book: nbformat.NotebookNode) -> list[str]:
    return [
        out.get("ename", "")
        for cell in book.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]


@pytest.mark.slow
def test_se_excitation_notebook():
    book = _run("se_excitation.ipynb")
    assert not _errors(book)
    assert _images(book) == 3  # Fig. 6, Fig. 7, specificity vs depth
    text = "".join(out.get("text", "") for cell in book.cells for out in cell.get("outputs", []))
    assert "50 images;" in text and "squeeze_specificity" in text and "null_p95" in text


@pytest.mark.slow
def test_cbam_vs_gradcam_notebook():
    book = _run("cbam_vs_gradcam.ipynb")
    assert not _errors(book)
    assert _images(book) == 4  # Grad-CAM across models, CBAM overlays, agreement bars, GC
    text = "".join(out.get("text", "") for cell in book.cells for out in cell.get("outputs", []))
    assert "10 images, " in text and "models, Grad-CAM for the label class" in text
    assert "compared at the coarser grid of the two" in text
    assert "Grad-CAM layer: layer4 | target: label" in text
    assert "10 images, Grad-CAM at layer4 for the label class; top-20% IoU" in text  # summary()
