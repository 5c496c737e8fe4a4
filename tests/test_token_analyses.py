"""The query analyses, the query viewer and attention rollout at transformer token sites
(issue 24, item 3): every statistic against an independent hand computation (numpy, from
timm's own non-fused weights) on a non-square patch grid (64 x 96 image, 16-px patches: 4 x 6)
with prefix tokens, and on PVT-v2's reduced key grid."""

from __future__ import annotations

import base64
import contextlib
import json
import math
import re
import shutil
import textwrap

import numpy as np
import pytest
import timm
import torch

import attnviz
from attnviz.analysis.query_independence import query_independence
from attnviz.analysis.query_maps import query_maps
from attnviz.analysis.rollout import RolloutResult, rollout, rollout_matrix
from attnviz.viewer import QueryViewer, viewer_maps

P, GRID, HEADS = 2, (4, 6), 3  # class + one register token; 64 x 96 / 16 px patches


# ----------------------------------------------------------------------------- models, oracles
def make_vit(depth: int = 2) -> torch.nn.Module:
    torch.manual_seed(11)
    kw = dict(img_size=(64, 96), patch_size=16, depth=depth, num_classes=3, reg_tokens=1)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kw).eval()
    with torch.no_grad():  # spread the logits so that rows differ between queries and heads
        for blk in vit.blocks:
            blk.attn.qkv.weight.mul_(4.0)
    return vit


@pytest.fixture(scope="module")
def vit():
    return make_vit()


@pytest.fixture(scope="module")
def pvt():
    torch.manual_seed(12)
    return timm.create_model("pvt_v2_b0", pretrained=False, num_classes=3).eval()


X = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))


@contextlib.contextmanager
def _non_fused(model):
    mods = [m for m in model.modules() if hasattr(m, "fused_attn")]
    before = [m.fused_attn for m in mods]
    for m in mods:
        m.fused_attn = False
    try:
        yield
    finally:
        for m, b in zip(mods, before):
            m.fused_attn = b


def timm_weights(model, x, attns):
    """The oracle: timm's own weights (input of ``attn_drop``, non-fused path) and each
    attention module's input and output, as float64 numpy arrays."""
    got, handles = {}, []
    for name, mod in attns:
        handles.append(
            mod.attn_drop.register_forward_hook(
                lambda m, i, o, n=name: got.__setitem__(n, i[0].double().numpy())
            )
        )
        handles.append(
            mod.register_forward_hook(
                lambda m, i, o, n=name: got.__setitem__(
                    n + ":io", (i[0].double().numpy(), o.double().numpy())
                )
            )
        )
    try:
        with torch.no_grad(), _non_fused(model):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return got


def vit_oracle(vit, x=X):
    return timm_weights(vit, x, [(f"blocks.{i}.attn", b.attn) for i, b in enumerate(vit.blocks)])


# ----------------------------------------------------------------------------- hand statistics
def avg_dist(v: np.ndarray) -> float:
    """mean over all N^2 ordered pairs of (1 - cos) / 2, pair by pair."""
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    return float(np.mean((1.0 - u @ u.T) / 2.0))


def entropy(p: np.ndarray) -> np.ndarray:
    return -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)).sum(-1)


def avg_jsd(p: np.ndarray) -> float:
    m = (p[:, None, :] + p[None, :, :]) / 2.0
    h = entropy(p)
    return float(np.mean(entropy(m) - (h[:, None] + h[None, :]) / 2.0))


# ----------------------------------------------------------------------------- query maps
def test_query_maps_per_head_on_a_non_square_grid_equal_timm_rows(vit):
    oracle = vit_oracle(vit, X[:1])["blocks.1.attn"][0]  # (heads, 26, 26)
    pixels = [(0.0, 0.0), (63.0, 95.0), (20.0, 40.0)]
    res = query_maps(vit, X[0], queries=pixels, site="blocks.1.attn")
    # pixel -> cell: floor((p + 0.5) * grid / size) on the 4 x 6 grid of a 64 x 96 input
    assert res.query_cells.tolist() == [[0, 0], [3, 5], [1, 2]]
    assert res.heads == [0, 1, 2, "mean"] and res.prefix_names == ["class", "register"]
    assert res.head_maps.shape == (3, HEADS + 1, 4, 6) and res.maps.shape == (3, 64, 96)
    for q, (y, x) in enumerate(res.query_cells):
        row = oracle[:, P + y * 6 + x]  # (heads, 26): token P + y * W + x is patch (y, x)
        for h in range(HEADS):
            np.testing.assert_allclose(res.head_maps[q, h], row[h, P:].reshape(4, 6), atol=1e-6)
            np.testing.assert_allclose(res.prefix_key_weights[q, h], row[h, :P], atol=1e-6)
        np.testing.assert_allclose(res.grid_maps[q], row[:, P:].mean(0).reshape(4, 6), atol=1e-6)
        np.testing.assert_allclose(res.rows()[q].sum(), 1.0, atol=1e-5)  # map + prefix keys
    for p in range(P):  # the prefix tokens' own rows: not queries, kept apart
        for h in range(HEADS):
            np.testing.assert_allclose(
                res.prefix_maps[p, h], oracle[h, p, P:].reshape(4, 6), atol=1e-6
            )
    assert res.is_distribution
    frame = res.to_frame()
    want = oracle[:, P + 3 * 6 + 5, :P].mean(0).sum()
    assert frame.loc[1, "prefix_weight"] == pytest.approx(want, abs=1e-6)
    # distances between whole rows (prefix keys included), one head
    d = res.pairwise_distances("cosine", head=2)
    rows = np.stack([oracle[2, P + y * 6 + x] for y, x in res.query_cells])
    u = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    np.testing.assert_allclose(d, (1 - u @ u.T) / 2, atol=1e-6)


def test_query_maps_on_the_reduced_key_grid_of_pvt(pvt):
    oracle = timm_weights(pvt, X[:1], [("a", pvt.stages[0].blocks[0].attn)])["a"][0]
    cells = [(0, 0), (15, 23), (7, 11)]
    res = query_maps(pvt, X[0], queries=cells, site="stages.0.blocks.0.attn", query_space="cell")
    assert res.site["query_grid"] == [16, 24]  # 64 x 96 / stride 4
    assert res.grid_maps.shape == (3, 2, 3)  # keys reduced by sr_ratio 8
    assert res.prefix_maps.shape[0] == 0 and res.prefix_key_weights.shape[-1] == 0
    for q, (y, x) in enumerate(cells):
        row = oracle[:, y * 24 + x]
        np.testing.assert_allclose(res.head_maps[q, :-1], row.reshape(-1, 2, 3), atol=1e-6)
        np.testing.assert_allclose(res.grid_maps[q], row.mean(0).reshape(2, 3), atol=1e-6)
    # query pixels are the centres of the cells of the query grid, maps upsampled to the image
    assert res.query_pixels[1].tolist() == [pytest.approx(61.5), pytest.approx(93.5)]
    assert res.maps.shape == (3, 64, 96)


def test_query_maps_of_swin_windows_lie_on_the_image_grid():
    from timm.models.swin_transformer import SwinTransformer

    from attnviz.capture import window_to_grid

    torch.manual_seed(2)  # a 12 x 12 token map in 5 x 5 windows: padding, shift 2 in block 1
    swin = SwinTransformer(
        img_size=24, patch_size=2, window_size=5, embed_dim=16, depths=(2, 2), num_heads=(2, 2)
    ).eval()
    x = torch.randn(3, 24, 24, generator=torch.Generator().manual_seed(1))
    name = "layers.0.blocks.1"
    with torch.no_grad(), attnviz.capture(swin, sites=name) as cache:
        swin(x[None])
    meta = cache.meta[name]
    assert meta["shift"] == (2, 2)
    full = window_to_grid(cache[name], meta["key_index"], (12, 12))[0]  # (heads, 144, 12, 12)
    cells = [(0, 0), (5, 11), (11, 4)]
    res = query_maps(swin, x, queries=cells, query_space="cell", site=name)
    assert res.head_maps.shape == (3, 3, 12, 12) and res.prefix_names == []
    for q, (y, x_) in enumerate(cells):
        np.testing.assert_allclose(res.head_maps[q, :2], full[:, y * 12 + x_], atol=1e-6)
        np.testing.assert_allclose(res.grid_maps[q], full[:, y * 12 + x_].mean(0), atol=1e-6)
        assert (res.grid_maps[q] > 0).sum() <= 25  # one window of keys
    with pytest.raises(attnviz.NoAttentionSitesError, match="window"):
        query_independence(swin, x[None], progress=False)  # disjoint windows: not measured


# ----------------------------------------------------------------------------- query independence
def test_query_independence_per_head_equals_hand_computation(vit):
    oracle = vit_oracle(vit)
    res = query_independence(vit, X, exact=True, progress=False, batch_size=1)
    labels = [s.get("label") for s in res.sites]
    assert labels == [f"TOK_4_1{c}/{h}" for c in "ab" for h in ("h0", "h1", "h2", "mean")]
    frame = res.to_frame().set_index("site")
    for li, name in enumerate(("blocks.0.attn", "blocks.1.attn")):
        att = oracle[name]  # (B, heads, 26, 26)
        x, o = oracle[name + ":io"]
        for col, head in enumerate([0, 1, 2, "mean"]):
            s = li * 4 + col
            for i in range(2):
                full = att[i].mean(0) if head == "mean" else att[i, head]
                rows = full[P:]  # the 24 patch queries, every key (prefix keys included)
                got = {m: res.values[m][i, s] for m in res.metrics}
                assert got["cos_att"] == pytest.approx(avg_dist(rows), abs=1e-6)
                assert got["jsd_att"] == pytest.approx(avg_jsd(rows), abs=1e-6)
                h = entropy(rows)
                assert got["row_entropy"] == pytest.approx(h.mean(), abs=1e-5)
                assert got["eff_keys"] == pytest.approx(math.exp(h.mean()), rel=1e-5)
                top = np.sort(rows.max(1))  # torch's median: the lower middle of an even count
                assert got["max_weight"] == pytest.approx(top[(len(top) - 1) // 2], abs=1e-6)
                assert got["argmax_keys"] == len(set(rows.argmax(1).tolist()))
                assert got["prefix_mass"] == pytest.approx(rows[:, :P].sum(1).mean(), abs=1e-6)
                c = full[0] / np.linalg.norm(full[0])
                u = rows / np.linalg.norm(rows, axis=1, keepdims=True)
                assert got["prefix_cos"] == pytest.approx(np.mean((1 - u @ c) / 2), abs=1e-6)
                if head == "mean":  # layer figures: the attention module's patch tokens
                    assert got["cos_input"] == pytest.approx(avg_dist(x[i, P:]), abs=1e-6)
                    assert got["cos_output"] == pytest.approx(avg_dist(o[i, P:]), abs=1e-6)
                else:
                    assert math.isnan(got["cos_input"]) and math.isnan(got["cos_output"])
        assert frame.loc[f"TOK_4_1{'ab'[li]}/h1", "head"] == 1
    assert res.sites[0]["prefix_names"] == ["class", "register"]
    assert res.sites[0]["query_grid"] == [4, 6] and res.sites[0]["n_keys"] == 26


def test_query_independence_on_pvt_reduced_keys(pvt):
    oracle = timm_weights(pvt, X, [("a", pvt.stages[0].blocks[0].attn)])
    res = query_independence(pvt, X, sites=["stages.0.blocks.0.attn"], exact=True, progress=False)
    att = oracle["a"]  # (B, 1 head, 384, 6)
    assert res.sites[0]["key_grid"] == [2, 3] and res.sites[0]["query_grid"] == [16, 24]
    for i in range(2):
        for s in (0, 1):  # the one head and the head mean: the same rows
            assert res.values["cos_att"][i, s] == pytest.approx(avg_dist(att[i, 0]), abs=1e-6)
            assert res.values["jsd_att"][i, s] == pytest.approx(avg_jsd(att[i, 0]), abs=1e-6)
        assert math.isnan(res.values["prefix_mass"][i, 0])  # no prefix tokens
    x, o = oracle["a:io"]
    assert res.values["cos_output"][0, 1] == pytest.approx(avg_dist(o[0]), abs=1e-6)


def test_near_one_hot_heads_are_flagged(vit):
    spiky = make_vit(depth=1)
    with torch.no_grad():
        spiky.blocks[0].attn.qkv.weight.mul_(40.0)  # huge logits: rows close to one-hot
    res = query_independence(spiky, X, progress=False)
    flagged = res.near_one_hot()
    assert "TOK_4_1/h0" in flagged
    assert "NEAR ONE-HOT" in res.summary()
    quiet = query_independence(vit, X[:1], sites=["blocks.0.attn"], progress=False)
    assert quiet.near_one_hot() == []  # the same statistic, rows spread over ~20 keys


def test_figure_maps_are_head_means_of_patch_queries(vit, tmp_path):
    oracle = vit_oracle(vit)["blocks.0.attn"]
    res = query_independence(vit, X, map_images=2, n_queries=2, progress=False)
    maps = res.query_maps()
    # 2 evenly spread points: rows linspace(0, 3, 4)[1:-1] = 1, 2, columns round(5/3, 10/3)
    assert len(maps) == 2 and res.map_cells.tolist() == [[1, 2], [1, 3]]
    for i, m in enumerate(maps):
        for q, (y, x) in enumerate(res.map_cells):
            want = oracle[i, :, P + y * 6 + x, P:].mean(0).reshape(4, 6)
            np.testing.assert_allclose(m.grid_maps[q], want, atol=1e-6)
    back = type(res).load(res.save(tmp_path / "qi"))
    assert back.sites == res.sites
    for m in res.metrics:
        np.testing.assert_array_equal(back.values[m], res.values[m])


# ----------------------------------------------------------------------------- viewer
def _decode(b64: str, shape) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype=np.uint8).reshape(shape)


def test_viewer_data_maps_each_cell_of_a_non_square_grid_to_its_rows(vit):
    oracle = vit_oracle(vit, X[:1])["blocks.0.attn"][0]
    res = viewer_maps(vit, X[0], site="blocks.0.attn")
    viewer = QueryViewer(res, model="vit")
    d = viewer.data()
    assert d["grid"] == [4, 6] and d["keys"] == [4, 6] and len(d["cells"]) == 24
    assert d["heads"] == ["head mean", "head 0", "head 1", "head 2"]
    assert d["prefix"] == ["class", "register"]
    maps = _decode(d["maps"], (4, 24, 4, 6)).astype(np.float64)
    prefix = _decode(d["prefix_maps"], (4, 2, 4, 6)).astype(np.float64)
    lo, hi = np.asarray(d["head_vmin"]), np.asarray(d["head_vmax"])  # one scale per head
    span = hi - lo
    for q, (y, x) in enumerate(d["cells"]):
        row = oracle[:, P + y * 6 + x, P:]  # (heads, 24)
        want = [row.mean(0), *row]  # the page's order: the head mean, then each head
        for h in range(4):
            got = lo[h] + maps[h, q].ravel() / 255 * span[h]
            np.testing.assert_allclose(got, want[h], atol=span[h] / 510 + 1e-9)
    for p in range(2):
        got = lo[2] + prefix[2, p].ravel() / 255 * span[2]  # head 1
        np.testing.assert_allclose(got, oracle[1, p, P:], atol=span[2] / 510 + 1e-9)
    # each head's scale spans its own queries' and prefix tokens' maps
    head1 = np.concatenate([oracle[1, P:, P:].ravel(), oracle[1, :P, P:].ravel()])
    assert (lo[2], hi[2]) == (pytest.approx(head1.min(), abs=1e-6), pytest.approx(head1.max()))
    assert (d["vmin"], d["vmax"]) == (lo[0], hi[0])
    assert sorted(map(tuple, d["cells"])) == [(y, x) for y in range(4) for x in range(6)]
    assert "3 heads and their mean" in viewer.caption() and "class, register" in viewer.caption()


def test_viewer_escapes_titles_and_token_names(vit):
    res = viewer_maps(vit, X[0], site="blocks.0.attn")
    res.prefix_names = ["</script><script>alert(1)</script>", "a&b"]
    res.site["alias"] = "<b>TOK</b>"
    page = QueryViewer(res, model="<i>m</i>", title="<img src=x onerror=alert(1)>").to_html()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "</script><script>alert" not in page
    assert "<b>TOK</b>" not in page and "&lt;b&gt;TOK&lt;/b&gt;" in page
    assert page.count("<script") == 2  # the JSON block and the viewer's own script
    payload = re.search(r'class="qv-data">(.*?)</script>', page, re.S).group(1)
    assert json.loads(payload)["prefix"] == res.prefix_names  # the names arrive intact
    assert "textContent = name" in page  # drawn as text, never as HTML


CHROMIUM = shutil.which("chromium")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_viewer_in_chromium_picks_patches_heads_and_the_class_token(vit, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    path = QueryViewer(viewer_maps(vit, X[0], site="blocks.0.attn")).save(tmp_path / "v.html")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(path.as_uri())
        viewer = page.locator("div.attnviz-query-viewer")
        page.wait_for_function("el => el.dataset.query !== ''", arg=viewer.element_handle())
        canvas = viewer.locator("canvas.qv-map")
        box = canvas.bounding_box()
        canvas.click(position={"x": box["width"] - 3, "y": box["height"] - 3})
        assert viewer.get_attribute("data-query") == "3,5"  # the bottom-right patch of 4 x 6
        before = canvas.evaluate("c => c.toDataURL()")
        viewer.locator("select.qv-head").select_option("2")  # head 1
        assert canvas.evaluate("c => c.toDataURL()") != before
        assert "head 1" in viewer.locator(".qv-info").inner_text()
        viewer.locator(".qv-prefix button").first.click()
        assert viewer.get_attribute("data-query") == "prefix:0"
        assert "class token (not a patch query)" in viewer.locator(".qv-info").inner_text()
        browser.close()
    assert errors == []


# ----------------------------------------------------------------------------- rollout
def _hand_rollout(layers: list[np.ndarray], residual: float = 0.5) -> np.ndarray:
    roll = None
    for a in layers:  # (heads, N, N)
        m = residual * np.eye(a.shape[-1]) + (1 - residual) * a.mean(0)
        m = m / m.sum(1, keepdims=True)
        roll = m if roll is None else m @ roll
    return roll


def test_rollout_matrix_two_layers_by_hand():
    a1 = np.array([[[0.5, 0.5, 0.0], [0.2, 0.2, 0.6], [1.0, 0.0, 0.0]]])  # one head
    a2 = np.array([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1 / 3, 1 / 3, 1 / 3]]])
    # by hand: M1 = 0.5 A1 + 0.5 I, M2 likewise (rows already sum to 1); rollout = M2 @ M1
    m1 = np.array([[0.75, 0.25, 0.0], [0.1, 0.6, 0.3], [0.5, 0.0, 0.5]])
    m2 = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [1 / 6, 1 / 6, 2 / 3]])
    got = rollout_matrix([torch.tensor(a1), torch.tensor(a2)]).numpy()
    np.testing.assert_allclose(got, m2 @ m1, atol=1e-12)
    np.testing.assert_allclose(got[0], [0.425, 0.425, 0.15], atol=1e-12)  # 0.5 m1[0] + 0.5 m1[1]
    # two heads are averaged first; rows that do not sum to 1 are renormalised
    two = torch.tensor(np.stack([a1[0], a2[0]]))
    np.testing.assert_allclose(rollout_matrix([two]).numpy(), _hand_rollout([two.numpy()]))
    np.testing.assert_allclose(
        rollout_matrix([torch.tensor(2 * a1)]).numpy(), _hand_rollout([2 * a1]), atol=1e-12
    )


def test_rollout_analysis_equals_hand_rollout_of_timm_weights(vit, tmp_path):
    oracle = vit_oracle(vit)
    res = rollout(vit, X, progress=False, map_images=1, batch_size=1)
    assert res.tokens == ["class", "register", "patch mean"] and res.query_grid == [4, 6]
    assert [s["name"] for s in res.sites] == ["blocks.0.attn", "blocks.1.attn"]
    for i in range(2):
        roll = _hand_rollout([oracle["blocks.0.attn"][i], oracle["blocks.1.attn"][i]])
        np.testing.assert_allclose(res.maps[i, 0], roll[0, P:].reshape(4, 6), atol=1e-6)
        np.testing.assert_allclose(res.maps[i, 1], roll[1, P:].reshape(4, 6), atol=1e-6)
        np.testing.assert_allclose(res.maps[i, 2], roll[P:, P:].mean(0).reshape(4, 6), atol=1e-6)
        np.testing.assert_allclose(res.prefix_mass[i, 0], roll[0, :P].sum(), atol=1e-6)
        np.testing.assert_allclose(res.maps[i].sum((1, 2)) + res.prefix_mass[i], 1.0, atol=1e-6)
    frame = res.per_image()
    p = roll[P:, P:].mean(0) / roll[P:, P:].mean(0).sum()
    want = -(p * np.log(p)).sum() / math.log(24)
    got = frame[(frame.image == 1) & (frame.token == "patch mean")]["entropy_norm"].item()
    assert got == pytest.approx(want, abs=1e-6)
    # a residual of 1 keeps every token on itself: the class row is all prefix mass
    ident = rollout(vit, X[:1], residual=1.0, progress=False, map_images=0)
    assert ident.prefix_mass[0, 0] == pytest.approx(1.0) and ident.maps[0, 0].max() == 0
    # save / load keeps every field
    back = RolloutResult.load(res.save(tmp_path / "roll"))
    for name in res.__dataclass_fields__:
        a, b = getattr(res, name), getattr(back, name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b), name
        else:
            assert a == b, name
    assert "caveats" in res.summary() and "Jain & Wallace" in res.summary()


def test_rollout_refuses_reduced_keys(pvt):
    with pytest.raises(ValueError, match="queries = keys"):
        rollout(pvt, X[:1], sites=["stages.0.blocks.0.attn"], progress=False)


def test_rollout_docstring_states_the_caveats():
    import importlib

    mod = importlib.import_module("attnviz.analysis.rollout")  # the module, not the function
    text = " ".join(mod.__doc__.split())
    for words in ("0.5", "MLPs", "values", "not a faithful attribution", "Jain & Wallace"):
        assert words in text


# ----------------------------------------------------------------------------- figures
def test_rollout_figure_draws_the_class_rollout_beside_the_image(vit):
    import matplotlib.pyplot as plt

    from attnviz.plot.rollout import plot_rollout

    res = rollout(vit, X, progress=False, map_images=2)
    fig = plot_rollout(res)
    try:
        axes = [ax for ax in fig.axes if ax.images]
        assert len(axes) == 6  # 2 images x (image, grid, overlay)
        np.testing.assert_array_equal(axes[0].images[0].get_array(), res.images[0])
        np.testing.assert_allclose(axes[1].images[0].get_array(), res.maps[0, 0])
        np.testing.assert_allclose(axes[4].images[0].get_array(), res.maps[1, 0])
        assert axes[2].images[1].get_array().shape == (64, 96)  # upsampled over the image
        assert axes[1].images[0].norm is axes[4].images[0].norm  # one colour scale
        title = fig._suptitle.get_text().replace("\n", " ")
        assert "class token" in title and "not a faithful attribution" in title
        assert "0.5" in title and "Jain & Wallace" in title
    finally:
        plt.close(fig)


def test_head_figure_rows_are_queries_then_prefix_tokens(vit):
    import matplotlib.pyplot as plt

    from attnviz.plot.queries import plot_query_heads

    res = query_maps(vit, X[0], queries=[(1, 1), (2, 4)], query_space="cell", site="blocks.1.attn")
    fig = plot_query_heads(res)
    try:
        axes = np.array([ax for ax in fig.axes if ax.images]).reshape(4, 4)
        assert [ax.get_title() for ax in axes[0]] == ["head mean", "head 0", "head 1", "head 2"]
        assert [ax.get_ylabel() for ax in axes[:, 0]] == [
            "query (1, 1)",
            "query (2, 4)",
            "class token",
            "register token",
        ]
        assert axes[1, 2].lines[0].get_xydata().tolist() == [[res.query_pixels[1][1],
                                                             res.query_pixels[1][0]]]  # fmt: skip
        assert not axes[2, 0].lines  # a prefix token has no position
        from attnviz.plot.overlay import upsample

        want = upsample(res.prefix_maps[0, 1].astype(np.float64), (64, 96))  # class, head 1
        np.testing.assert_allclose(axes[2, 2].images[1].get_array(), want, atol=1e-6)
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- command line
FACTORY = textwrap.dedent(
    """
    import timm, torch

    def vit():
        torch.manual_seed(11)
        kw = dict(img_size=(64, 96), patch_size=16, depth=2, num_classes=3, reg_tokens=1)
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, **kw)
    """
)


def test_cli_queries_and_rollout_on_a_timm_vit(tmp_path, monkeypatch, shapes_folder):
    from attnviz.cli import main
    from attnviz.report import load_result

    monkeypatch.chdir(tmp_path)
    (tmp_path / "token_vit_factory.py").write_text(FACTORY)
    common = ["--model", "python:token_vit_factory:vit", "--input-size", "64", "96"]
    common += ["--images", str(shapes_folder), "--limit", "2", "--no-progress"]
    assert main(["queries", *common, "--out", str(tmp_path / "q"), "--figure-images", "1"]) == 0
    roll_args = ["--out", str(tmp_path / "r"), "--figure-images", "1", "--residual", "0.25"]
    assert main(["rollout", *common, *roll_args]) == 0
    qi = load_result(tmp_path / "q" / "result")
    assert {s.get("label") for s in qi.sites} >= {"TOK_4_1a/h0", "TOK_4_1b/mean"}
    figures = {p.name for p in (tmp_path / "q" / "figures").glob("*.png")}
    assert figures == {"query_maps.png", "query_distances.png", "query_heads.png"}
    viewer = load_result(tmp_path / "q" / "viewer")
    assert viewer.head_maps.shape == (24, 4, 4, 6) and viewer.prefix_names == ["class", "register"]
    roll = load_result(tmp_path / "r" / "result")
    assert isinstance(roll, RolloutResult) and roll.maps.shape == (2, 3, 4, 6)
    assert roll.residual == 0.25  # the option reaches the analysis (0.5 is the default)
    assert (tmp_path / "r" / "figures" / "rollout.png").stat().st_size > 0
    assert "not a faithful attribution" in (tmp_path / "r" / "summary.txt").read_text()
    page = tmp_path / "report.html"
    assert main(["report", str(tmp_path / "q"), str(tmp_path / "r"), "--html", str(page)]) == 0
    text = page.read_text()
    assert "qv-head" in text and "attention rollout" in text
    # a residual outside [0, 1] is refused by the parser (exit code 2)
    bad = ["rollout", *common, "--out", str(tmp_path / "bad"), "--residual", "1.5"]
    with pytest.raises(SystemExit) as exc:
        main(bad)
    assert exc.value.code == 2


def test_rollout_is_re_exported():
    import attnviz.analysis
    import attnviz.plot

    assert attnviz.analysis.rollout is rollout and attnviz.analysis.RolloutResult is RolloutResult
    assert attnviz.plot.plot_rollout.__module__ == "attnviz.plot.rollout"
