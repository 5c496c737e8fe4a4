"""Golden of every text the report, the query viewer and the inspector show (issue 26, the
class "markup, captions, file names and messages nothing reads").

The report tests check that tables, figures and viewers are there; nothing read the markup
itself. ``test_report_page_matches_its_golden`` writes one report (``attnviz.report``) over
result folders of every kind the report knows (the bundled se_tiny, sk_tiny, nl_tiny,
cbam_tiny, plain_tiny and a seeded 2-layer ViT on non-square inputs, unequal class sizes),
written as the commands write them (``OutputFolder``: result, summary, figures and their
listing file, query viewers with no heads, and with 3 heads and 2 prefix tokens), with
crafted figures that exercise the SVG sanitiser (``attnviz.sanitise``: scripts, handlers,
external references, entities, broken, non-SVG and non-UTF-8 files; a listing that orders,
omits and names unsafe files; a listing that is not a list; a symlink leaving the folder).
It pins the WHOLE page, normalised only where the machine enters (the folder paths, the
viewers' random ids and the script hashes that depend on them, the viewers' embedded bytes
by size and mean, matplotlib's own SVGs by a placeholder naming their id prefixes, numbers to
one unit of their last printed digit), the files written and the report's error messages.
So a changed tag, column, caption, file name or message of the report fails it.
``test_report_page_structure`` checks the same page independently (html.parser: balanced
tags, every section closed and reachable, every figure caption a listed file, the
Content-Security-Policy hashes against hashlib, the viewer's image against the result's).
``test_viewer_text`` and ``test_inspector_text`` pin every caption, title and label of
:class:`attnviz.viewer.QueryViewer` (no heads, 1, 3 heads with prefix tokens, subsampled, on a
non-square 3x5 query grid over a 2x4 key grid) and :class:`attnviz.widgets.QueryInspector`
(with ipywidgets and without, on a non-square input). After a deliberate change, review the
diff, then regenerate:

    ATTNVIZ_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_report_surface.py
"""

from __future__ import annotations

import base64
import hashlib
import html.parser
import io
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from golden_testing import UPDATE, read_golden
from matplotlib.figure import Figure
from PIL import Image

from attnviz.analysis.query_maps import QueryMapsResult

GOLDEN = Path(__file__).parent / "golden" / "report_surface.json"
CASES = (
    "page",
    "files",
    "messages",
    "viewer_attention",
    "viewer_one_head",
    "viewer_three_heads",
    "viewer_subsampled",
    "inspector_widget",
    "inspector_figure",
)
TITLE = "attnviz <report> & checks"

# a number, not the digits of a name such as SK_3_1, layer2 or a0f1
NUMBER = re.compile(r"(?<![\w.#-])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w])")


# ----------------------------------------------------------------------------- comparison
def _shape(num: str) -> tuple[int, str | None]:
    """Decimals and exponent of a printed number: a format change shows, rounding noise not."""
    mantissa, _, exp = num.lower().partition("e")
    return (len(mantissa.split(".")[1]) if "." in mantissa else -1), exp or None


def _close(a: str, b: str) -> bool:
    """Two printed numbers of one format agree up to one unit of their last digit; integers
    exactly."""
    if _shape(a) != _shape(b):
        return False
    decimals, exp = _shape(a)
    if decimals < 0 and exp is None:
        return a == b
    unit = 10.0 ** (int(exp or 0) - max(decimals, 0))
    return abs(float(a) - float(b)) <= unit * 1.01 + 1e-15


def _differences(want: Any, got: Any, path: str = "") -> list[str]:
    """Where two golden values differ: texts word for word, their numbers to one unit of the
    last printed digit."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        for k in sorted(set(want) | set(got)):
            if k not in want or k not in got:
                out.append(f"{path}/{k}: {'missing' if k not in got else 'new'}")
            else:
                out += _differences(want[k], got[k], f"{path}/{k}")
        return out
    if isinstance(want, list) and isinstance(got, list):
        out = [f"{path}: {len(want)} items -> {len(got)}"] if len(want) != len(got) else []
        for i, (x, y) in enumerate(zip(want, got)):
            out += _differences(x, y, f"{path}[{i}]")
            if len(out) > 20:
                break
        return out
    if isinstance(want, str) and isinstance(got, str):
        words_a, words_b = NUMBER.split(want), NUMBER.split(got)
        nums_a, nums_b = NUMBER.findall(want), NUMBER.findall(got)
        if words_a != words_b or not all(_close(x, y) for x, y in zip(nums_a, nums_b)):
            return [f"{path}:\n  - {want[:300]!r}\n  + {got[:300]!r}"]
        return []
    return [] if want == got else [f"{path}: {want!r} -> {got!r}"]


def _check(case: str, got: Any, golden_updates: dict) -> None:
    got = json.loads(json.dumps(got))
    if UPDATE:
        golden_updates[case] = got
        return
    golden = read_golden(GOLDEN)
    assert case in golden, f"{case}: no golden (regenerate: see the module docstring)"
    diffs = _differences(golden[case], got, case)
    if diffs:
        pytest.fail(f"{len(diffs)} differences (review, then regenerate: see the docstring):\n"
                    + "\n".join(diffs[:20]))  # fmt: skip


def _chunks(text: str) -> list[str]:
    """The text cut after every ``>`` (joined back, it is the text): a readable golden."""
    return [c for c in re.split(r"(?<=>)", text) if c]


# ----------------------------------------------------------------------------- normalising
def _png_shape(url: str) -> list[int]:
    head = "data:image/png;base64,"
    assert url.startswith(head)
    return list(np.asarray(Image.open(io.BytesIO(base64.b64decode(url[len(head) :])))).shape)


def _round(v: Any) -> Any:
    return float(f"{v:.4g}") if isinstance(v, float) else v


def _payload(d: dict) -> dict:
    """The viewer's embedded data with its bytes by size and mean, floats to 4 digits."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if key == "image":
            out[key] = f"png {_png_shape(value)}"
        elif key in ("maps", "prefix_maps"):
            raw = np.frombuffer(base64.b64decode(value), np.uint8)
            out[key] = f"{raw.size} bytes, mean {raw.mean() if raw.size else 0.0:.2f}"
        elif isinstance(value, list):
            out[key] = [_round(v) for v in value]
        else:
            out[key] = _round(value)
    return out


_QV_DATA = re.compile(r'(<script type="application/json" class="qv-data">)(.*?)(</script>)', re.S)


def _normalise(text: str, paths: dict[str, Path]) -> str:
    """The text with what the machine enters replaced (see the module docstring)."""
    for name, path in paths.items():
        text = text.replace(str(path), f"{{{name}}}")
    text = re.sub(r"attnviz-qv-[0-9a-f]{10}\b", "attnviz-qv-{uid}", text)
    text = re.sub(r"'sha256-[A-Za-z0-9+/]{43}='", "'sha256-{hash}'", text)
    return _QV_DATA.sub(
        lambda m: m[1] + json.dumps(_payload(json.loads(m[2])), sort_keys=True) + m[3], text
    )


MPL_FIGURES = ("specificity", "channels")  # drawn by matplotlib: machine-made SVG


def _mpl_placeholder(m: re.Match) -> str:
    svg = m[1]
    ids = re.findall(r'\bid="([^"]+)"', svg)
    refs = re.findall(r'(?:href="#|url\(#)([^")]+)', svg)
    prefixes = sorted({i.split("-")[0] for i in ids + refs})
    bad = re.findall(r"<script|<metadata|<foreignObject|\son\w+=|https?:", svg)
    return f"<svg: matplotlib figure, ids and references prefixed {prefixes}, unsafe {bad}/>"


def _mpl_svgs(text: str) -> str:
    names = "|".join(MPL_FIGURES)
    pattern = rf"(<svg\b(?:(?!</svg>).)*</svg>)(?=<figcaption>(?:{names})</figcaption>)"
    return re.sub(pattern, _mpl_placeholder, text, flags=re.S)


# ----------------------------------------------------------------------------- the folders
SAFE_SVG = (
    '<?xml version="1.0" encoding="utf-8"?>\n'
    '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
    'xmlns:ev="http://example.org/ev" width="40pt" height="20pt" viewBox="0 0 40 20" '
    'onload="alert(1)">'
    '<defs><clipPath id="clip"><rect x="0" y="0" width="40" height="20"/></clipPath>'
    '<linearGradient id="grad"><stop offset="0" stop-color="#440154"/></linearGradient></defs>'
    "<style>.bar{fill:url(#grad)} .ext{fill:url(#nowhere)}</style>"
    "<style>@import url(http://example.org/x.css);</style>"
    '<g id="axes" clip-path="url(#clip)" onclick="steal()" ev:foo="1">'
    '<use xlink:href="#clip"/><use href="http://example.org/sprite.svg#x"/>'
    '<rect class="bar" x="1" y="2" width="5" height="6" style="fill: url( \'#grad\' )"/>'
    '<rect x="8" y="2" width="5" height="6" fill="url(http://example.org/p.svg#q)"/>'
    '<text x="1" y="18" xml:space="preserve">D &lt; 0 &amp; p &gt; 0.05'
    "<script>alert(2)</script> kept tail</text>"
    '<image width="4" height="4" href="data:image/png;base64,iVBORw0KGgo="/>'
    '<image width="4" height="4" xlink:href="http://example.org/tracker.png"/>'
    '<a href="javascript:alert(3)"><text>link</text></a>'
    '<foreignObject width="10" height="10"><div xmlns="http://www.w3.org/1999/xhtml">x</div>'
    "</foreignObject>"
    '<path d="M0 0L1 1" style="behavior: url(#clip)"/>'
    "</g><script>alert(4)</script></svg>\n"
)
CRAFTED = {
    "safe.svg": SAFE_SVG.encode(),
    "entity.svg": b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x "y">]>'
    b'<svg xmlns="http://www.w3.org/2000/svg">&x;</svg>',
    "broken.svg": b'<svg xmlns="http://www.w3.org/2000/svg"><g></svg>',
    "page.svg": b"<html><body/></html>",
    "latin1.svg": b'<svg xmlns="http://www.w3.org/2000/svg"><text>caf\xe9</text></svg>',
    "stray.svg": b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="1" height="2"/></svg>',
    "notes.png": b"\x89PNG not really",
}
# the listing's order is not the names' order; it omits stray.svg and names files the report
# must skip (a PNG, paths, a missing file, a symlink out of the folder)
LISTING = ["safe.svg", "notes.png", "latin1.svg", "entity.svg", "../outside.svg",
           "missing.svg", "page.svg", "broken.svg", "linked.svg", "sub/inner.svg"]  # fmt: skip


def _small_figure(label: str) -> Figure:
    fig = Figure(figsize=(1.2, 0.9))
    ax = fig.add_subplot()
    ax.plot([0, 1, 2], [1.0, 0.0, 2.0])
    ax.set_title(label)
    return fig


def _write(folder: Path, result: Any, *, figures: dict | None = None, viewer: Any = None) -> Path:
    """``folder`` as a command writes it (result, figures and listing, viewer, summary)."""
    from attnviz.commands._common import output_folder

    with output_folder(folder, analysis=result.kind) as out:
        out.save_result(result)
        if figures is not None:
            out.save_figures(figures)
        if viewer is not None:
            viewer.save(out.root / "viewer")
        out.save_summary(result.summary())
        return out.root


def _vit() -> torch.nn.Module:
    import timm

    torch.manual_seed(11)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(64, 96),
                            patch_size=16, depth=2, num_classes=3, reg_tokens=1)  # fmt: skip
    with torch.no_grad():  # spread the logits so that rows differ between queries and heads
        for blk in vit.blocks:
            blk.attn.qkv.weight.mul_(4.0)
    return vit.eval()


def _results() -> dict[str, tuple[Any, dict]]:
    """Every kind of result the report knows, by folder name, with what goes beside it."""
    from torch.utils.data import Subset

    from attnviz.analysis import (
        ablation,
        attention_vs_attribution,
        excitation_profile,
        gradcam_comparison,
        query_independence,
        query_maps,
        scale_sweep,
    )
    from attnviz.analysis.rollout import rollout
    from attnviz.data import ShapesDataset
    from attnviz.models import load_model
    from attnviz.viewer import viewer_maps

    torch.manual_seed(0)  # a module fixture: set up before the per-test seed, after any test
    np.random.seed(0)
    shapes = ShapesDataset(3, size=64, seed=10_000)  # labels i % 10
    data = Subset(shapes, [0, 10, 20, 1, 11, 2])  # classes of 3, 2 and 1 images
    images = [data[i][0] for i in range(3)]
    se, c_se = load_model("se_tiny")
    sk, c_sk = load_model("sk_tiny")
    nl, c_nl = load_model("nl_tiny")
    cbam, c_cbam = load_model("cbam_tiny")
    plain, c_plain = load_model("plain_tiny")
    vit = _vit()
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))

    out: dict[str, tuple[Any, dict]] = {}
    ex = excitation_profile(se, data, preprocess=c_se, permutations=20, seed=1, progress=False)
    ex.meta["model"] = "se_tiny"
    figs = {"specificity": _small_figure("s"), "channels": _small_figure("c")}
    out["excitation"] = (ex, {"figures": figs})
    sw = scale_sweep(sk, data, scales=(1.0, 1.5), preprocess=c_sk, progress=False)
    sw.meta["model"] = "sk_tiny"
    out["sweep"] = (sw, {})
    qi = query_independence(nl, images, preprocess=c_nl, model_name="nl_tiny", n_queries=4,
                            map_images=1, progress=False)  # fmt: skip
    maps = viewer_maps(nl, images[0], preprocess=c_nl)
    maps.meta["model"] = "nl_tiny"
    out["queries"] = (qi, {"viewer": maps})
    qm = query_maps(nl, images[1], queries=[(2, 3), (12, 5)], query_space="cell", preprocess=c_nl)
    out["query_maps"] = (qm, {})
    att = attention_vs_attribution(cbam, data, preprocess=c_cbam, keep_maps=1, progress=False)
    att.meta["model"] = "cbam_tiny"
    out["attribution"] = (att, {})
    ab = ablation(se, data, policies=["constant:1", "mean"], preprocess=c_se, progress=False)
    ab.meta["model"] = "se_tiny"
    out["ablation"] = (ab, {})
    ro = rollout(vit, x, progress=False, map_images=1, model_name="vit_2l")
    vmaps = viewer_maps(vit, x[0])
    vmaps.meta["model"] = "vit_2l"
    out["rollout"] = (ro, {"viewer": vmaps})
    gc = gradcam_comparison({"plain_tiny": plain, "se_tiny": se}, data, preprocess=c_plain,
                            keep_maps=1, progress=False)  # fmt: skip
    out["gradcam"] = (gc, {})
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The report over ``runs/`` (seven analyses) and ``gradcam/`` (an analysis folder given
    itself), with the crafted figures in ``runs/sweep`` and a bad listing in
    ``runs/attribution``."""
    from attnviz.report import write_report

    base = tmp_path_factory.mktemp("report")
    root, outside = base / "runs", base / "outside"
    outside.mkdir()
    (outside / "secret.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    results = _results()
    folders = {}
    for name, (result, extra) in results.items():
        target = base / name if name == "gradcam" else root / name
        folders[name] = _write(target, result, **extra)
    figures = folders["sweep"] / "figures"
    figures.mkdir()
    for name, content in CRAFTED.items():
        (figures / name).write_bytes(content)
    (figures / "linked.svg").symlink_to(outside / "secret.svg")
    (figures / ".attnviz-figures.json").write_text(json.dumps(LISTING, indent=1))
    figures = folders["attribution"] / "figures"
    figures.mkdir()
    (figures / "overlay.svg").write_bytes(CRAFTED["stray.svg"])
    (figures / ".attnviz-figures.json").write_text('{"figures": ["nothing.svg"]}')
    path = write_report([root, folders["gradcam"]], title=TITLE)
    return SimpleNamespace(base=base, root=root, folders=folders, results=results, path=path,
                           text=path.read_text(encoding="utf-8"))  # fmt: skip


# ----------------------------------------------------------------------------- the page
def test_report_page_matches_its_golden(built, golden_updates):
    text = _mpl_svgs(_normalise(built.text, {"base": built.base}))
    _check("page", _chunks(text), golden_updates)


def test_report_writes_these_files(built, golden_updates):
    """The report's file name, and every file beside it a command wrote (the listing files
    by name and content); result/ holds what ``Result.save`` writes (another golden's)."""

    def written(path: Path) -> bool:  # not the files Result.save writes (another golden's)
        parts = path.relative_to(built.base).parts
        inside = "result" in parts[:-1] or ("viewer" in parts[:-1] and parts[-1] != "manifest.json")
        return path.is_file() and not inside

    tree = sorted(p.relative_to(built.base).as_posix() for p in built.base.rglob("*") if written(p))
    listings = {
        p.relative_to(built.base).as_posix(): json.loads(p.read_text(encoding="utf-8"))
        for p in sorted(built.base.rglob(".attnviz-figures.json"))
    }
    summaries = {
        p.relative_to(built.base).as_posix(): p.read_text(encoding="utf-8").splitlines()[0]
        for p in sorted(built.base.rglob("summary.txt"))
    }
    got = {"report": built.path.relative_to(built.base).as_posix(), "tree": tree,
           "listings": listings, "summary first lines": summaries}  # fmt: skip
    _check("files", got, golden_updates)


def _error(call) -> str:
    try:
        call()
    except Exception as exc:  # the message is what is pinned
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def test_report_messages(built, tmp_path, golden_updates):
    from attnviz.report import build_report, find_analyses, load_result, summary_table_html

    (tmp_path / "odd" / "result").mkdir(parents=True)
    (tmp_path / "odd" / "result" / "manifest.json").write_text('{"kind": "nope"}')
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty2").mkdir()
    paths = {"tmp": tmp_path}
    got = {
        "unknown kind": _error(lambda: load_result(tmp_path / "odd" / "result")),
        "no folder": _error(lambda: find_analyses([tmp_path / "missing"])),
        "missing": _error(lambda: build_report([tmp_path / "empty", tmp_path / "missing"])),
        "no results": _error(lambda: build_report([tmp_path / "empty", tmp_path / "empty2"])),
        "none found": _error(lambda: build_report([tmp_path / "empty"])),
        "other kind's table": summary_table_html(built.results["query_maps"][0]),
        "rollout table": summary_table_html(built.results["rollout"][0]),
    }
    got = {k: _normalise(v, paths) for k, v in got.items()}
    _check("messages", got, golden_updates)


class _Tree(html.parser.HTMLParser):
    VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "wbr", "source"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.ids: list[str] = []
        self.hrefs: list[str] = []
        self.scripts: list[str] = []
        self.opened = {"section": 0, "figure": 0, "svg": 0}
        self._script_attrs: list | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.ids += [attrs["id"]] if "id" in attrs else []
        self.hrefs += [attrs["href"]] if tag == "a" and "href" in attrs else []
        if any(name.startswith("on") for name in attrs):
            self.problems.append(f"event handler on <{tag}>")
        self.opened[tag] = self.opened.get(tag, 0) + 1
        if tag == "script":
            self._script_attrs = list(attrs)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.ids += [v for k, v in attrs if k == "id"]
        if any(name.startswith("on") for name, _ in attrs):
            self.problems.append(f"event handler on <{tag}/>")

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "script" and self._script_attrs == []:
            self.scripts.append(data)


def test_report_page_structure(built):
    """The page checked without the golden: balanced tags, every section closed and in the
    table of contents, every figure a listed (or, without a valid listing, present) SVG file
    of its folder, the script hashes of the policy, the viewers' images."""
    text = built.text
    tree = _Tree()
    tree.feed(text)
    tree.close()
    assert tree.problems == [] and tree.stack == []
    n = len(built.results)
    assert tree.opened["section"] == n == text.count("</section>")
    sections = re.findall(r'<section class="analysis" id="(a\d+)">\n<h2>([^:]+):', text)
    assert [s for s, _ in sections] == [f"a{i}" for i in range(n)]
    assert tree.hrefs == [f"#a{i}" for i in range(n)]
    assert len(set(tree.ids)) == len(tree.ids)
    # the analyses in the order find_analyses gives: runs/ sorted, then the folder given
    names = [name for _, name in sections]
    assert names == [*sorted(k for k in built.results if k != "gradcam"), "gradcam"]
    # figures: the listed plain .svg names that exist inside the folder, in listed order
    for (sid, name), body in zip(sections, text.split('<section class="analysis"')[1:]):
        folder = built.folders[name] / "figures"
        captions = re.findall(r"<figcaption>([^<]*)</figcaption>", body)
        left_out = re.findall(r"<p>figure ([^ ]+) left out: ([^<]*)</p>", body)
        pattern = r"<figcaption>([^<]*)</figcaption>|<p>figure ([^ ]+) left out"
        shown = [m[1] or m[2] for m in re.finditer(pattern, body)]
        listing = folder / ".attnviz-figures.json"
        listed = json.loads(listing.read_text()) if listing.is_file() else None
        if isinstance(listed, list):
            want = [f[:-4] for f in listed if f.endswith(".svg") and "/" not in f
                    and (folder / f).is_file() and not (folder / f).is_symlink()]  # fmt: skip
        else:
            want = sorted(p.stem for p in folder.glob("*.svg")) if folder.is_dir() else []
        assert shown == want, name
        for caption in captions:
            figure = body.split(f"<figcaption>{caption}</figcaption>")[0].rsplit("<figure", 1)[1]
            ids = re.findall(r'\bid="([^"]+)"', figure)
            prefix = f"{sid}f{shown.index(caption)}-"  # the k-th figure of the folder
            assert all(i.startswith(prefix) for i in ids), (name, caption)
            assert "<script" not in figure and "http:" not in figure and "javascript" not in figure
        if name == "sweep":
            assert [c for c, _ in left_out] == ["latin1", "entity", "page", "broken"]
    # the policy allows exactly the inline scripts, by their sha256
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', text)[1]
    hashes = sorted(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in tree.scripts
    )
    assert len(tree.scripts) == 2 and len(set(hashes)) == 2
    assert policy == (
        f"default-src 'none'; script-src {' '.join(hashes)}; style-src 'unsafe-inline'; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )
    # each viewer embeds its result's image, as PNG
    payloads = [json.loads(m[2]) for m in _QV_DATA.finditer(text)]
    assert len(payloads) == 2
    for payload, name in zip(payloads, ("queries", "rollout")):
        maps = built.results[name][1]["viewer"]
        url = payload["image"].split(",", 1)[1]
        got = np.asarray(Image.open(io.BytesIO(base64.b64decode(url))))
        np.testing.assert_array_equal(got, maps.image)
        assert payload["size"] == list(maps.image.shape[:2])


# ----------------------------------------------------------------------------- viewer text
GRID, KEYS = (3, 5), (2, 4)  # a non-square query grid over a non-square key grid


def _viewer_result(n_heads: int, *, every: int = 1, prefix: int = 0) -> QueryMapsResult:
    rng = np.random.default_rng(7 + n_heads)
    cells = np.array([(y, x) for y in range(0, GRID[0], every) for x in range(0, GRID[1], every)])
    q = len(cells)
    image = rng.integers(0, 256, (23, 40, 3), dtype=np.uint8)
    grid_maps = rng.random((q, *KEYS))
    grid_maps /= grid_maps.sum(axis=(1, 2), keepdims=True)
    extra: dict[str, Any] = {}
    if n_heads:
        heads = rng.random((q, n_heads, *KEYS)) * np.arange(1, n_heads + 1)[None, :, None, None]
        head_maps = np.concatenate([heads, heads.mean(axis=1, keepdims=True)], axis=1)
        grid_maps = head_maps[:, -1]
        extra = {
            "head_maps": head_maps,
            "prefix_key_weights": rng.random((q, n_heads + 1, prefix)),
            "prefix_maps": rng.random((prefix, n_heads + 1, *KEYS)) * 3,
            "prefix_names": ["class", "reg</script><!--"][:prefix],  # text the page must escape
        }
    return QueryMapsResult(
        image=image,
        maps=np.zeros((q, 23, 40)),
        grid_maps=grid_maps,
        query_cells=cells,
        query_pixels=(cells + 0.5) * [23 / GRID[0], 40 / GRID[1]],
        site={"alias": "ATT_<2>", "name": "blocks.2.attn", "kind": "vit"},
        is_distribution=not n_heads,
        meta={"query_grid": list(GRID), "model": "vit_meta"} if every > 1 or n_heads else {},
        **extra,
    )


VIEWERS = {
    "viewer_attention": lambda: (_viewer_result(0), {}),
    "viewer_one_head": lambda: (_viewer_result(1), {"title": "one & only"}),
    "viewer_three_heads": lambda: (_viewer_result(3, prefix=2), {"model": "given<model>"}),
    "viewer_subsampled": lambda: (_viewer_result(2, every=2), {"title": "sub"}),
}


def _hand_quantised(result: QueryMapsResult) -> tuple[np.ndarray, np.ndarray]:
    """The embedded bytes by hand: per head (the mean first) one scale over its queries' and
    prefix tokens' maps, 0..255."""
    if result.head_maps.size:
        n = result.head_maps.shape[1] - 1
        order = [n, *range(n)]
        maps = [result.head_maps[:, h] for h in order]
        prefix = [result.prefix_maps[:, h] for h in order]
    else:
        maps, prefix = [result.grid_maps], [np.zeros((0, *KEYS))]
    qs, ps = [], []
    for m, p in zip(maps, prefix):
        lo = min(m.min(), p.min() if p.size else np.inf)
        hi = max(m.max(), p.max() if p.size else -np.inf)
        qs.append(np.round((m - lo) / (hi - lo) * 255).astype(np.uint8))
        ps.append(np.round((p - lo) / (hi - lo) * 255).astype(np.uint8))
    return np.stack(qs), np.stack(ps)


@pytest.mark.parametrize("case", sorted(VIEWERS))
def test_viewer_text(case, golden_updates, tmp_path):
    from attnviz.viewer import QueryViewer

    result, options = VIEWERS[case]()
    view = QueryViewer(result, **options)
    data = view.data()
    maps, prefix = _hand_quantised(result)
    got_maps = np.frombuffer(base64.b64decode(data["maps"]), np.uint8)
    np.testing.assert_array_equal(got_maps, maps.ravel())
    got_prefix = np.frombuffer(base64.b64decode(data["prefix_maps"]), np.uint8)
    np.testing.assert_array_equal(got_prefix, prefix.ravel())
    # the embedded JSON holds no "<" (no name can end or re-enter the script) and reads back
    block = _QV_DATA.search(view.to_html())[2]
    assert "<" not in block and json.loads(block)["prefix"] == result.prefix_names
    page = _normalise(view.save(tmp_path / "v.html").read_text(encoding="utf-8"), {})
    assert _normalise(view.to_html(), {}) in page
    got = {
        "caption": view.caption(),
        "heads": view.heads,
        "prefix": view.prefix_names,
        "model": view.model,
        "grids": [list(view.query_grid), list(view.key_grid)],
        "cells": [view.n_cells, view.subsampled],
        "html": _chunks(_normalise(view.to_html(), {})),
        "page": _chunks(page)[:4] + _chunks(page)[-2:],
    }
    _check(case, got, golden_updates)


# ----------------------------------------------------------------------------- inspector text
def _figure_text(fig: Figure) -> dict:
    axes = []
    for ax in fig.axes:
        axes.append({
            "title": [ax.get_title(loc) for loc in ("left", "center", "right")],
            "labels": [ax.get_xlabel(), ax.get_ylabel()],
            "images": len(ax.images), "lines": len(ax.lines),
        })  # fmt: skip
        if ax.get_title():
            axes[-1]["title size"] = ax.title.get_fontsize()
    texts = [t.get_text() for t in fig.texts]
    suptitle = fig._suptitle.get_text() if fig._suptitle is not None else None
    return {"axes": axes, "texts": texts, "suptitle": suptitle}


def _inspector(monkeypatch, widgets: bool) -> dict:
    """The inspector of a seeded Non-local block with 2x2 pooled keys on a 24x40 input: a 12x20
    query grid over a 6x10 key grid."""
    from attnviz.blocks import NonLocalBlock
    from attnviz.widgets import QueryInspector

    if not widgets:
        monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets -> ImportError
    torch.manual_seed(5)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), NonLocalBlock(8, sub_sample=True)
    ).eval()
    with torch.no_grad():  # spread the rows: no near ties among the top keys
        model[0].weight.mul_(3.0)
    x = torch.randn(3, 24, 40, generator=torch.Generator().manual_seed(3))
    insp = QueryInspector(model, x, top_k=3)
    out: dict[str, Any] = {"grids": [list(insp.query_grid), list(insp.key_grid)]}
    out["start"] = _figure_text(insp.figure)
    out["start info"] = insp.info.value if insp.info is not None else None
    insp.update(1, insp.query_grid[1] - 2)
    out["moved"] = _figure_text(insp.figure)
    out["moved info"] = insp.info.value if insp.info is not None else None
    if widgets:
        out["sliders"] = [
            [s.description, s.min, s.max, s.value] for s in (insp.slider_y, insp.slider_x)
        ]
        out["widget"] = [type(c).__name__ for c in insp.widget.children]
    out["error"] = _error(lambda: insp.update(insp.query_grid[0], 0))
    return out


def test_inspector_text(monkeypatch, golden_updates):
    pytest.importorskip("ipywidgets")
    _check("inspector_widget", _inspector(monkeypatch, True), golden_updates)


def test_inspector_text_without_ipywidgets(monkeypatch, golden_updates):
    _check("inspector_figure", _inspector(monkeypatch, False), golden_updates)
