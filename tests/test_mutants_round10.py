"""Tests for the survivor of the tenth held-out round of the sampled mutation run (capture
only; TESTING.md, "Whole package by sampling"): where the interception of a site's torch calls
begins, relative to the module's other forward pre-hooks."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import attnviz
from attnviz.capture import Intercepted, Reading, register_adapter, unregister_adapter
from attnviz.capture.registry import Written


class PositionSoftmax(nn.Module):
    """GC-style pooling: one softmax over positions in its forward, the attention."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.logits = nn.Conv2d(c, 1, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        p = self.logits(x).reshape(b, h * w).softmax(-1)
        return x + (x.reshape(b, c, -1) * p[:, None]).sum(-1)[:, :, None, None]


def _first_softmax(m, taps, inputs, out, rows):
    x = inputs[0]
    return Reading(taps["softmax()"][0].reshape(x.shape[0], 1, *x.shape[-2:]))


def _as_map(m, raw, inputs):
    x = inputs[0]
    return raw.reshape(x.shape[0], *x.shape[-2:])


@contextlib.contextmanager
def position_softmax_adapter():
    """PositionSoftmax read and written at its one softmax call, for the block."""
    register_adapter(
        PositionSoftmax,
        kind="gc",
        read=Intercepted(("softmax",), _first_softmax),
        write=Written("softmax()", view=_as_map),
    )
    try:
        yield
    finally:
        unregister_adapter(PositionSoftmax)


@pytest.fixture()
def adapter():
    with position_softmax_adapter():
        yield


def _by_hand(block: PositionSoftmax, x: torch.Tensor) -> torch.Tensor:
    b, _, h, w = x.shape
    return block.logits(x).reshape(b, h * w).softmax(-1).reshape(b, h, w)


def test_a_users_pre_hook_that_calls_softmax_is_not_the_modules_attention(adapter):
    """The site's calls are intercepted from the module's forward on, not from the first of
    its pre-hooks: a softmax in a pre-hook the user registered before is neither read as the
    attention nor counted as a second call by an intervention."""
    torch.manual_seed(0)
    block = PositionSoftmax(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), block).eval()
    block.register_forward_pre_hook(lambda m, inp: (inp[0] * torch.softmax(inp[0], dim=1),))
    x = torch.randn(2, 3, 5, 7)
    with torch.no_grad():
        feat = model[0](x)
        used = feat * torch.softmax(feat, dim=1)
        with attnviz.capture(model) as cache:
            y = model(x)
        (name,) = list(cache)
        torch.testing.assert_close(cache[name], _by_hand(block, used))
        with attnviz.intervene(model, {"all": "uniform"}):
            y_uniform = model(x)
    b, c = used.shape[:2]
    want = used + used.reshape(b, c, -1).mean(-1)[:, :, None, None]
    torch.testing.assert_close(y_uniform, want)
    assert not torch.allclose(y, want)
