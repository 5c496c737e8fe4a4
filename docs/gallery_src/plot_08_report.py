"""
The HTML report
===============

``attnviz report OUT...`` gathers every analysis folder the commands wrote into one
self-contained page: per analysis its summary table, its summary text, every figure as inline
SVG and, for ``attnviz queries``, the query viewer; nothing on the page is loaded from the
network. Here the commands run on 20 held-out images (the bundled ``nl_tiny``'s query maps and
GCNet statistics, ``se_tiny``'s excitation), and the report of both folders is shown in a frame.
"""

import contextlib
import html
import io
import tempfile
from pathlib import Path

from attnviz import ShapesDataset, write_image_folder
from attnviz.cli import main
from attnviz.report import write_report

with tempfile.TemporaryDirectory(prefix="attnviz-report-") as tmp:
    work = Path(tmp)
    images = write_image_folder(ShapesDataset(2, seed=10_000), work / "images")
    shared = ["--images", str(images), "--no-progress"]
    for command in (
        ["queries", "--model", "nl_tiny", "--figure-images", "2"],
        ["excitation", "--model", "se_tiny", "--permutations", "50"],
    ):
        printed = io.StringIO()  # the commands print their summaries; the report holds them
        with contextlib.redirect_stdout(printed):
            code = main([*command, *shared, "--out", str(work / command[0])])
        print(f"attnviz {command[0]}: exit code {code}")
    report = write_report([work / "queries", work / "excitation"], work / "report.html")
    page = report.read_text(encoding="utf-8")
print(f"report.html: {len(page.encode()) / 1e6:.1f} MB, self-contained")


# %%
# The page itself, in a frame (its own Content-Security-Policy applies inside it).
class Frame:
    def __init__(self, page: str):
        self.page = page

    def _repr_html_(self) -> str:
        return (
            f'<iframe class="attnviz-report" srcdoc="{html.escape(self.page)}" '
            'style="width: 100%; height: 720px; border: 1px solid #ccc"></iframe>'
        )


Frame(page)
