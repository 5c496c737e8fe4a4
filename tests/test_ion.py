"""Inside-Outside Net's context block (issue 24, item 4): the IRNN sweeps against loops written
from the paper's recurrence, the block against ION's concat + 1x1 conv, the direction shares
and sweep magnitudes read by capture against the block's own tensors, and the figure by its
artists. Non-square maps throughout (H != W catches a transposed sweep)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import attnviz
from attnviz.blocks import DIRECTIONS, IRNN, IONContext, create_attn
from attnviz.capture.intervene import NotWritableError
from attnviz.plot.modules import DIRECTION_COLOURS, plot_direction_context


def _randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (also the identity-initialised W_d and the zero V_d), batch
    norm with random running statistics, eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return module.eval()


def _sweeps_by_hand(irnn: IRNN, x: torch.Tensor) -> torch.Tensor:
    """h_d(p) = relu(W_d h_d(p - step_d) + u(p)) position by position, (B, 4, C, H, W)."""
    u = irnn.input(x)
    b, c, h, w = u.shape
    out = torch.zeros(b, 4, c, h, w)
    steps = {0: (0, -1), 1: (0, 1), 2: (-1, 0), 3: (1, 0)}  # where the previous state is
    orders = {
        0: [(y, xx) for y in range(h) for xx in range(w)],
        1: [(y, xx) for y in range(h) for xx in reversed(range(w))],
        2: [(y, xx) for y in range(h) for xx in range(w)],
        3: [(y, xx) for y in reversed(range(h)) for xx in range(w)],
    }
    for d in range(4):
        dy, dx = steps[d]
        for y, xx in orders[d]:
            py, px = y + dy, xx + dx
            prev = out[:, d, :, py, px] if 0 <= py < h and 0 <= px < w else torch.zeros(b, c)
            out[:, d, :, y, xx] = torch.relu(prev @ irnn.recurrent[d].T + u[:, :, y, xx])
    return out


def test_irnn_sweeps_equal_the_recurrence_position_by_position():
    irnn = _randomised(IRNN(3, 4))
    x = torch.randn(2, 3, 3, 5)
    with torch.no_grad():
        assert torch.allclose(irnn(x), _sweeps_by_hand(irnn, x), atol=1e-5)


def test_directions_are_named_by_where_the_context_comes_from():
    """An impulse at (1, 2) of a 3 x 5 map reaches, with W = I, the positions to its right
    in the from_left sweep, to its left in from_right, below it in from_above, above it in
    from_below."""
    irnn = IRNN(1, 1).eval()
    with torch.no_grad():
        irnn.input[0].weight.fill_(1.0)
    x = torch.zeros(1, 1, 3, 5)
    x[0, 0, 1, 2] = 1.0
    with torch.no_grad():
        h = irnn(x)[0, :, 0] > 0
    reached = {d: {tuple(p) for p in h[i].nonzero().tolist()} for i, d in enumerate(DIRECTIONS)}
    assert reached == {
        "from_left": {(1, 2), (1, 3), (1, 4)},
        "from_right": {(1, 0), (1, 1), (1, 2)},
        "from_above": {(1, 2), (2, 2)},
        "from_below": {(0, 2), (1, 2)},
    }


def test_block_is_ion_concat_and_1x1_conv_and_starts_as_the_identity():
    fresh = create_attn("ion", 6, hidden=4).eval()
    x = torch.randn(2, 6, 4, 7)
    with torch.no_grad():
        assert torch.equal(fresh(x), x)  # V_d = 0
        assert torch.equal(fresh.irnn1.recurrent[2], torch.eye(4))  # identity-initialised
    block = _randomised(IONContext(6, hidden=4))
    with torch.no_grad():
        h1 = _sweeps_by_hand(block.irnn1, x)
        h2 = _sweeps_by_hand(block.irnn2, h1.flatten(1, 2))  # concatenated directions
        v = block.terms.weight.permute(1, 0, 2).reshape(6, 16, 1, 1)  # [V_0 V_1 V_2 V_3]
        expected = x + F.conv2d(h2.flatten(1, 2), v)
        assert torch.allclose(block(x), expected, atol=1e-4)


def _model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return _randomised(
        torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), IONContext(6, hidden=4))
    )


def test_capture_reads_the_shares_and_magnitudes_the_block_used():
    model = _model()
    x = torch.randn(3, 3, 5, 8)
    with torch.no_grad():
        plain = model(x)
        with attnviz.capture(model) as cache:
            out = model(x)
        feats = model[0](x)
        block = model[1]
        h1 = _sweeps_by_hand(block.irnn1, feats)
        h2 = _sweeps_by_hand(block.irnn2, h1.flatten(1, 2))
        terms = torch.einsum("dch,bdhyx->bdcyx", block.terms.weight, h2)
    assert torch.equal(out, plain)
    sites = {s.alias: s for s in cache.sites}
    assert {s.kind for s in sites.values()} == {"ion", "ion_sweep"}
    shares = cache[sites["ION_1"].name]
    norms = torch.linalg.vector_norm(terms, dim=2)
    assert shares.shape == (3, 4, 5, 8)
    assert torch.allclose(shares, norms / norms.sum(1, keepdim=True), atol=1e-5)
    assert torch.allclose(shares.sum(1), torch.ones(3, 5, 8), atol=1e-6)
    first, second = cache["1.irnn1"], cache["1.irnn2"]
    assert torch.allclose(first, torch.linalg.vector_norm(h1, dim=2), atol=1e-4)
    assert torch.allclose(second, torch.linalg.vector_norm(h2, dim=2), atol=1e-4)


def test_no_context_gives_an_equal_split():
    model = _model()
    with torch.no_grad():
        model[1].terms.weight.zero_()
        with attnviz.capture(model, kinds=["ion"]) as cache:
            model(torch.randn(1, 3, 4, 6))
    assert torch.equal(cache["1"], torch.full((1, 4, 4, 6), 0.25))


def test_ion_sites_say_why_they_cannot_be_written():
    model = _model()
    with pytest.raises(NotWritableError, match="applies no weight"):
        attnviz.intervene(model, {"1": "uniform"})
    with pytest.raises(NotWritableError, match="sweep's memory"):
        attnviz.intervene(model, {"1.irnn2": "uniform"})


def test_direction_figure_shows_the_largest_share_and_four_panels():
    shares = torch.zeros(2, 4, 3, 5)
    shares[:, 0, :, :2] = 0.7  # left columns: from the left dominates
    shares[:, 3, :, 2:] = 0.7  # the rest: from below
    shares += (1 - shares.sum(1, keepdim=True)) / 4
    images = torch.rand(2, 3, 30, 50)
    fig = plot_direction_context(images, shares, model="m", site="ION_3_2")
    try:
        axes = fig.axes
        grid = [ax for ax in axes if ax.get_label() != "<colorbar>"]
        assert len(grid) == 2 * 6
        assert [ax.get_title() for ax in grid[:6]] == [
            "image",
            "largest share",
            "from the left",
            "from the right",
            "from above",
            "from below",
        ]
        dominant = grid[1].images[1].get_array()
        assert dominant.shape == (30, 50)  # upsampled to the image, height first
        assert set(np.unique(dominant[:, :15])) == {0} and set(np.unique(dominant[:, 25:])) == {3}
        left_panel = grid[2].images[1]
        assert left_panel.norm.vmin == 0.0 and left_panel.norm.vmax == 0.8  # largest share 0.775
        assert np.isclose(left_panel.get_array()[0, 0], 0.7 + 0.3 / 4 - 0.0, atol=1e-6)
        bars = [ax for ax in axes if ax.get_label() == "<colorbar>"]
        assert len(bars) == 1 and bars[0].get_ylabel() == "share of the context"
        legend = fig.legends[0]
        assert [t.get_text() for t in legend.get_texts()] == [
            "from the left",
            "from the right",
            "from above",
            "from below",
        ]
        colours = [matplotlib.colors.to_hex(h.get_facecolor()) for h in legend.legend_handles]
        assert colours == [c.lower() for c in DIRECTION_COLOURS]
        assert "ION_3_2" in fig._suptitle.get_text() and "not a gate" in fig._suptitle.get_text()
    finally:
        plt.close(fig)


def test_direction_figure_rejects_a_wrong_shape():
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        plot_direction_context(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 2, 2))
