"""SAGAN, DANet, scSE, BAM, residual attention and STN blocks against hand computations of
their equations (naive loops and explicit formulas in float64, on tiny tensors)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnviz.blocks import (
    ATTN_BLOCKS,
    BAM,
    SCSE,
    ChannelAttention,
    ChannelSE,
    DualAttention,
    PositionAttention,
    ResidualAttention,
    SelfAttention2d,
    SpatialSE,
    SpatialTransformer,
    create_attn,
)


@pytest.fixture(autouse=True, scope="module")
def _float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def conv1x1(conv: nn.Conv2d, x: np.ndarray) -> np.ndarray:
    """y[o, p] = sum_c W[o, c] x[c, p] + b[o] for one image x (C, N)."""
    w = conv.weight.detach().numpy()[:, :, 0, 0]
    b = conv.bias.detach().numpy()
    return w @ x + b[:, None]


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random parameters and BN statistics (so zero-initialised scales do not hide terms)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return module.eval()


def softmax_row(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max())
    return e / e.sum()


@pytest.mark.parametrize("cls", [SelfAttention2d, PositionAttention])
def test_position_self_attention_matches_loops(cls):
    """SAGAN Eq. 1-3 / DANet Eq. 1-2: y_i = s * sum_j softmax_j(f_i . g_j) h_j + x_i."""
    m = randomise(cls(16))
    assert m.key_channels == 2
    x = torch.randn(2, 16, 3, 4)
    y = m(x).detach().numpy()
    scale = float((m.gamma if cls is SelfAttention2d else m.alpha).detach()[0])
    assert scale != 0
    for b in range(2):
        xb = x[b].reshape(16, 12).numpy()
        f, g, h = conv1x1(m.query, xb), conv1x1(m.key, xb), conv1x1(m.value, xb)
        for i in range(12):
            s = np.array([sum(f[c, i] * g[c, j] for c in range(2)) for j in range(12)])
            beta = softmax_row(s)
            o = sum(beta[j] * h[:, j] for j in range(12))
            np.testing.assert_allclose(y[b].reshape(16, 12)[:, i], scale * o + xb[:, i], atol=1e-10)


def test_self_attention_starts_as_identity():
    m = SelfAttention2d(16).float()
    x = torch.randn(1, 16, 4, 4, dtype=torch.float32)
    assert float(m.gamma.detach()) == 0.0
    assert torch.equal(m(x), x)
    assert float(PositionAttention(16).alpha.detach()) == 0.0
    assert float(ChannelAttention(8).beta.detach()) == 0.0


@pytest.mark.parametrize("energy", ["max_minus", "plain"])
def test_channel_attention_matches_loops(energy):
    """DANet Eq. 3-4; ``max_minus`` is the official code's softmax(max_k e_jk - e_ji)."""
    m = ChannelAttention(5, energy=energy)
    with torch.no_grad():
        m.beta.fill_(0.8)
    x = torch.randn(2, 5, 3, 3) * 0.5
    y = m(x).detach().numpy()
    for b in range(2):
        a = x[b].reshape(5, 9).numpy()
        for j in range(5):
            e = np.array([sum(a[j, p] * a[i, p] for p in range(9)) for i in range(5)])
            if energy == "max_minus":
                e = e.max() - e
            w = softmax_row(e)
            want = 0.8 * sum(w[i] * a[i] for i in range(5)) + a[j]
            np.testing.assert_allclose(y[b].reshape(5, 9)[j], want, atol=1e-10)


def test_channel_attention_rejects_unknown_energy():
    with pytest.raises(ValueError, match="max_minus"):
        ChannelAttention(4, energy="exp")


def test_dual_attention_sums_both_residual_terms():
    m = randomise(DualAttention(16))
    x = torch.randn(1, 16, 3, 3)
    want = x + m.position.alpha * m.position.attend(x) + m.channel.beta * m.channel.attend(x)
    torch.testing.assert_close(m(x), want)


def test_cse_sse_match_formulas():
    """cSE: x_c * sigmoid(W2 relu(W1 mean(x)))_c; sSE: x * sigmoid(w . x_ij + b)."""
    cse, sse = randomise(ChannelSE(6)), randomise(SpatialSE(6))
    assert cse.fc1.out_channels == 3  # r = 2 in Roy et al.
    x = torch.randn(2, 6, 3, 3)
    yc, ys = cse(x).detach().numpy(), sse(x).detach().numpy()
    for b in range(2):
        xb = x[b].reshape(6, 9).numpy()
        z = xb.mean(axis=1, keepdims=True)
        hidden = np.maximum(conv1x1(cse.fc1, z), 0)
        gate = 1 / (1 + np.exp(-conv1x1(cse.fc2, hidden)))
        np.testing.assert_allclose(yc[b].reshape(6, 9), xb * gate, atol=1e-12)
        q = 1 / (1 + np.exp(-conv1x1(sse.squeeze, xb)))  # (1, 9)
        np.testing.assert_allclose(ys[b].reshape(6, 9), xb * q, atol=1e-12)


@pytest.mark.parametrize("fusion", ["add", "max"])
def test_scse_fusion(fusion):
    m = randomise(SCSE(6, fusion=fusion))
    x = torch.randn(2, 6, 4, 4)
    c, s = m.cse(x), m.sse(x)
    want = c + s if fusion == "add" else torch.where(c > s, c, s)
    torch.testing.assert_close(m(x), want)
    with pytest.raises(ValueError, match="fusion"):
        SCSE(6, fusion="concat")


def _bn(v: np.ndarray, bn: nn.Module) -> np.ndarray:
    rm, rv = bn.running_mean.numpy(), bn.running_var.numpy()
    w, b = bn.weight.detach().numpy(), bn.bias.detach().numpy()
    shape = (-1,) + (1,) * (v.ndim - 1)
    return (v - rm.reshape(shape)) / np.sqrt(rv.reshape(shape) + bn.eps) * w.reshape(
        shape
    ) + b.reshape(shape)


def _conv_loops(x: np.ndarray, conv: nn.Conv2d) -> np.ndarray:
    """Naive (dilated) convolution with zero padding, stride 1: x (C, H, W)."""
    w, bias = conv.weight.detach().numpy(), conv.bias.detach().numpy()
    k, d, p = conv.kernel_size[0], conv.dilation[0], conv.padding[0]
    c, h, wd = x.shape
    xp = np.zeros((c, h + 2 * p, wd + 2 * p))
    xp[:, p : p + h, p : p + wd] = x
    out = np.zeros((w.shape[0], h, wd))
    for o in range(w.shape[0]):
        for i in range(h):
            for j in range(wd):
                patch = xp[:, i : i + d * (k - 1) + 1 : d, j : j + d * (k - 1) + 1 : d]
                out[o, i, j] = (w[o] * patch).sum() + bias[o]
    return out


@pytest.mark.parametrize("combine", ["add", "mul"])
def test_bam_matches_equations(combine):
    """BAM Eq. 1-4: F' = F + F * sigmoid(Mc + Ms), Mc = BN(MLP(GAP F)), Ms = BN(f3 f2 f1 f0 F)."""
    m = randomise(BAM(16, reduction=8, dilation=2, combine=combine))
    x = torch.randn(2, 16, 5, 5)
    y = m(x).detach().numpy()
    ch, sp = m.channel, m.spatial.body
    for b in range(2):
        xb = x[b].numpy()
        z = xb.mean(axis=(1, 2))
        hid = ch.fc1.weight.detach().numpy() @ z + ch.fc1.bias.detach().numpy()
        hid = np.maximum(_bn(hid, ch.bn_hidden), 0)
        mc = _bn(ch.fc2.weight.detach().numpy() @ hid + ch.fc2.bias.detach().numpy(), ch.bn)
        s = xb
        for conv_i in (0, 3, 6):
            s = np.maximum(_bn(_conv_loops(s, sp[conv_i]), sp[conv_i + 1]), 0)
        ms = _bn(_conv_loops(s, sp[9]), sp[10])  # (1, H, W)
        logits = mc[:, None, None] + ms if combine == "add" else mc[:, None, None] * ms
        want = xb + xb / (1 + np.exp(-logits))
        np.testing.assert_allclose(y[b], want, atol=1e-10)
    assert sp[3].dilation == (2, 2) and sp[6].dilation == (2, 2)


def test_residual_attention_matches_equation():
    """Wang et al. Eq. 3: H = (1 + M) * T, M = sigmoid(head(up(down(pool(x))) + T))."""
    m = randomise(ResidualAttention(4, depth=1))
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        t = x
        for unit in m.trunk:
            t = t + unit.body(t)
        low = F.max_pool2d(x, 3, stride=2, padding=1)
        low = low + m.down[0][0].body(low)
        up = F.interpolate(low, size=(6, 6), mode="bilinear", align_corners=False)
        mask = torch.sigmoid(m.mask_head(up + t))
        torch.testing.assert_close(m(x), (1 + mask) * t)
    assert float(mask.min()) > 0 and float(mask.max()) < 1


def test_residual_attention_deep_mask_structure():
    m = randomise(ResidualAttention(3, depth=2))
    x = torch.randn(1, 3, 8, 8)
    t = m.trunk(x)
    l1 = m.down[0](m.pool(x))  # 4x4
    l2 = m.down[1](m.pool(l1))  # 2x2
    up2 = F.interpolate(l2, size=(4, 4), mode="bilinear", align_corners=False)
    l1 = m.up[0](up2 + l1 + m.skip[0](l1))
    up1 = F.interpolate(l1, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(m(x), (1 + torch.sigmoid(m.mask_head(up1 + t))) * t)
    with pytest.raises(ValueError, match="depth"):
        ResidualAttention(3, depth=0)


def _bilinear_sample(img: np.ndarray, theta: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Jaderberg Eq. 1 and 5 by loops: target pixel centres -> source (x, y) -> bilinear,
    zeros outside (align_corners=False convention)."""
    c, h, w = img.shape
    oh, ow = out_hw
    out = np.zeros((c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            xt, yt = (2 * j + 1) / ow - 1, (2 * i + 1) / oh - 1
            xs, ys = theta @ np.array([xt, yt, 1.0])
            u, v = ((xs + 1) * w - 1) / 2, ((ys + 1) * h - 1) / 2
            for yy in (math.floor(v), math.floor(v) + 1):
                for xx in (math.floor(u), math.floor(u) + 1):
                    if 0 <= yy < h and 0 <= xx < w:
                        wgt = max(0.0, 1 - abs(u - xx)) * max(0.0, 1 - abs(v - yy))
                        out[:, i, j] += wgt * img[:, yy, xx]
    return out


def test_stn_identity_init_and_sampling_by_loops():
    m = SpatialTransformer(2, out_size=(4, 5)).eval()
    x = torch.randn(1, 2, 6, 7)
    m_id = SpatialTransformer(2).eval()
    torch.testing.assert_close(m_id(x), x)  # theta starts at the identity
    theta = np.array([[0.7, -0.3, 0.2], [0.25, 0.9, -0.1]])
    with torch.no_grad():
        m.theta.fc.bias.copy_(torch.from_numpy(theta.reshape(-1)))
    y = m(x).detach().numpy()[0]
    np.testing.assert_allclose(y, _bilinear_sample(x[0].numpy(), theta, (4, 5)), atol=1e-10)


def test_stn_integer_shift():
    """theta = [[1, 0, 2k/W], [0, 1, 0]] samples k pixels to the right: out[:, j] = x[:, j + k]."""
    m = SpatialTransformer(1).eval()
    with torch.no_grad():
        m.theta.fc.bias.copy_(torch.tensor([1.0, 0, 2 * 2 / 8, 0, 1, 0]))
    x = torch.randn(1, 1, 5, 8)
    y = m(x)
    torch.testing.assert_close(y[..., :6], x[..., 2:])
    assert torch.all(y[..., 6:] == 0)


def test_registry_builds_every_new_block():
    for name in ("sa", "danet", "pam", "cam", "cse", "sse", "scse", "bam"):
        assert name in ATTN_BLOCKS
        block = create_attn(name, 16).eval()
        x = torch.randn(2, 16, 4, 4)
        assert block(x).shape == x.shape
    assert isinstance(create_attn("ram", 8), ResidualAttention)
    assert isinstance(create_attn("stn", 3), SpatialTransformer)
