"""torchvision Swin (V1, V2) and MaxViT window attention read exactly (issue 24).

``ShiftedWindowAttention`` / ``ShiftedWindowAttentionV2`` and MaxViT's
``PartitionAttentionLayer`` (kind ``window``), with random weights, each proven against a dense
recomputation written here from the papers' formulas (Swin eq. 4, Swin V2 eq. 2 and 4, MaxViT
sec. 3.2) out of the module's own qkv, bias table and shift mask, with the windows placed on the
image by the definitions (pad, roll, partition), not by attnviz code; key slots checked against a
roll / partition of a position map done by hand (Swin) or by the module's own partition op
(MaxViT), on non-square maps with padding, shifts on one or both axes and dropped shifts.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor
from torchvision.models.maxvit import MaxVit

import attnviz
from attnviz.capture import NotWritableError, window_to_grid
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))  # swin maps 16 x 24 ...
CELLS = [(0, 0), (5, 17), (15, 23), (9, 2)]  # on the 16 x 24 map of the first stage


def _swin(v2: bool) -> torch.nn.Module:
    torch.manual_seed(5)
    model = (torchvision.models.swin_v2_t if v2 else torchvision.models.swin_t)(weights=None)
    with torch.no_grad():  # a bias that matters (torchvision starts the table near zero)
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_(0, 1.0)
    return model.eval()


def _sites(model, type_name: str) -> dict:
    return {n: m for n, m in model.named_modules() if type(m).__name__ == type_name}


def _inputs(model, modules: dict, x: Tensor) -> dict:
    """Each module's input in one forward."""
    got, hooks = {}, []
    for name, m in modules.items():
        hooks.append(m.register_forward_pre_hook(lambda m, i, n=name: got.__setitem__(n, i[0])))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return got


def _shift(h: int, w: int, m) -> tuple[int, int]:
    """The shift torchvision applies: none along an axis that one window covers once padded."""
    (wh, ww), (sh, sw) = m.window_size, m.shift_size
    return (0 if wh >= math.ceil(h / wh) * wh else sh, 0 if ww >= math.ceil(w / ww) * ww else sw)


def _swin_reference(m, x: Tensor) -> tuple[Tensor, Tensor]:
    """Dense weights (B, heads, HW, HW) between image positions and each row's weight on padding.

    Swin eq. 4 (V2: eq. 2 and 4) on the map zero-padded to whole windows; two positions attend
    when they fall in the same window after the cyclic roll by -shift of the padded map; B is
    the table entry of their offset in the window, the mask -100 between the roll's regions.
    """
    b, h, w, c = x.shape
    (wh, ww), heads = m.window_size, m.num_heads
    ph, pw = math.ceil(h / wh) * wh, math.ceil(w / ww) * ww
    sh, sw = _shift(h, w, m)
    v2 = hasattr(m, "logit_scale")
    xp = F.pad(x, (0, 0, 0, pw - w, 0, ph - h)).reshape(b, ph * pw, c)
    bias = m.qkv.bias.clone()
    if v2:  # Swin V2 has no key bias
        bias[c : 2 * c] = 0
    qkv = (xp @ m.qkv.weight.T + bias).view(b, -1, 3, heads, c // heads)
    q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)  # (B, heads, P, d)
    if v2:
        scale = m.logit_scale.clamp(max=math.log(100.0)).exp()  # (heads, 1, 1)
        logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2) * scale
        table = 16 * torch.sigmoid(m.cpb_mlp(m.relative_coords_table).view(-1, heads))
    else:
        logits = q @ k.transpose(-1, -2) / math.sqrt(c // heads)
        table = m.relative_position_bias_table
    yy = torch.arange(ph).repeat_interleave(pw)
    xx = torch.arange(pw).repeat(ph)
    ry, rx = (yy - sh) % ph, (xx - sw) % pw  # where each padded position sits after the roll
    same = (ry // wh)[:, None].eq((ry // wh)[None]) & (rx // ww)[:, None].eq((rx // ww)[None])
    dy = (ry % wh)[:, None] - (ry % wh)[None]
    dx = (rx % ww)[:, None] - (rx % ww)[None]
    logits = logits + table[(dy + wh - 1) * (2 * ww - 1) + dx + ww - 1].permute(2, 0, 1)

    def region(r: Tensor, size: int, ws: int, s: int) -> Tensor:
        return torch.zeros_like(r) if s == 0 else (r >= size - ws).long() + (r >= size - s).long()

    if sh or sw:
        label = region(ry, ph, wh, sh) * 3 + region(rx, pw, ww, sw)
        logits = logits + torch.where(label[:, None] != label[None], -100.0, 0.0)
    full = logits.masked_fill(~same, float("-inf")).softmax(-1)
    on_map = ((yy < h) & (xx < w)).nonzero()[:, 0]
    rows = full[:, :, on_map]
    return rows[..., on_map], rows.sum(-1) - rows[..., on_map].sum(-1)


def _swin_slots_by_hand(h: int, w: int, m) -> Tensor:
    """(HW, K): pad a position map with -1, roll it by -shift, cut windows; each position's
    window, read slot by slot."""
    (wh, ww), (sh, sw) = m.window_size, _shift(h, w, m)
    ph, pw = math.ceil(h / wh) * wh, math.ceil(w / ww) * ww
    pos = F.pad(torch.arange(h * w).view(h, w), (0, pw - w, 0, ph - h), value=-1)
    pos = torch.roll(pos, shifts=(-sh, -sw), dims=(0, 1))
    windows = pos.view(ph // wh, wh, pw // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    out = torch.empty(h * w, wh * ww, dtype=torch.long)
    for win in windows:
        for p in win[win >= 0]:
            out[p] = win
    return out


@pytest.mark.parametrize("v2", [False, True], ids=["swin_t", "swin_v2_t"])
def test_swin_window_attention_equals_the_paper_formula_on_the_image(v2):
    model = _swin(v2)
    assert unread_modules(model) == {}
    sites = _sites(model, "ShiftedWindowAttentionV2" if v2 else "ShiftedWindowAttention")
    inputs = _inputs(model, sites, X)
    first = [n for n in sites if inputs[n].shape[1:3] == (16, 24)]
    with torch.no_grad():
        plain = model(X)
        with attnviz.capture(model) as cache:
            out = model(X)
        with attnviz.capture(model, sites=first, queries=CELLS) as picked:
            model(X)
    assert torch.equal(out, plain)  # (a)
    seen = set()
    for name, m in sites.items():
        x = inputs[name]
        h, w = x.shape[1:3]
        meta, att = cache.meta[name], cache[name]
        assert meta["query_grid"] == meta["key_grid"] == (h, w)
        assert meta["shift"] == _shift(h, w, m)
        seen.add(meta["shift"])
        assert att.shape == (2, m.num_heads, h * w, m.window_size[0] * m.window_size[1])
        torch.testing.assert_close(att.sum(-1), torch.ones(att.shape[:-1]), rtol=0, atol=1e-5)
        # (c) each slot's image position, against a roll / partition done by hand
        assert torch.equal(meta["key_index"], _swin_slots_by_hand(h, w, m))
        # (b) per head, the weights on the image and on the padding
        with torch.no_grad():
            ref, pad = _swin_reference(m, x)
        on_image = window_to_grid(att, meta["key_index"], (h, w)).flatten(-2)
        torch.testing.assert_close(on_image, ref, rtol=0, atol=2e-5)
        on_pad = (att * (meta["key_index"] < 0)).sum(-1)
        torch.testing.assert_close(on_pad, pad, rtol=0, atol=2e-5)
        if name in first:  # (d) queries= keeps the full map's rows
            idx = torch.tensor([y * w + x_ for y, x_ in CELLS])
            torch.testing.assert_close(picked[name], att[:, :, idx], rtol=0, atol=0)
            assert torch.equal(picked.meta[name]["key_index"], meta["key_index"])
    # shifted and unshifted blocks, with padding (16 x 24 in 7 x 7 windows); Swin V2's
    # 8 x 12 map in 8 x 8 windows is shifted along x only; 4 x 6 maps drop the shift
    assert seen == ({(0, 0), (0, 4), (4, 4)} if v2 else {(0, 0), (3, 3)})


def test_swin_shift_mask_and_bias_are_in_what_is_read_and_writing_is_refused():
    model = _swin(False)
    shifted, plain = "features.1.1.attn", "features.1.0.attn"  # 16 x 24 padded to 21 x 28
    with torch.no_grad(), attnviz.capture(model, sites=[shifted, plain]) as with_bias:
        model(X)
    for name in (shifted, plain):
        model.get_submodule(name).relative_position_bias_table.data.zero_()
    with torch.no_grad(), attnviz.capture(model, sites=[shifted, plain]) as no_bias:
        model(X)
    for name in (shifted, plain):
        assert (with_bias[name] - no_bias[name]).abs().max() > 1e-2
    # the roll brings rows and columns 0..2 next to the padding: the shift mask (-100) keeps
    # position (0, 0) off the padding slots; unshifted, padding is not masked and takes weight
    corner = no_bias.meta[shifted]["key_index"][0]
    row = with_bias[shifted][:, :, 0]
    assert (corner < 0).sum() == 40 and row[..., corner < 0].max() < 1e-20
    edge = with_bias.meta[plain]["key_index"][15 * 24 + 23]
    assert (edge < 0).any() and with_bias[plain][:, :, 15 * 24 + 23][..., edge < 0].sum(
        -1
    ).min() > 1e-3
    with pytest.raises(NotWritableError, match="reordered per image position"):  # (f)
        attnviz.intervene(model, {shifted: "uniform"})


# ------------------------------------------------------------------------------------- MaxViT
def _maxvit() -> MaxVit:
    """A two-block MaxViT on 96 x 96 (maps 24 x 24 and 12 x 12, partition size 4): the grid
    layers' blocks (6 and 3 positions) differ from the window layers' (4)."""
    torch.manual_seed(6)
    model = MaxVit(
        input_size=(96, 96),
        stem_channels=16,
        partition_size=4,
        block_channels=[16, 32],
        block_layers=[1, 1],
        head_dim=8,
        stochastic_depth_prob=0.0,
        num_classes=3,
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_(0, 1.0)
    return model.eval()


def _maxvit_reference(layer, x: Tensor) -> Tensor:
    """Dense weights (B, heads, HW, HW): MaxViT block attention among the p x p neighbours,
    grid attention among the positions spread H / g apart (g = partition size), each with
    softmax(q k^T * scale + B), B the table entry of the two positions' offset in the partition."""
    b, c, h, w = x.shape
    attn = layer.attn_layer[1]
    heads, d, size = attn.n_heads, attn.head_dim, attn.size
    t = layer.attn_layer[0](x.permute(0, 2, 3, 1).reshape(b, h * w, c))
    q, k, _ = (attn.to_qkv(t).view(b, h * w, 3, heads, d)).unbind(2)
    q, k = q.transpose(1, 2), k.transpose(1, 2) * attn.scale_factor
    yy, xx = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)
    if layer.partition_type == "window":  # neighbours: the same size x size block
        group, sy, sx = (yy // size) * w + xx // size, yy % size, xx % size
    else:  # dilated: positions h / size apart
        step = h // size
        group, sy, sx = (yy % step) * w + xx % step, yy // step, xx // step
    same = group[:, None] == group[None]
    dy, dx = sy[:, None] - sy[None], sx[:, None] - sx[None]
    table = attn.relative_position_bias_table
    bias = table[(dy + size - 1) * (2 * size - 1) + dx + size - 1].permute(2, 0, 1)
    return (q @ k.transpose(-1, -2) + bias).masked_fill(~same, float("-inf")).softmax(-1)


def test_maxvit_window_and_grid_partitions_equal_the_paper_formula_on_the_image():
    model = _maxvit()
    assert unread_modules(model) == {}
    sites = _sites(model, "PartitionAttentionLayer")
    assert sorted(m.partition_type for m in sites.values()) == ["grid", "grid", "window", "window"]
    x_img = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    inputs = _inputs(model, sites, x_img)
    first = [n for n in sites if inputs[n].shape[-1] == 24]
    with torch.no_grad():
        plain = model(x_img)
        with attnviz.capture(model, sites=list(sites)) as cache:
            out = model(x_img)
        with attnviz.capture(model, sites=first, queries=CELLS) as picked:
            model(x_img)
    assert torch.equal(out, plain)  # (a)
    for name, layer in sites.items():
        x = inputs[name]
        h, w = x.shape[-2:]
        meta, att = cache.meta[name], cache[name]
        assert meta["partition"] == layer.partition_type
        assert meta["query_grid"] == meta["key_grid"] == (h, w)
        assert att.shape == (2, layer.n_heads, h * w, 16)
        torch.testing.assert_close(att.sum(-1), torch.ones(att.shape[:-1]), rtol=0, atol=1e-5)
        # (c) slots against the module's own partition op on a position map
        pos = torch.arange(h * w, dtype=torch.float).view(1, 1, h, w)
        parts = layer.partition_swap(layer.partition_op(pos, layer.p))[0, :, :, 0].long()
        expected = torch.empty(h * w, parts.shape[1], dtype=torch.long)
        for part in parts:
            expected[part] = part
        assert torch.equal(meta["key_index"], expected)
        # (b) per head against the dense formula
        with torch.no_grad():
            ref = _maxvit_reference(layer, x)
        on_image = window_to_grid(att, meta["key_index"], (h, w)).flatten(-2)
        torch.testing.assert_close(on_image, ref, rtol=0, atol=2e-5)
        if name in first:  # (d)
            idx = torch.tensor([y * w + x_ for y, x_ in CELLS])
            torch.testing.assert_close(picked[name], att[:, :, idx], rtol=0, atol=0)
    # a grid partition of the 24 x 24 map: position (5, 17) sees (5 mod 6 + 6a, 17 mod 6 + 6b)
    grid = next(n for n in first if sites[n].partition_type == "grid")
    keys = cache.meta[grid]["key_index"][5 * 24 + 17]
    assert keys.tolist() == [(5 + 6 * a) * 24 + 5 + 6 * b for a in range(4) for b in range(4)]
    with pytest.raises(NotWritableError, match="reordered per image position"):  # (f)
        attnviz.intervene(model, {grid: "uniform"})


def test_swin_t_swin_v2_t_and_maxvit_t_leave_no_attention_module_unread():
    for build in (torchvision.models.swin_t, torchvision.models.swin_v2_t):
        model = build(weights=None).eval()
        assert unread_modules(model) == {}
        assert len([s for s in attnviz.find_sites(model) if s.kind == "window"]) == 12
    torch.manual_seed(7)
    model = torchvision.models.maxvit_t(weights=None).eval()
    assert unread_modules(model) == {}
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model(x)
        with attnviz.capture(model, kinds=["window"]) as cache:
            out = model(x)
    assert torch.equal(out, plain)
    assert len(cache) == 22  # 11 MaxViT layers, a window and a grid partition each
    for name in cache:
        assert cache[name].shape[-1] == 49  # 7 x 7 slots in both partitions
        torch.testing.assert_close(cache[name].sum(-1), torch.ones(cache[name].shape[:-1]))
