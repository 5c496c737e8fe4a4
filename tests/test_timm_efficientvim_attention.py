"""EfficientViM HSM-SSD state weights read exactly (issue 24): ``HSMSSD`` (kind ``ssd``, a softmax
over positions per hidden state), against a hand computation of a = softmax(dt + A) from the
module's own B/C/dt projection, the module output rebuilt from the captured weights, on a
non-square map; rows summing to 1 and writing."""

from __future__ import annotations

import pytest
import timm
import torch

import attnviz
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 128, 192, generator=torch.Generator().manual_seed(0))  # maps 8 x 12, ...


@pytest.fixture(scope="module")
def vim():
    torch.manual_seed(71)
    return timm.create_model("efficientvim_m1", pretrained=False, num_classes=3).eval()


def _names(model):
    return [n for n, m in model.named_modules() if type(m).__name__ == "HSMSSD"]


def _record(model, policies=None):
    seen, hooks = {}, []
    for n in _names(model):
        m = model.get_submodule(n)
        hooks.append(m.dw.register_forward_hook(lambda mod, i, o, n=n: seen.update({n + "dw": o})))
        hooks.append(m.register_forward_hook(lambda mod, i, o, n=n: seen.update({n: (i[0], o)})))
    try:
        with torch.no_grad():
            if policies is None:
                with attnviz.capture(model, sites=_names(model)) as cache:
                    out = model(X)
                return cache, seen, out
            with attnviz.intervene(model, policies):
                model(X)
            return None, seen, None
    finally:
        for h in hooks:
            h.remove()


def _output(m, x, a, bcdt):
    """HSMSSD eq. 5-7 from state weights a (B, S, L): h = x (a b)^T, gated mix, y = h' c."""
    b_, c_, _ = torch.split(bcdt.flatten(2), [m.state_dim] * 3, dim=1)
    h = x.flatten(2) @ (a * b_).transpose(-2, -1)
    h, z = torch.split(m.hz_proj(h), [m.d_inner, m.d_inner], dim=1)
    h = m.out_proj(h * m.act(z) + h * m.D)
    return (h @ c_).reshape(x.shape[0], -1, *x.shape[2:]), h


def test_hsmssd_state_weights_equal_hand_computation_and_rebuild_the_output(vim):
    assert unread_modules(vim) == {}
    with torch.no_grad():
        plain = vim(X)
    cache, seen, out = _record(vim)
    assert torch.equal(out, plain)
    grids = []
    for n in _names(vim):
        m = vim.get_submodule(n)
        x, (y, h) = seen[n]
        att = cache[n]
        b, _, hh, ww = x.shape
        assert att.shape == (b, m.state_dim, hh, ww)
        with torch.no_grad():
            dt = seen[n + "dw"].flatten(2)[:, 2 * m.state_dim :]
            ref = (dt + m.A.view(1, -1, 1)).softmax(-1).view_as(att)
            rebuilt, h_rebuilt = _output(m, x, att.flatten(2), seen[n + "dw"])
        torch.testing.assert_close(att, ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(att.sum((-2, -1)), torch.ones(att.shape[:2]), rtol=0, atol=1e-5)
        torch.testing.assert_close(rebuilt, y, rtol=0, atol=1e-5)
        torch.testing.assert_close(h_rebuilt, h, rtol=0, atol=1e-5)
        grids.append((hh, ww))
    assert grids[0] == (8, 12) and grids[-1] == (2, 3)


def test_hsmssd_uniform_pools_b_evenly(vim):
    name = _names(vim)[0]
    m = vim.get_submodule(name)
    _, seen, _ = _record(vim, {name: "uniform"})
    x, (y, _) = seen[name]
    with torch.no_grad():
        a = torch.full((x.shape[0], m.state_dim, x.shape[2] * x.shape[3]), 1 / (8 * 12))
        expected, _ = _output(m, x, a, seen[name + "dw"])
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-5)
    with torch.no_grad():  # and it changed the output
        unchanged, _ = _output(
            m,
            x,
            (seen[name + "dw"].flatten(2)[:, 2 * m.state_dim :] + m.A.view(1, -1, 1)).softmax(-1),
            seen[name + "dw"],
        )
    assert not torch.allclose(unchanged, y, atol=1e-4)
