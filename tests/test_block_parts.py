"""The reference blocks' public parts (``attnviz.blocks.__all__``) on their own, each against
an independent hand computation from its parameters, on non-square maps: CBAM's ChannelGate
(Eq. 2) and SpatialGate (Eq. 3), GCNet's SpatialSoftmax, ION's DirectionalTerms and the
Non-local NonLocalAffinity of every instantiation (Eq. 2-5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnviz.blocks import (
    NL_MODES,
    ChannelGate,
    DirectionalTerms,
    NonLocalAffinity,
    SpatialGate,
    SpatialSoftmax,
)

G = torch.Generator().manual_seed(5)
X = torch.randn(2, 16, 3, 5, generator=G, dtype=torch.float64)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def _randomised(module: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(6)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
    return module.double().eval()


def test_channel_gate_is_sigmoid_of_the_shared_mlp_of_mean_and_max():
    gate = _randomised(ChannelGate(16, reduction=4, min_hidden=2))
    w1 = gate.fc1.weight[:, :, 0, 0].detach().numpy()
    b1 = gate.fc1.bias.detach().numpy()
    w2 = gate.fc2.weight[:, :, 0, 0].detach().numpy()
    b2 = gate.fc2.bias.detach().numpy()
    x = X.numpy()

    def mlp(v):  # v: (B, C)
        return np.maximum(v @ w1.T + b1, 0) @ w2.T + b2

    m_c = _sigmoid(mlp(x.mean((2, 3))) + mlp(x.max((2, 3))))  # (B, C)
    seen = []
    gate.gate.register_forward_hook(lambda m, a, o: seen.append(o))
    with torch.no_grad():
        out = gate(X).numpy()
    np.testing.assert_allclose(seen[0][:, :, 0, 0].numpy(), m_c, rtol=1e-12)
    np.testing.assert_allclose(out, x * m_c[:, :, None, None], rtol=1e-12)


def test_spatial_gate_is_sigmoid_of_bn_of_the_conv_of_mean_then_max():
    gate = _randomised(SpatialGate(kernel_size=3))
    with torch.no_grad():
        gate.bn.running_mean.fill_(0.3)
        gate.bn.running_var.fill_(2.0)
    x = X.numpy()
    pooled = np.stack([x.mean(1), x.max(1)], 1)  # (B, 2, H, W): mean first, as the paper
    k = gate.conv.weight.detach().numpy()[0]  # (2, 3, 3)
    padded = np.pad(pooled, ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = np.zeros((2, 3, 5))
    for y in range(3):
        for xx in range(5):
            conv[:, y, xx] = (padded[:, :, y : y + 3, xx : xx + 3] * k).sum((1, 2, 3))
    gamma, beta = gate.bn.weight.item(), gate.bn.bias.item()
    bn = (conv - 0.3) / np.sqrt(2.0 + gate.bn.eps) * gamma + beta
    m_s = _sigmoid(bn)  # (B, H, W)
    with torch.no_grad():
        out = gate(X).numpy()
    np.testing.assert_allclose(out, x * m_s[:, None], rtol=1e-10)


def test_spatial_softmax_normalises_over_all_positions_of_each_channel():
    logits = torch.randn(2, 2, 3, 5, generator=G, dtype=torch.float64)
    got = SpatialSoftmax()(logits).numpy()
    e = np.exp(logits.numpy())
    want = e / e.sum((2, 3), keepdims=True)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got.shape == (2, 2, 3, 5)


def test_directional_terms_are_each_directions_part_of_the_output_conv():
    terms = _randomised(DirectionalTerms(hidden=3, channels=4))
    h = torch.randn(2, 4, 3, 2, 5, generator=G, dtype=torch.float64)  # (B, 4, hidden, H, W)
    with torch.no_grad():
        got = terms(h).numpy()  # (B, 4, C, H, W)
    v, hn = terms.weight.detach().numpy(), h.numpy()
    for d in range(4):
        want = np.einsum("ch,bhyx->bcyx", v[d], hn[:, d])
        np.testing.assert_allclose(got[:, d], want, rtol=1e-12)
    # summed over directions: the bias-free 1x1 conv of the concatenated directions
    conv = np.concatenate(list(v), axis=1)  # (C, 4 * hidden)
    concat = hn.reshape(2, 12, 2, 5)
    np.testing.assert_allclose(got.sum(1), np.einsum("ck,bkyx->bcyx", conv, concat), rtol=1e-12)


@pytest.mark.parametrize("mode", NL_MODES)
def test_non_local_affinity_of_each_instantiation(mode):
    affinity = _randomised(NonLocalAffinity(mode, inter_channels=3))
    theta = torch.randn(2, 6, 3, generator=G, dtype=torch.float64)  # (B, N, C')
    phi = torch.randn(2, 3, 4, generator=G, dtype=torch.float64)  # (B, C', Nk): Nk != N
    with torch.no_grad():
        got = affinity(theta, phi).numpy()
    t, p = theta.numpy(), phi.numpy()
    f = np.einsum("bnc,bck->bnk", t, p)
    if mode in ("gaussian", "embedded_gaussian"):
        want = np.exp(f) / np.exp(f).sum(-1, keepdims=True)  # Eq. 2-3
    elif mode == "dot_product":
        want = f / 4  # Eq. 4: C(x) = Nk
    else:
        w = affinity.project.weight.detach().numpy()[0]  # (2 C')
        pair = np.concatenate(
            [np.broadcast_to(t[:, :, None, :], (2, 6, 4, 3)),
             np.broadcast_to(p.transpose(0, 2, 1)[:, None], (2, 6, 4, 3))],
            axis=-1,
        )  # fmt: skip
        want = np.maximum(pair @ w, 0) / 4  # Eq. 5: ReLU(w^T [theta_i; phi_j]) / Nk
    assert got.shape == (2, 6, 4)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert (affinity.project is None) == (mode != "concatenation")
    with pytest.raises(ValueError, match="unknown non-local mode 'cosine'"):
        NonLocalAffinity("cosine", 3)
