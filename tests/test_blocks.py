"""Reference blocks against independent hand computations of their paper equations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnviz.blocks import (
    ATTN_BLOCKS,
    CBAM,
    NL_MODES,
    GCBlock,
    NonLocalBlock,
    SEBlock,
    SKConv,
    create_attn,
)

torch.manual_seed(0)


def _randomize(module: nn.Module) -> nn.Module:
    """Random weights everywhere (also zero-initialised ones) and non-trivial BN statistics."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return module.eval()


def _conv1x1(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """1x1 conv by einsum: (B, Cin, H, W) -> (B, Cout, H, W)."""
    y = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], x)
    return y if conv.bias is None else y + conv.bias.view(1, -1, 1, 1)


def _bn(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    xhat = (x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
    return xhat * bn.weight.view(shape) + bn.bias.view(shape)


def _hook(module: nn.Module) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    module.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    return seen


def test_registry() -> None:
    assert set(ATTN_BLOCKS) >= {"se", "cbam", "gc", "nl"}
    assert isinstance(create_attn("se", 32), SEBlock)
    nl = create_attn("nl", 16, mode="dot_product")
    assert isinstance(nl, NonLocalBlock) and nl.affinity.mode == "dot_product"
    with pytest.raises(ValueError, match="valid names"):
        create_attn("nope", 8)


def test_se_equation() -> None:
    blk = _randomize(SEBlock(32, reduction=4))
    x = torch.randn(2, 32, 5, 6)
    gate_out = _hook(blk.gate)
    z = x.mean(dim=(2, 3))  # Eq. 2
    w1, b1 = blk.fc1.weight[:, :, 0, 0], blk.fc1.bias
    w2, b2 = blk.fc2.weight[:, :, 0, 0], blk.fc2.bias
    s = torch.sigmoid(torch.relu(z @ w1.T + b1) @ w2.T + b2)  # Eq. 3
    out = blk(x)
    torch.testing.assert_close(out, x * s[:, :, None, None])  # Eq. 4
    assert gate_out[0].shape == (2, 32, 1, 1)
    torch.testing.assert_close(gate_out[0][:, :, 0, 0], s)


def test_sk_equation() -> None:
    blk = _randomize(SKConv(8, 16, stride=2, num_paths=3, groups=2, reduction=4, min_dim=4))
    x = torch.randn(2, 8, 9, 9)
    att_out = _hook(blk.select)
    us = []
    for m, path in enumerate(blk.paths):
        conv, bn = path[0], path[1]
        assert conv.dilation == (m + 1, m + 1) and conv.kernel_size == (3, 3)
        u = nn.functional.conv2d(x, conv.weight, None, 2, m + 1, m + 1, groups=2)
        us.append(torch.relu(_bn(bn, u)))
    u_sum = sum(us)  # Eq. 1
    s = u_sum.mean(dim=(2, 3), keepdim=True)  # Eq. 2
    conv_r, bn_r = blk.fc_reduce[0], blk.fc_reduce[1]
    assert conv_r.out_channels == max(16 // 4, 4)  # d = max(C / r, L)
    z = torch.relu(_bn(bn_r, _conv1x1(conv_r, s)))  # Eq. 3
    logits = _conv1x1(blk.fc_select, z).view(2, 3, 16)
    a = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)  # Eq. 5
    v = sum(a[:, m, :, None, None] * us[m] for m in range(3))  # Eq. 6
    out = blk(x)
    assert out.shape == (2, 16, 5, 5)
    torch.testing.assert_close(out, v, rtol=1e-4, atol=1e-5)
    att = att_out[0]
    assert att.shape == (2, 3, 16, 1, 1)
    torch.testing.assert_close(att.sum(dim=1), torch.ones(2, 16, 1, 1))
    torch.testing.assert_close(att[..., 0, 0], a, rtol=1e-4, atol=1e-6)
    # V is rebuilt from the captured attention and the path outputs
    rebuilt = sum(att[:, m] * us[m] for m in range(3))
    torch.testing.assert_close(out, rebuilt, rtol=1e-4, atol=1e-5)


def test_cbam_equation() -> None:
    blk = _randomize(CBAM(16, reduction=4, kernel_size=7))
    x = torch.randn(2, 16, 8, 7)
    ch_out, sp_out = _hook(blk.channel.gate), _hook(blk.spatial.gate)
    ch = blk.channel

    def mlp(v: torch.Tensor) -> torch.Tensor:
        h = torch.relu(v @ ch.fc1.weight[:, :, 0, 0].T + ch.fc1.bias)
        return h @ ch.fc2.weight[:, :, 0, 0].T + ch.fc2.bias

    mc = torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3))))  # Eq. 2
    f1 = x * mc[:, :, None, None]  # Eq. 1, first line
    pooled = torch.stack([f1.mean(dim=1), f1.amax(dim=1)], dim=1)
    conv = nn.functional.conv2d(pooled, blk.spatial.conv.weight, padding=3)
    ms = torch.sigmoid(_bn(blk.spatial.bn, conv))  # Eq. 3
    out = blk(x)
    torch.testing.assert_close(out, f1 * ms, rtol=1e-4, atol=1e-5)  # Eq. 1, second line
    assert len(ch_out) == 1 and ch_out[0].shape == (2, 16, 1, 1)  # sigmoid called once
    assert sp_out[0].shape == (2, 1, 8, 7)
    torch.testing.assert_close(ch_out[0][:, :, 0, 0], mc)
    torch.testing.assert_close(sp_out[0], ms, rtol=1e-4, atol=1e-5)


def test_gc_equation_and_identity_at_init() -> None:
    x = torch.randn(2, 12, 5, 4)
    fresh = GCBlock(12).eval()
    torch.testing.assert_close(fresh(x), x)  # last transform conv is zero-initialised
    blk = _randomize(GCBlock(12, ratio=1 / 4))
    att_out = _hook(blk.softmax)
    logits = _conv1x1(blk.conv_mask, x).flatten(1)  # (B, N)
    a = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
    context = torch.einsum("bn,bcn->bc", a, x.flatten(2))  # sum_j a_j x_j
    c1, ln, c2 = blk.channel_add[0], blk.channel_add[1], blk.channel_add[3]
    h = context @ c1.weight[:, :, 0, 0].T + c1.bias
    h = (h - h.mean(1, keepdim=True)) / torch.sqrt(h.var(1, unbiased=False, keepdim=True) + ln.eps)
    h = torch.relu(h * ln.weight.flatten() + ln.bias.flatten())
    t = h @ c2.weight[:, :, 0, 0].T + c2.bias
    out = blk(x)
    torch.testing.assert_close(out, x + t[:, :, None, None], rtol=1e-4, atol=1e-5)  # Eq. 4
    assert att_out[0].shape == (2, 1, 5, 4)
    torch.testing.assert_close(att_out[0].flatten(1), a)
    torch.testing.assert_close(att_out[0].sum(dim=(2, 3)), torch.ones(2, 1))


def _nl_reference(blk: NonLocalBlock, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1-6 written out pair by pair (loops over i, j): returns (z, attention)."""
    b, c, h, w = x.shape
    mode = blk.affinity.mode
    if mode == "gaussian":
        theta, phi = x, x
    else:
        theta, phi = _conv1x1(blk.theta, x), _conv1x1(blk.phi, x)
    g = _conv1x1(blk.g, x)
    if blk.sub_sample:
        phi, g = nn.functional.max_pool2d(phi, 2), nn.functional.max_pool2d(g, 2)
    theta, phi, g = theta.flatten(2), phi.flatten(2), g.flatten(2)  # (B, C', N)
    n, nk = theta.shape[-1], phi.shape[-1]
    f = torch.zeros(b, n, nk)
    for i in range(n):
        for j in range(nk):
            ti, pj = theta[:, :, i], phi[:, :, j]
            if mode in ("gaussian", "embedded_gaussian"):
                f[:, i, j] = torch.exp((ti * pj).sum(1))  # Eq. 2 / 3
            elif mode == "dot_product":
                f[:, i, j] = (ti * pj).sum(1)  # Eq. 4
            else:
                wf = blk.affinity.project.weight[0]
                f[:, i, j] = torch.relu(torch.cat([ti, pj], 1) @ wf)  # Eq. 5
    norm = f.sum(-1, keepdim=True) if mode in ("gaussian", "embedded_gaussian") else nk
    att = f / norm
    y = torch.einsum("bij,bcj->bci", att, g).reshape(b, -1, h, w)  # Eq. 1
    conv, bn = blk.W_z[0], blk.W_z[1]
    z = _bn(bn, _conv1x1(conv, y)) + x  # Eq. 6
    return z, att


@pytest.mark.parametrize("sub_sample", [False, True])
@pytest.mark.parametrize("mode", NL_MODES)
def test_nonlocal_equation(mode: str, sub_sample: bool) -> None:
    x = torch.randn(2, 8, 6, 4) * (0.3 if mode == "gaussian" else 1.0)
    fresh = NonLocalBlock(8, mode=mode, sub_sample=sub_sample).eval()
    torch.testing.assert_close(fresh(x), x)  # zero-initialised BN scale: identity at init
    assert fresh.W_z[1].weight.abs().sum() == 0
    blk = _randomize(NonLocalBlock(8, mode=mode, sub_sample=sub_sample))
    if mode == "gaussian":
        assert isinstance(blk.theta, nn.Identity) and isinstance(blk.phi, nn.Identity)
    else:
        assert blk.theta.out_channels == 4  # C / 2
    with torch.no_grad():  # keep exp() finite for the two Gaussian forms
        for conv in (blk.theta, blk.phi):
            if isinstance(conv, nn.Conv2d):
                conv.weight.mul_(0.3)
    att_out = _hook(blk.affinity)
    z_ref, att_ref = _nl_reference(blk, x)
    z = blk(x)
    torch.testing.assert_close(z, z_ref, rtol=1e-4, atol=1e-5)
    hk, wk = blk.key_grid(6, 4)
    assert (hk, wk) == ((3, 2) if sub_sample else (6, 4))
    att = att_out[0]
    assert att.shape == (2, 24, hk * wk)
    torch.testing.assert_close(att, att_ref, rtol=1e-4, atol=1e-6)
    if mode in ("gaussian", "embedded_gaussian"):
        torch.testing.assert_close(att.sum(-1), torch.ones(2, 24))
    # the block output minus the residual is rebuilt from the captured attention
    g = blk.pool(blk.g(x)).flatten(2)
    y = torch.einsum("bij,bcj->bci", att, g).reshape(2, -1, 6, 4)
    torch.testing.assert_close(blk.W_z(y) + x, z, rtol=1e-4, atol=1e-5)


def test_nonlocal_bad_mode() -> None:
    with pytest.raises(ValueError, match="valid modes"):
        NonLocalBlock(8, mode="cosine")
