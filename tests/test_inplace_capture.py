"""Modules that change their attention in place after the gate: the cache keeps what was used.

References are the gates recomputed from each module's own weights (sigmoid(W z + b)), not
read back through capture.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnviz
from attnviz.capture import Intercepted, Reading, register_adapter, unregister_adapter


class Gate(nn.Module):
    """An SE-style gate whose output (B, C, 1, 1) *is* the attention (read "")."""

    def __init__(self, c: int):
        super().__init__()
        self.fc = nn.Linear(c, c)

    def forward(self, x):
        return torch.sigmoid(self.fc(x.mean((2, 3))))[:, :, None, None]


class ScaleAfterGate(nn.Module):
    """Uses the gate, then changes it in place (as blocks do with ``x += shortcut``)."""

    def __init__(self, c: int):
        super().__init__()
        self.se = Gate(c)

    def forward(self, x):
        a = self.se(x)
        y = x * a
        a.mul_(0.25).add_(3.0)  # the attention tensor the cache saw is changed afterwards
        return y


class MutatesItsGate(nn.Module):
    """The gate submodule's output is changed in place inside the site's own forward."""

    def __init__(self, c: int):
        super().__init__()
        self.fc = nn.Linear(c, c)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        g = self.gate(self.fc(x.mean((2, 3))))
        y = x * g[:, :, None, None]
        g.zero_()
        return y


class MutatesItsSoftmax(nn.Module):
    """A functional softmax over positions whose output is changed in place afterwards."""

    def __init__(self, c: int):
        super().__init__()
        self.logits = nn.Conv2d(c, 1, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        p = self.logits(x).reshape(b, h * w).softmax(-1)
        y = x + (x.reshape(b, c, -1) * p[:, None]).sum(-1)[:, :, None, None]
        p.mul_(2.0)
        return y


@pytest.fixture()
def adapters():
    register_adapter(Gate, kind="se", read="")
    register_adapter(MutatesItsGate, kind="se", read="gate")
    register_adapter(
        MutatesItsSoftmax,
        kind="gc",
        read=Intercepted(
            ("softmax",),
            lambda m, taps, inputs, out, rows: Reading(
                taps["softmax()"][-1].reshape(inputs[0].shape[0], 1, *inputs[0].shape[-2:])
            ),
        ),
    )
    yield
    for cls in (Gate, MutatesItsGate, MutatesItsSoftmax):
        unregister_adapter(cls)


def _gate_by_hand(fc: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    z = x.double().mean((2, 3))
    return torch.sigmoid(z @ fc.weight.double().T + fc.bias.double()).float()


def test_attention_changed_after_the_site_keeps_the_used_values(adapters):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), ScaleAfterGate(6)).eval()
    x = torch.randn(2, 3, 7, 9)
    with attnviz.capture(model) as cache, torch.no_grad():
        model(x)
        feat = model[0](x)
    (att,) = cache.values()
    torch.testing.assert_close(att, _gate_by_hand(model[1].se.fc, feat), atol=1e-6, rtol=0)
    assert att.max() < 1.0  # not the changed 0.25 * a + 3


def test_a_second_forward_does_not_change_the_first_capture(adapters):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), ScaleAfterGate(6)).eval()
    x1, x2 = torch.randn(1, 3, 5, 5), torch.randn(1, 3, 5, 5)
    with attnviz.capture(model) as cache, torch.no_grad():
        model(x1)
        first = cache[next(iter(cache))].clone()
        model(x2)
        f1 = model[0](x1)
    stacked = cache[next(iter(cache))]
    assert stacked.shape == (2, 6)
    torch.testing.assert_close(stacked[0], first[0])
    torch.testing.assert_close(stacked[0], _gate_by_hand(model[1].se.fc, f1)[0], atol=1e-6, rtol=0)


def test_gate_changed_inside_the_site_is_read_as_used(adapters):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), MutatesItsGate(5)).eval()
    x = torch.randn(3, 3, 6, 4)
    with attnviz.capture(model) as cache, torch.no_grad():
        model(x)
        feat = model[0](x)
    (att,) = cache.values()
    torch.testing.assert_close(att, _gate_by_hand(model[1].fc, feat), atol=1e-6, rtol=0)
    assert (att > 0).all()


def test_intercepted_output_changed_in_place_is_refused_not_misread(adapters):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), MutatesItsSoftmax(4)).eval()
    message = (
        r"the output of softmax\(\) was modified in place later in the forward, so the "
        r"attention the module used can no longer be read; use an adapter that reads it "
        r"before the change \(a submodule tap is copied when it runs\)"
    )
    with pytest.raises(RuntimeError, match=message):
        with attnviz.capture(model), torch.no_grad():
            model(torch.randn(1, 3, 5, 6))
    # the hooks are gone after the error
    assert not model[1]._forward_hooks and not model[1]._forward_pre_hooks


def test_cache_shares_no_memory_with_the_site_output(adapters):
    """The attention read from the module's own output ("") is a copy, not a view."""
    torch.manual_seed(0)
    gate = Gate(4).eval()
    x = torch.randn(2, 4, 3, 3)
    with attnviz.capture(gate) as cache, torch.no_grad():
        out = gate(x)
    (att,) = cache.values()
    assert att.untyped_storage().data_ptr() != out.untyped_storage().data_ptr()
    out.fill_(7.0)
    assert att.max() < 1.0
