"""The HTML report and the query viewer's notebook output in headless Chromium (Debian's
``chromium``, which ``make test`` installs; driven by playwright): no console error, no
request beyond the page itself, every figure drawn with a size, and a click on the viewer
changes the map drawn."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL = ("file:", "data:", "about:", "blob:")

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the dev extra)")
if not Path(CHROMIUM).exists():
    pytest.skip("chromium is not installed (make test installs it)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    # playwright starts chromium with a fresh temporary profile (user data dir) each time
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


class Page:
    """A page that records console errors and every request, and blocks non-local ones."""

    def __init__(self, browser):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else 0)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))

        def route(r):
            if r.request.url.startswith(LOCAL):
                r.continue_()
            else:
                r.abort()

        self.page.route("**/*", route)

    def open(self, path: Path):
        self.page.goto(path.as_uri())
        self.page.wait_for_load_state("load")
        return self.page

    def check_clean(self):
        assert self.errors == []
        assert [u for u in self.requests if not u.startswith(LOCAL)] == []


def _click_changes_the_map(page, viewer) -> None:
    canvas = viewer.locator("canvas.qv-map")
    page.wait_for_function(
        "el => el.dataset.query !== ''", arg=viewer.element_handle(), timeout=5000
    )
    before_query = viewer.get_attribute("data-query")
    before = canvas.evaluate("c => c.toDataURL()")
    box = canvas.bounding_box()
    assert box["width"] > 100 and box["height"] > 100
    canvas.click(position={"x": 5, "y": box["height"] - 5})  # the bottom-left cell
    gh = canvas.evaluate("c => JSON.parse(c.closest('div.attnviz-query-viewer')"
                         ".querySelector('.qv-data').textContent).grid[0]")  # fmt: skip
    assert viewer.get_attribute("data-query") == f"{gh - 1},0" != before_query
    assert canvas.evaluate("c => c.toDataURL()") != before  # other pixels drawn
    assert f"({gh - 1}, 0)" in viewer.locator(".qv-info").inner_text()


def test_report_in_chromium(browser, analysis_folders, tmp_path):
    from attnviz.report import write_report

    path = write_report([analysis_folders["queries"], analysis_folders["excitation"]],
                        tmp_path / "report.html")  # fmt: skip
    p = Page(browser)
    page = p.open(path)
    figures = page.locator("figure.attnviz-figure svg")
    assert figures.count() >= 5
    for i in range(figures.count()):
        box = figures.nth(i).bounding_box()
        assert box is not None and box["width"] > 50 and box["height"] > 50, i
    viewers = page.locator("div.attnviz-query-viewer")
    assert viewers.count() == 1
    _click_changes_the_map(page, viewers.first)
    p.check_clean()


def test_viewer_notebook_output_in_chromium(browser, analysis_folders, tmp_path):
    """Two outputs of ``_repr_html_`` in one page, as a notebook shows them: each works on
    its own."""
    from attnviz.report import load_result
    from attnviz.viewer import QueryViewer

    view = QueryViewer(load_result(analysis_folders["queries"] / "viewer"))
    cells = "".join(
        f'<div class="output_area"><div class="output_html">{view._repr_html_()}</div></div>'
        for _ in range(2)
    )
    path = tmp_path / "notebook.html"
    path.write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>{cells}'
                    "</body></html>", encoding="utf-8")  # fmt: skip
    p = Page(browser)
    page = p.open(path)
    first, second = page.locator("div.attnviz-query-viewer").all()
    page.wait_for_function("el => el.dataset.query !== ''", arg=first.element_handle())
    start = first.get_attribute("data-query")
    _click_changes_the_map(page, second)
    assert first.get_attribute("data-query") == start  # the other output is untouched
    p.check_clean()
