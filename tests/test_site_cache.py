"""Site discovery is cached per model and invalidated when its modules or the registries
change, so capture / intervene entered once per image stay cheap but never stale."""

from __future__ import annotations

import torch
from torch import nn

import attnviz
from attnviz.blocks import SEBlock
from attnviz.capture.core import _SCANS, clear_site_cache, select_sites


def _names(model):
    return [s.name for s, _, _ in select_sites(model)]


def test_cache_reused_and_invalidated_by_module_changes():
    model, _ = attnviz.load_model("se_tiny")
    first = select_sites(model)
    assert model in _SCANS
    again = select_sites(model)
    assert [m for _, m, _ in again] == [m for _, m, _ in first]  # the same modules
    model.layer1[0].attn = nn.Identity()  # a site replaced: seen
    assert "layer1.0.attn" not in _names(model)
    model.layer1[0].attn = SEBlock(16)  # and put back (a new module)
    sites = select_sites(model)
    assert sites[0][1] is model.layer1[0].attn
    with attnviz.capture(model, sites="SE_2_1") as cache:
        model(torch.randn(1, 3, 64, 64))
    assert cache["SE_2_1"].shape == (1, 16)


def test_cache_invalidated_by_a_new_adapter_and_cleared_on_request():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = nn.Sigmoid()

        def forward(self, x):
            return x * self.gate(x.mean((2, 3), keepdim=True))

    model = nn.Sequential(nn.Conv2d(3, 4, 1), Gate(), SEBlock(4))
    assert _names(model) == ["2"]
    attnviz.register_adapter(Gate, kind="se", read="gate")
    try:
        assert _names(model) == ["1", "2"]
    finally:
        from attnviz.capture import unregister_adapter

        unregister_adapter(Gate)
    assert _names(model) == ["2"]
    clear_site_cache()
    assert model not in _SCANS
