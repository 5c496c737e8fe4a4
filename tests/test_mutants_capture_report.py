"""Mutation survivors of capture adapters, capture core, reference blocks, report and viewer
(issue 26, item 2): each test pins a behaviour class a sampled mutant changed silently
(H/W mix-ups on non-square maps, error texts, hook order, page structure under hostile text)."""

from __future__ import annotations

from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import attnviz
from attnviz.capture import NotWritableError, window_to_grid


# ----------------------------------------------------------------------------- capture adapters
def test_coord_gate_shape_error_names_both_shapes():
    from attnviz.capture.adapters.timm_coord import _two_gates

    a_h, a_w = torch.rand(1, 2, 3, 2), torch.rand(1, 2, 1, 4)  # height gate not (B, C, H, 1)
    with pytest.raises(
        RuntimeError, match=r"unexpected gate shapes \(1, 2, 3, 2\), \(1, 2, 1, 4\)"
    ):
        _two_gates(nn.Identity(), {"gate": (a_h, a_w)}, (), None, None)


def test_efficientformer_v2_downsample_meta_has_exactly_the_documented_keys():
    from timm.models.efficientformer_v2 import Attention2dDownsample

    torch.manual_seed(0)
    model = nn.Sequential(Attention2dDownsample(dim=16, key_dim=8, num_heads=2, resolution=(4, 6)))
    with attnviz.capture(model.eval()) as cache, torch.no_grad():
        model(torch.randn(1, 16, 4, 6))
    meta = cache.meta["0"]
    # module docstring: prefix_tokens 0, query_grid (the map halved, ceil), key_grid (the map)
    assert set(meta) == {"prefix_tokens", "prefix_names", "query_grid", "key_grid"}
    assert meta["query_grid"] == (2, 3) and meta["key_grid"] == (4, 6)
    assert tuple(cache["0"].shape) == (1, 2, 2 * 3, 4 * 6)


def test_sam_grid_is_height_by_width_on_a_non_square_map():
    from timm.models.vision_transformer_sam import VisionTransformerSAM

    torch.manual_seed(0)
    model = VisionTransformerSAM(
        img_size=(48, 80), patch_size=8, embed_dim=16, depth=2, num_heads=2, window_size=4,
        global_attn_indexes=(1,), use_rel_pos=True, neck_chans=8, num_classes=3,
    ).eval()  # fmt: skip
    with attnviz.capture(model) as cache, torch.no_grad():
        model(torch.randn(1, 3, 48, 80))
    grid = (48 // 8, 80 // 8)
    for name in ("blocks.0", "blocks.1"):
        assert cache.meta[name]["query_grid"] == grid and cache.meta[name]["key_grid"] == grid
    assert tuple(cache["blocks.1"].shape) == (1, 2, 60, 60)


def test_hiera_global_block_in_raster_order_is_writable():
    from timm.models.hiera import Hiera

    torch.manual_seed(0)
    model = Hiera(img_size=(64, 96), embed_dim=8, num_heads=1, stages=(1, 1, 1, 2), num_classes=3)
    model.eval()
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    name = "blocks.4.attn"  # last block of the last stage: every unroll consumed, raster order
    m = model.get_submodule(name)
    seen = {}
    hook = m.register_forward_hook(lambda mod, i, o: seen.update(x=i[0], y=o))
    x = torch.randn(1, 3, 64, 96)
    try:
        with torch.no_grad(), attnviz.intervene(model, {name: "uniform"}):
            model(x)
    finally:
        hook.remove()
    with torch.no_grad():  # uniform attention: every query reads the mean value vector
        b, n, _ = seen["x"].shape
        v = m.qkv(seen["x"]).reshape(b, n, 3, -1)[:, :, 2]
        expected = m.proj(v.mean(1, keepdim=True)).expand(b, n, -1)
    torch.testing.assert_close(seen["y"], expected, rtol=0, atol=1e-5)
    with pytest.raises(NotWritableError, match="unrolled order"):  # not raster: refused
        attnviz.intervene(model, {"blocks.3.attn": "uniform"})


# ----------------------------------------------------------------------------- capture core
def test_window_to_grid_drops_padding_slots_even_when_not_finite():
    # 2 queries on a 2x3 key grid, 4 slots each; slot 3 of each is padding (-1)
    key_index = torch.tensor([[0, 1, 3, -1], [4, 5, 2, -1]])
    att = torch.tensor([[0.1, 0.2, 0.3, float("inf")], [0.4, 0.5, 0.6, float("nan")]])
    out = window_to_grid(att, key_index, (2, 3))
    expected = torch.zeros(2, 6)
    for q in range(2):
        for s in range(3):
            expected[q, key_index[q, s]] += att[q, s]
    torch.testing.assert_close(out, expected.view(2, 2, 3))


def test_intervention_runs_before_hooks_registered_earlier_on_the_written_module():
    from attnviz.blocks.se import SEBlock

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 1), SEBlock(16, reduction=2)).eval()
    seen = {}
    hook = model[1].gate.register_forward_hook(lambda m, i, o: seen.update(gate=o.clone()))
    try:
        with torch.no_grad(), attnviz.intervene(model, {"all": "constant:1"}):
            model(torch.randn(2, 3, 5, 7))
    finally:
        hook.remove()
    # an earlier user hook on the gate sees what the block multiplies with: the written ones
    torch.testing.assert_close(seen["gate"], torch.ones_like(seen["gate"]))


def test_a_plain_model_with_a_submodule_named_orig_mod_is_not_taken_for_a_compiled_one():
    from attnviz.blocks.se import SEBlock

    class Holder(nn.Module):  # not an OptimizedModule, whatever its attributes are called
        def __init__(self) -> None:
            super().__init__()
            self._orig_mod = nn.Conv2d(3, 16, 1)
            self.se = SEBlock(16, reduction=2)

        def forward(self, x):
            return self.se(self._orig_mod(x))

    torch.manual_seed(0)
    model = Holder().eval()
    x = torch.randn(1, 3, 4, 6)
    with attnviz.capture(model) as cache, torch.no_grad():
        model(x)
        s = model._orig_mod(x).mean((2, 3), keepdim=True)  # the SE gate by hand (Eq. 2-3)
        gate = torch.sigmoid(model.se.fc2(model.se.act(model.se.fc1(s))))
    assert list(cache) == ["se"]
    torch.testing.assert_close(cache["se"].reshape(gate.shape), gate)


def test_entering_an_active_capture_again_says_so():
    from attnviz.blocks.se import SEBlock

    ctx = attnviz.capture(nn.Sequential(SEBlock(16, reduction=2)))
    with ctx:
        with pytest.raises(RuntimeError, match="^this capture context is already active$"):
            ctx.__enter__()


# ----------------------------------------------------------------------------- blocks
def test_non_local_without_bn_starts_as_identity_with_a_zero_conv():
    from attnviz.blocks.non_local import NonLocalBlock

    block = NonLocalBlock(8, bn_layer=False).eval()
    assert isinstance(block.W_z, nn.Conv2d) and block.W_z.kernel_size == (1, 1)
    assert not block.W_z.weight.any() and not block.W_z.bias.any()
    x = torch.randn(1, 8, 3, 5)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)  # z = W_z y + x with W_z = 0 (Eq. 6)


# ----------------------------------------------------------------------------- report / viewer
class _Table(HTMLParser):
    """Tags in order, the text of each cell, and any text outside a cell."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags, self.cells, self.stray, self._in = [], [], [], 0

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag in ("td", "th"):
            self._in += 1
            self.cells.append("")

    def handle_endtag(self, tag):
        self.tags.append("/" + tag)
        if tag in ("td", "th"):
            self._in -= 1

    def handle_data(self, data):
        if self._in:
            self.cells[-1] += data
        else:
            self.stray.append(data)


def test_frame_html_is_one_table_with_only_cells_holding_text():
    from attnviz.report import _frame_html

    hostile = ["</tbody></table><b>x</b>", "a & <td>b", "\"q\" 's'"]
    frame = pd.DataFrame({"<col>": hostile, "n": [1.0, -0.0001, 2.5]})
    page = _frame_html(frame)
    parser = _Table()
    parser.feed(page)
    parser.close()
    assert parser.stray == []
    assert parser.cells == [
        "<col>",
        "n",
        hostile[0],
        "1.000",
        hostile[1],
        "0.000",
        hostile[2],
        "2.500",
    ]
    assert parser.tags[0] == "table" and parser.tags[-1] == "/table"
    assert parser.tags.count("table") == 1 and parser.tags.count("/table") == 1


def _inspector():
    from timm.layers import NonLocalAttn

    from attnviz.blocks.gc import GCBlock
    from attnviz.widgets import QueryInspector

    torch.manual_seed(0)
    # a GC site first: the inspector's default must skip it for the first per-query site
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), GCBlock(8), NonLocalAttn(8, rd_channels=4)
    ).eval()
    return QueryInspector(model, torch.randn(3, 16, 24), top_k=4)


@pytest.fixture(scope="module")
def inspector():
    return _inspector()


def test_inspector_default_site_is_the_first_per_query_site():
    site = _inspector().site  # built here: a wrong default may raise, a failure, not an error
    assert site["name"] == "2" and site["kind"] != "gc"


def test_inspector_starts_at_the_centre_cell_and_marks_it(inspector):
    gh, gw = inspector.query_grid
    assert (gh, gw) == (8, 12)
    # the first draw (at construction): the centre cell (gh // 2, gw // 2) = (4, 6)
    first = inspector._drawn["marker"]
    assert inspector.state.cell == (4, 6)
    h, w = 16, 24  # pixel centre of cell (y, x): (y + 0.5) * H / gh - 0.5
    assert list(first.get_xdata()) == pytest.approx([(6 + 0.5) * w / gw - 0.5])
    assert list(first.get_ydata()) == pytest.approx([(4 + 0.5) * h / gh - 0.5])


def test_inspector_top_keys_break_ties_by_key_order(inspector):
    saved = inspector.attention
    n, nk = saved.shape
    levels = np.random.default_rng(0).integers(0, 3, nk) / 4  # many ties among 3 levels
    try:
        inspector.attention = np.tile(levels, (n, 1))
        st = inspector.query_state(1, 2)
    finally:
        inspector.attention = saved
    # ties in key order (row-major), the largest level first: an independent ranking
    ranked = sorted(range(nk), key=lambda k: (-levels[k], k))[: inspector.top_k]
    kw = inspector.key_grid[1]
    assert [k for k, _ in st.top_keys] == [(k // kw, k % kw) for k in ranked]


def test_viewer_page_title_and_structure(inspector, tmp_path):
    viewer = inspector.viewer()
    path = viewer.save(tmp_path / "v.html")
    page = path.read_text(encoding="utf-8")
    assert page.startswith('<!DOCTYPE html><html><head><meta charset="utf-8">')
    assert "<title>attnviz query viewer</title>" in page
    assert page.endswith("</body></html>")
