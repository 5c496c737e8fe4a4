"""SwiftFormer's efficient additive attention read exactly (issue 24): the token scores alpha
against a hand computation of Eq. 4 from the module's own weights, the module's output rebuilt
from the captured alpha (Eq. 5), on a non-square map; nothing left unread in the model."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.swiftformer import EfficientAdditiveAttention

import attnviz
from attnviz.capture import NotWritableError
from attnviz.capture.core import unread_modules


def _module() -> EfficientAdditiveAttention:
    torch.manual_seed(0)
    return EfficientAdditiveAttention(in_dims=8, token_dim=6).eval()


def test_scores_equal_eq4_and_rebuild_the_output_on_a_non_square_map():
    m = _module()
    x = torch.randn(2, 8, 3, 5)
    with torch.no_grad():
        plain = m(x)
        with attnviz.capture(m) as cache:
            out = m(x)
        tokens = x.flatten(2).transpose(1, 2)  # (B, 15, 8), raster order
        q = F.normalize(m.to_query(tokens), dim=-1)
        k = F.normalize(m.to_key(tokens), dim=-1)
        logits = (q @ m.w_g)[..., 0] * m.scale_factor  # (B, 15)
        alpha = logits / logits.norm(dim=1, keepdim=True)
    assert torch.equal(out, plain)
    (site,) = cache.sites
    assert site.kind == "additive"
    got = cache[site.name]
    assert got.shape == (2, 3, 5)
    torch.testing.assert_close(got, alpha.reshape(2, 3, 5), rtol=0, atol=1e-6)
    torch.testing.assert_close(got.pow(2).sum((1, 2)), torch.ones(2), rtol=0, atol=1e-6)
    with torch.no_grad():  # Eq. 5 from the captured scores: g = sum alpha_i q_i
        g = (got.reshape(2, 15, 1) * q).sum(1, keepdim=True)
        rebuilt = m.final(m.proj(g * k) + q).transpose(1, 2).reshape(2, 6, 3, 5)
    torch.testing.assert_close(rebuilt, plain, rtol=0, atol=1e-5)


def test_scores_are_not_writable_and_the_model_has_no_unread_module():
    m = _module()
    with pytest.raises(NotWritableError, match="three normalize calls"):
        attnviz.intervene(m, {"": "uniform"})
    model = timm.create_model("swiftformer_xs", pretrained=False, device="meta")
    assert unread_modules(model) == {}
