"""The Non-local queries notebook runs top to bottom, shows its figures and table, and prints
the statistics an independent computation gives: attention, block output and GCNet's pair
statistics rebuilt from each bundled block's own weights (Wang et al. Eq. 2-6) with NumPy."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from test_notebook_outputs import assert_outputs_current

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "nonlocal_queries.ipynb"


def _missing(names: list[str]) -> list[str]:
    from attnviz.models import bundled_models

    have = set(bundled_models())
    return [n for n in names if n not in have]


@pytest.mark.slow
def test_nonlocal_queries_notebook():
    missing = _missing(["nl_tiny", "nl_tiny_gaussian", "nl_tiny_dot", "nl_tiny_concat"])
    assert not missing, f"bundled checkpoints missing: {missing}"
    book = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        book,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()
    outputs = [out for cell in book.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert_outputs_current(NOTEBOOK, book)  # the committed outputs are the current code's
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert images >= 3  # Fig. 2 grid, distance heatmap, Table 1 figure
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "20 held-out images" in text
    for name in ("nl_tiny_gaussian", "nl_tiny_dot", "nl_tiny_concat", "GCNet paper"):
        assert f"| {name} |" in text
    assert "query (3, 12)" in text
    assert "eff_keys" in text and "near_one_hot" in text  # the degeneracy table
    # the Fig. 2 maps kept from the statistics' one forward equal query_maps on the same images
    assert "kept maps equal the query_maps above up to float32 rounding (< 1e-5): True" in text
    assert any(
        "application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs
    )  # the inspector displayed as a widget
    # the printed Table 1 rows (3 decimals) against the hand computation
    for name, ref in _hand_statistics().items():
        line = next(x for x in text.splitlines() if x.startswith(f"| {name} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        for col, key in zip(cells[4:8], ("cos_input", "cos_output", "cos_att", "jsd_att")):
            if key not in ref:
                assert col == "n/a", (name, key, col)
                continue
            printed = float(col.split()[0])
            assert printed == pytest.approx(ref[key], abs=6e-4), (name, key)
    # the inspector's distances for query (3, 12) of the first image of nl_tiny
    row, mean = _inspector_reference()
    cos = row @ mean / (np.linalg.norm(row) * np.linalg.norm(mean))
    m = (row + mean) / 2
    jsd = 0.5 * np.sum(row * np.log(row / m)) + 0.5 * np.sum(mean * np.log(mean / m))
    got = re.search(r"\(1-cos\)/2 = (\S+), JSD = (\S+)", text).groups()
    assert float(got[0]) == pytest.approx((1 - cos) / 2, abs=6e-5)
    assert float(got[1]) == pytest.approx(jsd, abs=6e-5)


def _held_out():
    import torch

    from attnviz.data import ShapesDataset

    data = ShapesDataset(2, size=64, seed=10_000)  # the notebook's HELD_OUT_SEED
    mean = np.asarray([0.485, 0.456, 0.406], np.float32)
    std = np.asarray([0.229, 0.224, 0.225], np.float32)
    arrs = [(np.asarray(data[i][0], np.float32) / 255.0 - mean) / std for i in range(len(data))]
    return torch.from_numpy(np.stack(arrs).transpose(0, 3, 1, 2).copy())


def _block_by_hand(block, f):
    """(attention (N, Nk), W_z y (N, C)) of a NonLocalBlock for one input f (C, H, W), float64,
    from its weights: theta / phi / g 1x1 convs, optional 2x2 max pool of phi and g, the
    instantiation's f / C(x), y = att @ g, then W_z (conv + eval BN)."""
    import torch
    import torch.nn.functional as F

    def conv(mod, t):
        return F.conv2d(t, mod.weight.detach().double(), mod.bias.detach().double())

    x = f[None].double().detach()
    c, h, w = f.shape
    if block.mode == "gaussian":
        th, ph = x, x
    else:
        th, ph = conv(block.theta, x), conv(block.phi, x)
    g = conv(block.g, x)
    if block.sub_sample:
        ph, g = F.max_pool2d(ph, 2), F.max_pool2d(g, 2)
    th = th[0].flatten(1).T.numpy()  # (N, C')
    ph = ph[0].flatten(1).numpy()  # (C', Nk)
    g = g[0].flatten(1).T.numpy()  # (Nk, C')
    nk = ph.shape[1]
    if block.mode in ("gaussian", "embedded_gaussian"):
        logits = th @ ph
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        att = e / e.sum(axis=1, keepdims=True)
    elif block.mode == "dot_product":
        att = th @ ph / nk
    else:  # concatenation: ReLU(w_theta . theta_i + w_phi . phi_j) / Nk
        wv = block.affinity.project.weight.detach().double().numpy()[0]
        cp = th.shape[1]
        att = np.maximum((th @ wv[:cp])[:, None] + (wv[cp:] @ ph)[None, :], 0) / nk
    y = att @ g  # (N, C')
    wz = block.W_z
    conv_z, bn = (wz[0], wz[1]) if isinstance(wz, torch.nn.Sequential) else (wz, None)
    z = (
        y @ conv_z.weight.detach().double().numpy()[:, :, 0, 0].T
        + conv_z.bias.detach().double().numpy()
    )
    if bn is not None:
        scale = bn.weight.detach().double().numpy() / np.sqrt(
            bn.running_var.detach().double().numpy() + bn.eps
        )
        shift = bn.bias.detach().double().numpy()
        z = (z - bn.running_mean.detach().double().numpy()) * scale + shift
    return att, z


def _mean_pair_cos_distance(v):
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    return float(np.mean((1 - u @ u.T) / 2))  # all N^2 ordered pairs, i = j included


def _mean_pair_jsd(p):
    """mean over all N^2 ordered pairs of H((p_i + p_j) / 2) - (H(p_i) + H(p_j)) / 2 (nats):
    the pairs j > i evaluated in blocks of rows (float32 terms, float64 sums) and counted
    twice, the pairs i = j contribute 0."""
    import torch

    t = torch.from_numpy(p).float()
    h = -torch.special.xlogy(t, t).sum(-1)
    n = t.shape[0]
    total = 0.0
    for i in range(0, n, 32):
        rows = t[i : i + 32]
        m = (rows[:, None, :] + t[None, i:, :]) / 2  # the rows against every j >= i
        jsd = -torch.special.xlogy(m, m).sum(-1) - (h[i : i + 32, None] + h[None, i:]) / 2
        keep = torch.arange(i, i + len(rows))[:, None] < torch.arange(i, n)[None, :]
        total += 2 * float(jsd[keep].double().sum())
    return total / n**2


def _inputs(model, x):
    import torch

    block = model.get_submodule("layer2.1")
    seen = []
    handle = block.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return block, seen[0]


def _hand_statistics():
    from attnviz.models import load_model

    x = _held_out()
    out = {}
    for name in ("nl_tiny", "nl_tiny_gaussian", "nl_tiny_dot", "nl_tiny_concat"):
        model, _ = load_model(name)
        block, feats = _inputs(model.eval(), x)
        stats = {"cos_input": [], "cos_output": [], "cos_att": [], "jsd_att": []}
        for f in feats:
            att, o = _block_by_hand(block, f)
            xs = f.double().flatten(1).T.numpy()
            stats["cos_input"].append(_mean_pair_cos_distance(xs))
            stats["cos_output"].append(_mean_pair_cos_distance(o))
            stats["cos_att"].append(_mean_pair_cos_distance(att))
            if block.mode in ("gaussian", "embedded_gaussian"):
                stats["jsd_att"].append(_mean_pair_jsd(att))
        out[name] = {k: float(np.mean(v)) for k, v in stats.items() if v}
    return out


def _inspector_reference():
    from attnviz.models import load_model

    model, _ = load_model("nl_tiny")
    block, feats = _inputs(model.eval(), _held_out()[:1])
    att, _ = _block_by_hand(block, feats[0])
    assert att.shape[0] == 256  # a 16x16 query grid
    return att[3 * 16 + 12], att.mean(axis=0)
