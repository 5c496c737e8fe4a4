"""Capture's error messages, dtypes and metadata at their edges. Written to kill the mutants
that survived the first mutation run (see TESTING.md)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnviz
from attnviz.blocks import NonLocalBlock, SEBlock


def _nl() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), NonLocalBlock(4)).eval()


def test_unknown_cache_key_names_what_was_captured():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), SEBlock(8)).eval()
    with attnviz.capture(model) as cache, torch.no_grad():
        model(torch.rand(1, 3, 4, 4))
    with pytest.raises(KeyError, match=r"no attention captured for 'nope'; captured: \['1'\]"):
        cache["nope"]


def test_cache_is_float32_whatever_the_model_runs_in():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), SEBlock(8)).double().eval()
    with attnviz.capture(model) as cache, torch.no_grad():
        model(torch.rand(2, 3, 4, 4, dtype=torch.float64))
    assert cache["1"].dtype == torch.float32 and cache["1"].shape == (2, 8)


@pytest.mark.parametrize(
    "queries, message",
    [
        ([], r"^queries must be a non-empty sequence of \(y, x\) grid cells$"),
        ("ab", r"^queries must be a non-empty sequence of \(y, x\) grid cells$"),
        ([5], r"queries must be a non-empty sequence of \(y, x\) grid cells, got 5 among them"),
        ([(1.5, 2)], r"query cell \(1.5, 2\): coordinates must be whole grid cells .* round or "
                     r"floor them yourself"),
        ([(1, 2.5)], r"query cell \(1, 2.5\): coordinates must be whole grid cells"),
    ],
)  # fmt: skip
def test_query_validation_messages(queries, message):
    with pytest.raises(ValueError, match=message):
        attnviz.capture(_nl(), queries=queries)


def test_query_rows_and_their_metadata():
    model = _nl()
    x = torch.randn(1, 3, 10, 14)  # a 5x7 query grid
    with attnviz.capture(model, queries=[(4, 6), (0, 1)]) as cache, torch.no_grad():
        model(x)
    meta = cache.meta["1"]
    assert meta["query_index"].tolist() == [4 * 7 + 6, 1]
    assert meta["queries"] == [(4, 6), (0, 1)] and tuple(meta["query_grid"]) == (5, 7)
    msg = r"outside the 5x7 query grid .*valid cells are y in \[0, 4\], x in \[0, 6\]"
    with pytest.raises(ValueError, match=msg):
        with attnviz.capture(model, queries=[(5, 0)]), torch.no_grad():
            model(x)


class _Pair(nn.Module):
    def forward(self, x):
        return x.mean(1), x.amax(1)  # a submodule whose output is a tuple


class _TupleTapGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.pair = _Pair()

    def forward(self, x):
        mean, top = self.pair(x)
        return x * torch.sigmoid(mean + top)[:, None]


def test_a_tap_whose_output_is_a_tuple():
    from attnviz.capture import Computed, Reading, register_adapter, unregister_adapter

    register_adapter(
        _TupleTapGate,
        kind="sse",
        read=Computed(
            taps=("pair",),
            compute=lambda m, taps, i, o, rows: Reading(torch.sigmoid(sum(taps["pair"]))),
        ),
    )
    try:
        model = _TupleTapGate()
        x = torch.randn(2, 3, 4, 5)
        with attnviz.capture(model) as cache, torch.no_grad():
            model(x)
        ref = torch.sigmoid(x.mean(1) + x.amax(1))
        torch.testing.assert_close(cache[""], ref)
    finally:
        unregister_adapter(_TupleTapGate)
