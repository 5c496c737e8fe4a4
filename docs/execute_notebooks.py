"""Re-execute the notebooks in place so that their committed outputs are the current code's
(``make notebooks``; the notebook tests fail when they are not).

Run from the repository root: ``.venv/bin/python docs/execute_notebooks.py [NAME ...]`` (no
name: every notebook under notebooks/). Each runs in a fresh kernel in a temporary working
folder, with the environment the tests give their kernels (one thread, the Agg backend), and
is written back only when no cell raised."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(path: Path) -> bool:
    book = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="attnviz-notebook-") as cwd:
        client = NotebookClient(
            book, timeout=600, kernel_name="python3", resources={"metadata": {"path": cwd}}
        )
        client.execute()
    errors = [
        o.get("ename", "")
        for cell in book.cells
        if cell.cell_type == "code"
        for o in cell.outputs
        if o.get("output_type") == "error"
    ]
    print(f"{path.name}: {time.perf_counter() - start:.1f} s, errors: {errors or 'none'}")
    if not errors:
        nbformat.write(book, path)
    return not errors


def main(names: list[str]) -> int:
    os.environ.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg", HF_HUB_OFFLINE="1")
    paths = [NOTEBOOKS / f"{Path(n).stem}.ipynb" for n in names] or sorted(
        NOTEBOOKS.glob("*.ipynb")
    )
    return 0 if all([execute(p) for p in paths]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
