"""``attnviz report``: one self-contained HTML page from the CLI's result folders, and the
HTML query viewer inside it (the browser side is in tests/test_browser.py)."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest

from attnviz.report import find_analyses, inline_svg, load_result
from attnviz.viewer import QueryViewer, viewer_cells


@pytest.fixture(scope="module")
def page(analysis_folders, tmp_path_factory):
    from attnviz.report import write_report

    folders = list(analysis_folders.all().values())
    path = write_report(folders, tmp_path_factory.mktemp("r") / "r.html")
    return path.read_text(encoding="utf-8")


def test_report_command_writes_one_page(analysis_folders, cli, tmp_path):
    out = tmp_path / "report.html"
    run = cli("report", analysis_folders["excitation"], analysis_folders["queries"], "--html", out)
    assert run.code == 0 and f"wrote {out}" in run.out
    text = out.read_text(encoding="utf-8")
    assert text.count('<section class="analysis"') == 2
    default = cli("report", analysis_folders["sweep"])
    assert default.code == 0 and (analysis_folders["sweep"] / "report.html").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = cli("report", empty)
    assert bad.code == 2 and "no analysis results" in bad.err


def test_report_holds_every_table_figure_and_viewer(analysis_folders, page):
    folders = find_analyses(analysis_folders.all().values())
    assert len(folders) == len(analysis_folders.RUNS) == page.count('<section class="analysis"')
    n_svg = 0
    for folder in folders:
        listed = json.loads((folder / "figures" / ".attnviz-figures.json").read_text())
        n_svg += sum(name.endswith(".svg") for name in listed)
    assert n_svg > 10 and page.count("<svg") == n_svg  # every figure, inline
    assert page.count('class="attnviz-table"') >= len(folders)  # a summary table each
    assert "<th>cos att</th>" in page and "<th>spearman_mean</th>" in page
    assert page.count('class="attnviz-query-viewer"') == 1  # the per-query site (nl_tiny)
    assert "statistics_table" not in page  # GCNet Table 1 is a table, not an image of text


def test_report_is_self_contained(page):
    # no reference that a browser would fetch: only data: URLs and in-page anchors
    for attr in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert attr.startswith(("data:", "#")), attr
    assert "<link" not in page and "@import" not in page and "url(http" not in page
    ids = Counter(re.findall(r'\bid="([^"]+)"', page))
    assert [i for i, n in ids.items() if n > 1] == []  # figures share the page without clashes


def test_inline_svg_prefixes_ids():
    svg = '<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" '
    svg += 'xmlns:xlink="http://www.w3.org/1999/xlink"><defs><path id="a1"/></defs>'
    svg += '<use xlink:href="#a1"/><g clip-path="url(#a1)"/></svg>'
    out = inline_svg(svg, "f0")
    assert out.startswith("<svg") and 'id="f0-a1"' in out
    assert 'href="#f0-a1"' in out and "url(#f0-a1)" in out and "#a1" not in out


def test_viewer_embeds_every_query_or_says_it_subsampled(analysis_folders):
    maps = load_result(analysis_folders["queries"] / "viewer")
    view = QueryViewer(maps)
    gh, gw = view.query_grid
    assert view.n_cells == gh * gw and not view.subsampled
    assert view.model == "nl_tiny" and "all 16x16 query cells" in view.caption()
    data = view.data()
    import base64

    raw = np.frombuffer(base64.b64decode(data["maps"]), np.uint8).reshape(view.n_cells, -1)
    # quantised on one scale: the largest weight of every map keeps its place
    np.testing.assert_array_equal(
        raw.argmax(axis=1), maps.grid_maps.reshape(view.n_cells, -1).argmax(axis=1)
    )
    assert raw.max() == 255 and data["vmax"] == pytest.approx(float(maps.grid_maps.max()))
    cells = viewer_cells((40, 40), 1024)
    assert len(cells) == 400 and cells[1] == (0, 2)  # every 2nd row and column
    sub = maps.__class__(
        image=maps.image,
        maps=maps.maps[:4],
        grid_maps=maps.grid_maps[:4],
        query_cells=maps.query_cells[:4],
        query_pixels=maps.query_pixels[:4],
        site=maps.site,
        is_distribution=maps.is_distribution,
        meta={"query_grid": [16, 16], "model": "nl_tiny"},
    )
    assert QueryViewer(sub).subsampled and "subsampled grid" in QueryViewer(sub).caption()
    html = view._repr_html_()
    assert html.count("<script") == 2 and "http" not in html.split("<script>")[1]


def test_demo_writes_the_report(tmp_path, monkeypatch, capsys):
    from attnviz.cli import main
    from attnviz.commands import demo as demo_cmd

    monkeypatch.setattr(
        demo_cmd, "DEMO_PARTS", (("sweep", "attnviz.commands.sweep", (0, 6)),)
    )  # six rendered scenes: a quick demo
    assert main(["demo", "--out", str(tmp_path / "d")]) == 0
    path = tmp_path / "d" / "report.html"
    assert f"report: {path}" in capsys.readouterr().out
    assert path.read_text(encoding="utf-8").count('<section class="analysis"') == 1
