"""GCNet Table 1 statistics: fast formulas against naive pairwise loops, extreme cases,
end-to-end on timm NonLocalAttn / the reference NonLocalBlock, batch-size independence."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import attnviz
from attnviz.analysis.query_independence import (
    QueryIndependenceResult,
    nonlocal_statistics,
    query_independence,
)
from attnviz.analysis.stats import avg_cosine_distance, avg_jsd, is_distribution
from attnviz.errors import NoAttentionSitesError
from attnviz.results import ResultFormatError

ATOL = 1e-6


# -- naive references: explicit double loops ------------------------------------------------------
def naive_cos_dist(v: np.ndarray, include_diagonal: bool = True) -> float:
    n = v.shape[0]
    total, count = 0.0, 0
    for i in range(n):
        for j in range(n):
            if i == j and not include_diagonal:
                continue
            ni, nj = np.linalg.norm(v[i]), np.linalg.norm(v[j])
            cos = 0.0 if ni == 0 or nj == 0 else float(v[i] @ v[j]) / (ni * nj)
            total += (1.0 - cos) / 2.0
            count += 1
    return total / count


def naive_kl(p: np.ndarray, q: np.ndarray) -> float:
    s = 0.0
    for a, b in zip(p, q):
        if a > 0:
            s += a * math.log(a / b)
    return s


def naive_jsd(p: np.ndarray, include_diagonal: bool = True) -> float:
    n = p.shape[0]
    total, count = 0.0, 0
    for i in range(n):
        for j in range(n):
            if i == j and not include_diagonal:
                continue
            m = (p[i] + p[j]) / 2
            total += 0.5 * naive_kl(p[i], m) + 0.5 * naive_kl(p[j], m)
            count += 1
    return total / count


# -- the statistics on plain tensors --------------------------------------------------------------
@pytest.mark.parametrize("include_diagonal", [True, False])
def test_cosine_statistic_equals_naive_double_loop(include_diagonal):
    g = torch.Generator().manual_seed(1)
    v = torch.randn(17, 5, generator=g, dtype=torch.float64) + 0.3
    v[4] = 0.0  # a zero vector: cosine 0 with everything, as F.normalize
    fast = avg_cosine_distance(v, include_diagonal=include_diagonal)
    assert fast == pytest.approx(naive_cos_dist(v.numpy(), include_diagonal), abs=ATOL)


@pytest.mark.parametrize("include_diagonal", [True, False])
@pytest.mark.parametrize("max_elements", [1, 10**9])  # one row per block / one block
def test_jsd_equals_naive_double_loop(include_diagonal, max_elements):
    g = torch.Generator().manual_seed(2)
    p = torch.softmax(torch.randn(13, 7, generator=g, dtype=torch.float64) * 2, dim=1)
    p[3] = 0.0
    p[3, 2] = 1.0  # a one-hot row: zeros in the entropies
    fast = avg_jsd(p, include_diagonal=include_diagonal, max_elements=max_elements)
    assert fast == pytest.approx(naive_jsd(p.numpy(), include_diagonal), abs=ATOL)


def test_identical_rows_give_zero():
    row = torch.softmax(torch.randn(9, dtype=torch.float64), dim=0)
    p = row.repeat(11, 1)
    assert avg_cosine_distance(p) == pytest.approx(0.0, abs=1e-12)
    assert avg_cosine_distance(p, include_diagonal=False) == pytest.approx(0.0, abs=1e-12)
    assert avg_jsd(p) == pytest.approx(0.0, abs=1e-12)
    assert avg_jsd(p, include_diagonal=False) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("n", [2, 5, 16])
def test_one_hot_identity_attention_gives_the_maximum(n):
    p = torch.eye(n, dtype=torch.float64)
    # all pairs: the n diagonal pairs have distance 0, the n(n-1) others the maximum
    assert avg_cosine_distance(p) == pytest.approx((1 - 1 / n) / 2, abs=1e-12)
    assert avg_cosine_distance(p, include_diagonal=False) == pytest.approx(0.5, abs=1e-12)
    # JSD of distinct one-hots is ln 2 (float32 entropy terms by default; float64 on request)
    assert avg_jsd(p) == pytest.approx((1 - 1 / n) * math.log(2), abs=1e-7)
    assert avg_jsd(p, include_diagonal=False) == pytest.approx(math.log(2), abs=1e-7)
    exact = avg_jsd(p, include_diagonal=False, dtype=torch.float64)
    assert exact == pytest.approx(math.log(2), abs=1e-12)
    # no set of distributions scores higher
    q = torch.softmax(torch.randn(n, n, dtype=torch.float64) * 5, dim=1)
    assert avg_jsd(q, include_diagonal=False) < math.log(2)


def test_jsd_refuses_non_distributions():
    v = torch.randn(4, 3, dtype=torch.float64)
    assert not is_distribution(v)
    with pytest.raises(ValueError, match="distributions"):
        avg_jsd(v)


# -- end to end -----------------------------------------------------------------------------------
def _timm_nl_model(channels: int = 8) -> nn.Module:
    from timm.layers import NonLocalAttn

    nl = NonLocalAttn(channels, rd_channels=4)
    nn.init.normal_(nl.norm.weight, 0.0, 1.0)  # timm zero-inits it: o_i would be 0
    nn.init.normal_(nl.norm.bias, 0.0, 0.1)
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nl).eval()


def _naive_timm_stats(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Full N x N matrices, straight from the module's weights."""
    conv, nl = model[0], model[1]
    with torch.no_grad():
        feat = conv(x[None])[0].double()  # (C, H, W)
        c, h, w = feat.shape
        xs = feat.reshape(c, -1).T.numpy()  # (N, C)
        t = nl.t.double()(feat[None])[0].reshape(-1, h * w).T
        p = nl.p.double()(feat[None])[0].reshape(-1, h * w)
        att = torch.softmax(t @ p * nl.scale, dim=1)
        z = nl.double()(feat[None])[0]
        nl.float()
        o = (z - feat).reshape(c, -1).T.numpy()
    a = att.numpy()
    return {
        "cos_input": naive_cos_dist(xs),
        "cos_output": naive_cos_dist(o),
        "cos_att": naive_cos_dist(a),
        "jsd_att": naive_jsd(a),
    }


def test_timm_nonlocal_matches_naive_reference():
    model = _timm_nl_model()
    x = torch.randn(2, 3, 6, 6)
    res = query_independence(model, x, batch_size=2, progress=False)
    assert [s["kind"] for s in res.sites] == ["nl"]
    for i in range(2):
        ref = _naive_timm_stats(model, x[i])
        for m, v in ref.items():
            assert res.values[m][i, 0] == pytest.approx(v, abs=1e-5), m
    frame = res.to_frame()
    assert frame.loc[0, "cos_att_mean"] == pytest.approx(res.values["cos_att"][:, 0].mean())
    assert frame.loc[0, "cos_att_std"] == pytest.approx(res.values["cos_att"][:, 0].std())


def test_results_do_not_depend_on_batch_size():
    from torchvision.transforms import ToTensor

    model = _timm_nl_model()
    # values k / 255: the same numbers as uint8 images, so images and inputs can be compared
    x = torch.randint(0, 256, (5, 3, 8, 8)).float() / 255.0
    a = query_independence(model, x, batch_size=1, progress=False)
    b = query_independence(model, x, batch_size=3, progress=False)
    # an iterable (not a sequence) of images, prepared one by one by a callable
    c = query_independence(model, iter(list(x)), preprocess=ToTensor(), batch_size=2,
                           progress=False)  # fmt: skip
    for m in a.metrics:
        np.testing.assert_allclose(a.values[m], b.values[m], atol=1e-6)
        np.testing.assert_allclose(a.values[m], c.values[m], atol=1e-6)
    assert a.values["cos_input"].shape == (5, 1)
    assert c.ids == a.ids == [f"#{i}" for i in range(5)]


def test_save_load_roundtrip(tmp_path):
    model = _timm_nl_model()
    res = query_independence(model, torch.randn(2, 3, 6, 6), progress=False, model_name="toy")
    out = res.save(tmp_path / "qi")
    names = {"query_independence.npz", "statistics.csv", "per_image.csv", "manifest.json"}
    assert {p.name for p in out.iterdir()} == names
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "query_independence" and set(manifest["files"]) == names
    back = QueryIndependenceResult.load(out)
    assert back.model == "toy" and back.metrics == res.metrics and back.sites == res.sites
    for m in res.metrics:
        np.testing.assert_array_equal(back.values[m], res.values[m])
    assert back.to_frame().equals(res.to_frame())
    assert back.ids == res.ids == ["#0", "#1"]
    (out / "mine.txt").write_text("the user's own file")
    res.save(out)  # overwriting an existing result works and keeps files it did not write
    assert (out / "mine.txt").read_text() == "the user's own file"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    manifest["kind"] = "scale_sweep"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ResultFormatError, match="scale_sweep"):
        QueryIndependenceResult.load(out)


def test_model_without_nonlocal_sites_raises():
    with pytest.raises(NoAttentionSitesError):
        query_independence(nn.Sequential(nn.Conv2d(3, 4, 1)), torch.randn(1, 3, 4, 4))


def test_unknown_metric_raises():
    with pytest.raises(ValueError, match="unknown metric"):
        query_independence(_timm_nl_model(), torch.randn(1, 3, 4, 4), metrics=["cos_foo"])


def test_nonlocal_statistics_checks_shapes():
    with pytest.raises(ValueError, match="query rows"):
        nonlocal_statistics(torch.randn(2, 3, 3), torch.randn(2, 3, 3), torch.rand(8, 9))


# -- reference blocks (all four instantiations, subsampled keys) ----------------------------------
def _naive_block_att(block, feat: torch.Tensor) -> np.ndarray:
    """Attention of attnviz.blocks.NonLocalBlock by the paper's formulas (Eq. 2-5)."""
    with torch.no_grad():
        th = block.theta(feat[None])[0].flatten(1).T.double()  # (N, C')
        ph = block.pool(block.phi(feat[None]))[0].flatten(1).T.double()  # (Nk, C')
        nk = ph.shape[0]
        if block.mode in ("embedded_gaussian", "gaussian"):
            f = torch.exp(th @ ph.T - (th @ ph.T).amax(dim=1, keepdim=True))
            return (f / f.sum(dim=1, keepdim=True)).numpy()
        if block.mode == "dot_product":
            return (th @ ph.T / nk).numpy()
        w = block.affinity.project.weight[0].double()
        c = th.shape[1]
        out = np.zeros((th.shape[0], nk))
        for i in range(th.shape[0]):
            for j in range(nk):
                out[i, j] = max(float(w[:c] @ th[i] + w[c:] @ ph[j]), 0.0) / nk
        return out


@pytest.mark.parametrize("mode", ["embedded_gaussian", "gaussian", "dot_product", "concatenation"])
@pytest.mark.parametrize("sub_sample", [False, True])
def test_reference_block_all_instantiations(mode, sub_sample):
    from attnviz.blocks import NonLocalBlock

    block = NonLocalBlock(6, mode=mode, sub_sample=sub_sample)
    nn.init.normal_(block.W_z[1].weight, 0.0, 1.0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), block).eval()
    assert attnviz.find_sites(model), "NonLocalBlock must be a capture site"
    x = torch.randn(2, 3, 6, 6)
    res = query_independence(model, x, batch_size=2, progress=False)
    assert res.sites[0]["n_keys"] == (9 if sub_sample else 36)
    for i in range(2):
        with torch.no_grad():
            feat = model[0](x[i : i + 1])[0]
            o = (block(feat[None])[0] - feat).reshape(6, -1).T.double().numpy()
        a = _naive_block_att(block, feat)
        assert res.values["cos_input"][i, 0] == pytest.approx(
            naive_cos_dist(feat.reshape(6, -1).T.double().numpy()), abs=1e-5
        )
        assert res.values["cos_output"][i, 0] == pytest.approx(naive_cos_dist(o), abs=1e-5)
        assert res.values["cos_att"][i, 0] == pytest.approx(naive_cos_dist(a), abs=1e-5)
        if mode in ("embedded_gaussian", "gaussian"):
            assert res.values["jsd_att"][i, 0] == pytest.approx(naive_jsd(a), abs=1e-5)
        else:
            assert math.isnan(res.values["jsd_att"][i, 0])
    if mode in ("dot_product", "concatenation"):
        assert "not probability distributions" in next(iter(res.notes.values()))


def test_gc_site_reports_context_entropy():
    from timm.layers import GlobalContext

    gc = GlobalContext(8)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), gc).eval()
    x = torch.randn(2, 3, 5, 5)
    res = query_independence(model, x, progress=False)
    assert res.metrics == ["entropy", "entropy_norm"]
    for i in range(2):
        with torch.no_grad():
            logits = gc.conv_attn(model[0](x[i : i + 1])).reshape(-1).double()
        p = torch.softmax(logits, 0).numpy()
        h = -sum(float(v) * math.log(float(v)) for v in p if v > 0)
        assert res.values["entropy"][i, 0] == pytest.approx(h, abs=1e-6)
        assert res.values["entropy_norm"][i, 0] == pytest.approx(h / math.log(25), abs=1e-6)


def test_pil_images_with_labels_go_through_preprocess():
    from PIL import Image

    model = _timm_nl_model()
    rng = np.random.default_rng(0)
    pils = [Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)) for _ in range(3)]
    mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.2, 0.25, 0.3])
    config = {"input_size": (3, 6, 6), "mean": tuple(mean), "std": tuple(std), "crop_pct": 1.0,
              "interpolation": "bilinear"}  # fmt: skip
    a = query_independence(
        model, [(p, 0) for p in pils], preprocess=config, batch_size=2, progress=False
    )
    # the reference inputs by hand: PIL bilinear resize to 6x6, scale to [0, 1], normalise
    ref = [
        (np.asarray(p.resize((6, 6), Image.BILINEAR), np.float64) / 255.0 - mean) / std
        for p in pils
    ]
    x = torch.from_numpy(np.stack(ref)).permute(0, 3, 1, 2).float()
    b = query_independence(model, x, progress=False)
    for m in a.metrics:
        np.testing.assert_allclose(a.values[m], b.values[m], atol=1e-6)
    assert a.n_images == 3 and a.meta["run"]["preprocess"]["input_size"] == [3, 6, 6]


def test_self_attention_and_danet_position_sites_are_analysed():
    """Every per-query kind works unchanged: SAGAN self-attention and DANet position maps."""
    from attnviz.data import ShapesDataset
    from attnviz.models import load_model

    images = [ShapesDataset(1, seed=4242)[i][0] for i in range(3)]
    for spec, kind in (("sa_tiny", "sa"), ("danet_tiny", "pam")):
        model, pre = load_model(spec)
        result = query_independence(model, images, preprocess=pre, batch_size=2, progress=False)
        frame = result.to_frame()
        rows = frame[frame["kind"] == kind]
        assert len(rows) == 1, frame
        att = rows.iloc[0]
        assert 0.0 <= att["cos_att_mean"] <= 0.5
        assert att["jsd_att_mean"] > 0.0


def test_figure_maps_come_from_the_same_forward_as_the_statistics(tmp_path):
    from attnviz.analysis.query_maps import grid_queries, query_maps

    model = _timm_nl_model()
    x = torch.randn(5, 3, 8, 8)
    forwards = []
    hook = model.register_forward_hook(lambda m, i, o: forwards.append(i[0].shape[0]))
    res = query_independence(
        model, x, batch_size=2, map_images=3, n_queries=4, progress=False, model_name="toy"
    )
    hook.remove()
    assert forwards == [2, 2, 1]  # one forward per batch, statistics and maps together
    cells = grid_queries((8, 8), 4)
    maps = res.query_maps()
    assert len(maps) == 3 and res.ids[:3] == ["#0", "#1", "#2"]
    for j, kept in enumerate(maps):
        direct = query_maps(model, x[j], queries=cells, query_space="cell")
        np.testing.assert_array_equal(kept.query_cells, cells)
        np.testing.assert_allclose(kept.grid_maps, direct.grid_maps, atol=1e-6)
        np.testing.assert_allclose(kept.maps, direct.maps, atol=1e-6)
        np.testing.assert_array_equal(kept.query_pixels, direct.query_pixels)
        assert kept.is_distribution and kept.site["alias"] == direct.site["alias"]
    back = QueryIndependenceResult.load(res.save(tmp_path / "qi"))
    for a, b in zip(back.query_maps(), maps):
        np.testing.assert_array_equal(a.grid_maps, b.grid_maps)
        np.testing.assert_array_equal(a.image, b.image)


def test_unusable_images_are_skipped_unless_strict(tmp_path):
    from PIL import Image

    from attnviz.errors import BadImageError

    rng = np.random.default_rng(1)
    for name in ("a.png", "c.png"):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "b.png").write_bytes(b"")
    config = {"input_size": (3, 8, 8), "crop_pct": 1.0}
    model = _timm_nl_model()
    res = query_independence(model, tmp_path, preprocess=config, progress=False)
    assert res.ids == ["a.png", "c.png"] and res.n_images == 2
    assert res.skipped == [("b.png", "empty file")]
    assert "(1 skipped)" in res.summary()
    with pytest.raises(BadImageError, match="b.png"):
        query_independence(model, tmp_path, preprocess=config, progress=False, strict=True)
