"""The documentation site (docs/, ``make docs``) builds offline with warnings as errors, runs
every gallery script, documents every public name and every CLI command, and fails on a
broken reference or a gallery script that raises; its pages load in headless Chromium with
their images, no console error and no request beyond the site, and the embedded query
viewer answers a click. The README's Python example runs as written.

The site is built from a copy of docs/ in a temporary folder (the repository's notebooks,
assets and BENCHMARKS.md / TESTING.md linked beside it), so the test writes nothing into the
working tree."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

# one pytest-xdist worker builds the site once for every test here (`make test`: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("docs")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GALLERY = sorted(p.stem for p in (DOCS / "gallery_src").glob("plot_*.py"))
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
# gallery pages whose output is HTML, not a figure: the page and the class it embeds
HTML_OUTPUTS = {"plot_04_query_viewer": "attnviz-query-viewer", "plot_08_report": "attnviz-report"}


def _sphinx(src: Path, out: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q"]
    cmd += ["-d", str(out / ".doctrees"), str(src), str(out / "html")]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def _tree(tmp: Path) -> Path:
    """A copy of docs/ with the repository's files it refers to linked beside it."""
    shutil.copytree(DOCS, tmp / "docs", symlinks=True,
                    ignore=shutil.ignore_patterns("gallery", "_build", "__pycache__"))  # fmt: skip
    for name in ("notebooks", "assets", "BENCHMARKS.md", "TESTING.md"):
        (tmp / name).symlink_to(ROOT / name)
    return tmp / "docs"


@pytest.fixture(scope="session")
def site(built_once) -> Path:
    """The site, built once per test run (whichever xdist worker needs it first)."""

    def build(tmp: Path) -> None:
        start = time.perf_counter()
        done = _sphinx(_tree(tmp), tmp / "out")
        seconds = time.perf_counter() - start
        assert done.returncode == 0, (
            f"docs build failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        )
        assert "WARNING" not in done.stderr and "ERROR" not in done.stderr, done.stderr[-3000:]
        print(f"docs build: {seconds:.1f} s")

    return built_once("docs-site", build) / "out" / "html"


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_every_page_is_built(site):
    for page in ("index", "getting_started", "models", "mechanisms", "cli", "api",
                 "benchmarks", "testing", "gallery/index"):  # fmt: skip
        assert (site / f"{page}.html").is_file(), page
    guides = sorted(p.stem for p in (DOCS / "guide").glob("*.md"))
    assert len(guides) >= 9
    for guide in guides:
        assert (site / "guide" / f"{guide}.html").is_file(), guide
    assert len(GALLERY) >= 7
    for name in GALLERY:
        page = _text(site / "gallery" / f"{name}.html")
        if name in HTML_OUTPUTS:  # the viewer (a canvas) and the report (a frame), as HTML
            assert page.count(f'class="{HTML_OUTPUTS[name]}"') == 1, name
            continue
        assert "sphx-glr-single-img" in page or "sphx-glr-multi-img" in page, name
    for name in NOTEBOOKS:  # rendered from their committed outputs: figures included
        page = _text(site / "notebooks" / f"{name}.html")
        assert re.search(r'<img [^>]*src="[^"]+\.png"', page), name


def test_every_gallery_figure_is_a_file_of_the_site(site):
    for name in GALLERY:
        if name in HTML_OUTPUTS:
            continue
        page = _text(site / "gallery" / f"{name}.html")
        images = re.findall(r'<img [^>]*src="([^"]+)"', page)
        assert images, name
        for src in images:
            assert (site / "gallery" / src).resolve().is_file(), (name, src)


def test_api_reference_documents_every_public_name(site):
    import attnviz

    page = _text(site / "api.html")
    for name in attnviz.__all__:
        if name == "__version__":
            continue
        obj = getattr(attnviz, name)
        assert f'id="{obj.__module__}.{obj.__qualname__}"' in page, name
    # a docstring reaches the page (AttentionCache's first line)
    first = attnviz.AttentionCache.__doc__.split("\n")[0].split(":")[0]
    assert first in page


def test_cli_reference_has_every_command(site):
    from attnviz.cli import build_parser

    page = _text(site / "cli.html")
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert len(sub.choices) >= 10
    for name, command in sub.choices.items():
        assert f'id="attnviz-{name}"' in page, name
        for action in command._actions:  # every option of every command is listed
            for flag in action.option_strings:
                assert flag in page, (name, flag)


def test_benchmarks_and_testing_are_included_not_copied(site):
    assert not (DOCS / "BENCHMARKS.md").exists()
    for name, page in (("BENCHMARKS.md", "benchmarks"), ("TESTING.md", "testing")):
        source = (DOCS / f"{page}.md").read_text()
        assert f"{{include}} ../{name}" in source
        heading = (ROOT / name).read_text().splitlines()[0].lstrip("# ").strip()
        assert heading in _text(site / f"{page}.html")


def test_a_broken_reference_and_a_raising_gallery_script_fail_the_build(tmp_path):
    """The same configuration on a planted page: a reference to a page that does not exist
    and a gallery script that raises each fail the build, and the output names both."""
    src = tmp_path / "src"
    (src / "gallery_src").mkdir(parents=True)
    (src / "conf.py").write_text(
        "import runpy\n"
        f"_conf = runpy.run_path({str(DOCS / 'conf.py')!r})\n"
        "globals().update({k: v for k, v in _conf.items() if not k.startswith('__')})\n"
    )
    (src / "index.md").write_text(
        "# planted\n\nSee {doc}`a_page_that_does_not_exist`.\n\n```{toctree}\ngallery/index\n```\n"
    )
    (src / "gallery_src" / "README.txt").write_text("Gallery\n=======\n\nplanted\n")
    (src / "gallery_src" / "plot_raises.py").write_text(
        '"""\nA raising script\n================\n\nplanted\n"""\n\n'
        'raise ValueError("planted gallery failure")\n'
    )
    done = _sphinx(src, tmp_path / "out")
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "a_page_that_does_not_exist" in output
    assert "planted gallery failure" in output


# ------------------------------------------------------------------- README
def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## In Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_is_the_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert "make demo" in text and "make test" in text and "make docs" in text
    assert 10 <= len(_readme_example().strip().splitlines()) <= 20
    # every relative link and image points to a file or folder of the repository
    links = re.findall(r"\]\(([^)#\s]+)\)", text)
    assert any(link.endswith(".png") for link in links)
    for link in links:
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link


def test_readme_python_example_runs(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(_readme_example())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "SK_2_1 sk layer1.0.conv1"  # the comment's claim
    assert "torch.Size([20, 2, 32])" in lines  # (image, branch, channel), as commented
    assert (tmp_path / "stage_bars.png").stat().st_size > 1000


# ------------------------------------------------------------------- browser
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LOCAL = ("file:", "data:", "about:", "blob:")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the dev extra)")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (make test installs it)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def _open(browser, path: Path):
    """The page, its console errors and every request it made (non-local ones blocked)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else 0)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(LOCAL) else r.abort())
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, errors, requests


def _images_loaded(page) -> list[tuple[str, int]]:
    return page.eval_on_selector_all(
        "img", "els => els.map(e => [e.getAttribute('src'), e.complete ? e.naturalWidth : 0])"
    )


@pytest.mark.parametrize("page_path", ["index.html", "gallery/index.html",
                                       "gallery/plot_01_scale_sweep.html",
                                       "gallery/plot_03_query_maps.html",
                                       "notebooks/nonlocal_queries.html"])  # fmt: skip
def test_pages_load_with_their_images_in_chromium(site, browser, page_path):
    page, errors, requests = _open(browser, site / page_path)
    images = _images_loaded(page)
    if page_path != "index.html":
        assert images, page_path
    assert [src for src, width in images if width == 0] == []  # every image decoded
    assert errors == []
    assert [u for u in requests if not u.startswith(LOCAL)] == []


@pytest.mark.parametrize(
    "page_path", ["gallery/plot_04_query_viewer.html", "notebooks/nonlocal_queries.html"]
)
def test_embedded_query_viewer_answers_a_click(site, browser, page_path):
    """The kernel-free viewer on a gallery page and in a notebook's committed output."""
    page, errors, requests = _open(browser, site / page_path)
    viewer = page.locator("div.attnviz-query-viewer")
    assert viewer.count() == 1
    canvas = viewer.locator("canvas.qv-map")
    page.wait_for_function(
        "el => el.dataset.query !== ''", arg=viewer.element_handle(), timeout=5000
    )
    before_query = viewer.get_attribute("data-query")
    before = canvas.evaluate("c => c.toDataURL()")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    assert box["width"] > 100 and box["height"] > 100
    canvas.click(position={"x": 5, "y": box["height"] - 5})  # the bottom-left cell
    assert viewer.get_attribute("data-query") == "15,0" != before_query  # a 16 x 16 grid
    assert canvas.evaluate("c => c.toDataURL()") != before  # another map drawn
    assert "(15, 0)" in viewer.locator(".qv-info").inner_text()
    assert errors == []
    assert [u for u in requests if not u.startswith(LOCAL)] == []


def test_embedded_report_shows_its_figures_and_viewer(site, browser):
    page, errors, requests = _open(browser, site / "gallery" / "plot_08_report.html")
    frame = page.frame_locator("iframe.attnviz-report")
    frame.locator("div.attnviz-query-viewer").wait_for(timeout=10_000)
    figures = frame.locator("figure.attnviz-figure svg")
    assert figures.count() >= 5  # the queries and the excitation figures, inline
    assert frame.locator("div.attnviz-query-viewer").count() == 1
    assert errors == []
    assert [u for u in requests if not u.startswith(LOCAL)] == []
