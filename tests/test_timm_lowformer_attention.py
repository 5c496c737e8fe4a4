"""LowFormer conv attention read exactly (issue 24): attention over the map reduced by a strided
depthwise conv, fused and not, on a non-square input with odd maps, proven against a hand
computation from the module's own q, k projection, and written (uniform weights) against a
hand computation."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from conv_attention_testing import check_reads, check_uniform_write

import attnviz
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 112, 176, generator=torch.Generator().manual_seed(0))  # stage 3: 7 x 11


def _model():
    torch.manual_seed(13)
    return timm.create_model("lowformer_b0", pretrained=False, num_classes=3).eval()


@pytest.mark.parametrize("fused", [True, False])
def test_lowformer_conv_attention_equals_a_hand_computation(fused):
    model = _model()
    assert unread_modules(model) == {}
    grids = check_reads(model, X, fused)
    # stage 3: 7 x 11, kernel 5 stride 2 pad 2 -> 4 x 6; stage 4: 4 x 6, kernel 3 stride 1
    assert set(grids.values()) == {(4, 6)} and len(grids) == 7
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert {s.kind for s in attnviz.find_sites(model)} == {"token"}


def test_lowformer_conv_attention_writes_its_softmax():
    model = _model()
    check_uniform_write(model, X, "stages.2.1.attn.main.1")
    with pytest.raises(Exception, match="fused"):
        with torch.no_grad(), attnviz.intervene(model, {"stages.2.1.attn.main.1": "uniform"}):
            model(X)
