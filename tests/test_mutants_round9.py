"""Tests for the survivors of the ninth held-out round of the sampled mutation run (capture
only; TESTING.md, "Whole package by sampling"): the entropy reduction of a spatial map that is
not a GC site, and the branch policy's refusal read whole."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnviz


def test_the_entropy_of_a_spatial_map_is_taken_over_the_whole_map():
    """A CBAM spatial map (B, H, W): one entropy per map over all H * W values, not one per
    row (only a GC site was the other case of the rule)."""
    from attnviz.blocks import CBAM

    torch.manual_seed(0)
    model = nn.Sequential(CBAM(16)).eval()
    x = torch.randn(2, 16, 3, 5)
    with torch.no_grad(), attnviz.capture(model, kinds="cbam_spatial") as full:
        model(x)
    with torch.no_grad(), attnviz.capture(model, kinds="cbam_spatial", reduce="entropy") as red:
        model(x)
    (name,) = list(full)
    assert full.site(name).dims[-2:] == ("height", "width") and full.site(name).kind != "gc"
    p = full[name].reshape(2, -1).double()
    torch.testing.assert_close(red[name].double(), -(p * p.clamp_min(1e-30).log()).sum(-1))


def test_the_branch_policy_names_the_sites_branch_count():
    from attnviz.capture.kinds import get_kind
    from attnviz.capture.policies import PolicyContext, PolicyError, get_policy
    from attnviz.capture.site import Site

    site = Site(name="conv", kind="sk", alias="SK_3_1", dims=("batch", "branch", "channel"),
                module_type="x.SK", family="attnviz")  # fmt: skip
    att = torch.full((1, 2, 8), 0.5)
    with pytest.raises(PolicyError) as err:
        get_policy("branch:2").apply(att, PolicyContext(site, get_kind("sk")))
    assert str(err.value) == "policy 'branch:2': site SK_3_1 has 2 branches"
    out = get_policy("branch:1").apply(att, PolicyContext(site, get_kind("sk")))
    assert out[:, 1].eq(1).all() and out[:, 0].eq(0).all()
