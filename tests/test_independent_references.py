"""Analyses against references that share no code with attnviz.

Views are made with torchvision / PIL directly, statistics with NumPy loops, gates read with
plain ``register_forward_hook`` and Non-local maps rebuilt from the block's own weights. Class
sizes are unequal everywhere, so a mean of counts where a harmonic mean belongs, or a
standard error divided by the wrong count, shows.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode

import attnviz
from attnviz.analysis.excitation import excitation_profile
from attnviz.analysis.query_independence import query_independence
from attnviz.analysis.scale_sweep import scale_sweep
from attnviz.blocks import NonLocalBlock
from attnviz.models.tiny import create_tiny

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
CFG = dict(input_size=(3, 32, 32), mean=tuple(MEAN), std=tuple(STD), crop_pct=1.0,
           interpolation="bilinear")  # fmt: skip
SCALES = (1.0, 1.5, 2.0)


def _normalise(view: Image.Image) -> torch.Tensor:
    arr = (np.asarray(view.convert("RGB"), np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def _hand_views(img: Image.Image) -> list[Image.Image]:
    """1.0x: shorter side resized to 32 (torchvision's rule: the longer side int(32 * L / S)),
    centre crop 32 (offset round((L - 32) / 2)); s > 1: the central 1/s of that view's box in
    the ORIGINAL image, resized once to 32x32 with PIL's bilinear filter."""
    w, h = img.size
    assert w > h
    nw = int(32 * w / h)
    resized = TF.resize(img, [32, nw], interpolation=InterpolationMode.BILINEAR, antialias=True)
    left = int(round((nw - 32) / 2))
    views = [resized.crop((left, 0, left + 32, 32))]
    sx, sy = w / nw, h / 32
    x0, bw, bh = left * sx, 32 * sx, 32 * sy
    cx, cy = x0 + bw / 2, bh / 2
    for s in SCALES[1:]:
        box = (cx - bw / (2 * s), cy - bh / (2 * s), cx + bw / (2 * s), cy + bh / (2 * s))
        views.append(img.resize((32, 32), Image.Resampling.BILINEAR, box=box))
    return views


def _sk_attention(model: nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Each SK unit's branch weights (M, C) for one input, read with a plain forward hook on
    the unit's ``select`` submodule (the softmax over branches, Li et al. Eq. 5)."""
    out: dict[str, np.ndarray] = {}
    handles = []
    for site in attnviz.find_sites(model):
        if site.kind != "sk":
            continue
        select = model.get_submodule(site.name).select

        def hook(mod, inputs, output, key=site.alias):
            out[key] = output.detach().double().reshape(output.shape[0], output.shape[1], -1)

        handles.append(select.register_forward_hook(hook))
    assert handles, "sk_tiny has SK units"
    try:
        with torch.no_grad():
            model(x[None])
    finally:
        for h in handles:
            h.remove()
    return {k: v[0].numpy() for k, v in out.items()}


@pytest.fixture(scope="module")
def sweep_setup(tmp_path_factory):
    torch.manual_seed(0)
    model = create_tiny("sk_tiny", num_classes=3).eval()
    rng = np.random.default_rng(11)
    root = tmp_path_factory.mktemp("sweep") / "images"
    counts = {"a": 4, "b": 1, "c": 2}  # unequal classes
    files = []
    for k, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 256, (40 + 3 * i, 56 + 5 * k, 3), dtype=np.uint8)
            p = root / name / f"{i}.png"
            Image.fromarray(arr).save(p)
            files.append((p, k))
    res = scale_sweep(model, root, preprocess=CFG, per_image=True, batch_size=3, progress=False)
    return model, files, res


def test_sweep_d_and_its_statistics_against_hand_views_and_loops(sweep_setup):
    model, files, res = sweep_setup
    assert res.class_count.tolist() == [4, 1, 2]
    aliases = res.site_aliases
    n = len(files)
    d = {a: np.zeros((n, len(SCALES))) for a in aliases}
    for i, (path, _) in enumerate(files):
        with Image.open(path) as im:
            views = _hand_views(im.convert("RGB"))
        for si, view in enumerate(views):
            att = _sk_attention(model, _normalise(view))
            for a in aliases:
                m, c = att[a].shape
                b_mean = sum(att[a][m - 1, ch] for ch in range(c)) / c
                a_mean = sum(att[a][0, ch] for ch in range(c)) / c
                d[a][i, si] = b_mean - a_mean
    labels = [k for _, k in files]
    for a in aliases:
        np.testing.assert_allclose(res.image_d[a], d[a], atol=2e-6)
        for si in range(len(SCALES)):
            col = [d[a][i, si] for i in range(n)]
            mean = sum(col) / n
            var = sum((v - mean) ** 2 for v in col) / (n - 1)
            assert res.d_mean[a][si] == pytest.approx(mean, abs=2e-6)
            assert res.d_std[a][si] == pytest.approx(math.sqrt(var), abs=2e-6)
            assert res.d_sem[a][si] == pytest.approx(math.sqrt(var) / math.sqrt(n), abs=2e-6)
            for k in range(3):
                vals = [d[a][i, si] for i in range(n) if labels[i] == k]
                nk = len(vals)
                km = sum(vals) / nk
                assert res.class_d_mean[a][si, k] == pytest.approx(km, abs=2e-6)
                if nk < 2:
                    assert math.isnan(res.class_d_sem[a][si, k])
                else:
                    ksd = math.sqrt(sum((v - km) ** 2 for v in vals) / (nk - 1))
                    assert res.class_d_sem[a][si, k] == pytest.approx(ksd / math.sqrt(nk), abs=2e-6)


# -- excitation -----------------------------------------------------------------------------------
def _gates(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per SE site (B, C) gate values with plain hooks on each site's ``gate`` submodule, and
    the logits."""
    out: dict[str, list] = {}
    handles = []
    for site in attnviz.find_sites(model):
        mod = model.get_submodule(site.name)
        gate = getattr(mod, "gate", None) or getattr(mod, "sigmoid", None)
        assert gate is not None, site.name

        def hook(m, inputs, output, key=site.alias):
            out.setdefault(key, []).append(output.detach().double().reshape(output.shape[0], -1))

        handles.append(gate.register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return {k: torch.cat(v).numpy() for k, v in out.items()}, logits.numpy()


def _spec_by_loops(v: np.ndarray, lab: list[int], k_classes: int = 4) -> float:
    """mean over channels of the std (ddof 0) over classes of the class means, over the mean
    over channels of the all-image std, by loops."""
    n, c = v.shape
    spread = 0.0
    for ch in range(c):
        means = []
        for k in range(k_classes):
            vals = [v[i, ch] for i in range(n) if lab[i] == k]
            means.append(sum(vals) / len(vals))
        mm = sum(means) / k_classes
        spread += math.sqrt(sum((q - mm) ** 2 for q in means) / k_classes)
    total = 0.0
    for ch in range(c):
        m = sum(v[i, ch] for i in range(n)) / n
        total += math.sqrt(sum((v[i, ch] - m) ** 2 for i in range(n)) / n)
    return (spread / c) / (total / c)


@pytest.fixture(scope="module")
def se_setup():
    torch.manual_seed(0)
    model = create_tiny("se_tiny", num_classes=4, zero_init_residual=False).eval()
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (11, 3, 32, 32), generator=g).float() / 255
    labels = [0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 3]  # 5, 2, 3, 1 images
    return model, x, labels


def test_excitation_statistics_against_numpy_loops(se_setup):
    model, x, labels = se_setup
    perms = 7
    res = excitation_profile(
        model, x, labels=labels, sites="all", permutations=perms, seed=3, progress=False
    )
    gates, _ = _gates(model, x)
    assert res.counts.tolist() == [5, 2, 3, 1]
    n = len(labels)
    for s in res.sites:
        v = gates[s.alias]
        c = v.shape[1]
        for ch in range(c):
            col = [v[i, ch] for i in range(n)]
            m = sum(col) / n
            assert s.mean[ch] == pytest.approx(m, abs=1e-9)
            assert s.std[ch] == pytest.approx(
                math.sqrt(sum((t - m) ** 2 for t in col) / n), abs=1e-7
            )
            for k in range(4):
                vals = [v[i, ch] for i in range(n) if labels[i] == k]
                km = sum(vals) / len(vals)
                ksd = math.sqrt(sum((t - km) ** 2 for t in vals) / len(vals))
                assert s.class_mean[k, ch] == pytest.approx(km, abs=1e-9)
                assert s.class_std[k, ch] == pytest.approx(ksd, abs=1e-7)

        # specificity: mean over channels of the std over classes of the class means, over the
        # mean over channels of the all-image std
        assert s.specificity == pytest.approx(_spec_by_loops(v, labels), rel=1e-6)
        rng = np.random.default_rng(3)
        null = [_spec_by_loops(v, [labels[j] for j in rng.permutation(n)]) for _ in range(perms)]
        np.testing.assert_allclose(s.null, null, rtol=1e-5)
        above = sum(1 for q in null if q >= s.specificity - 1e-12)
        assert s.controls()["p_value"] == pytest.approx((1 + above) / (1 + perms))
    # the analytic chance level with unequal classes: sqrt((K-1)/K * mean_k 1/n_k)
    inv = sum(1.0 / k for k in (5, 2, 3, 1)) / 4
    assert res.specificity_chance() == pytest.approx(math.sqrt(3 / 4 * inv), rel=1e-12)
    assert res.specificity_chance() != pytest.approx(math.sqrt(3 / 4 / (11 / 4)), rel=1e-3)


def test_label_source_mixed_uses_predictions_only_where_labels_are_missing(se_setup):
    model, x, labels = se_setup
    _, logits = _gates(model, x)
    pred = logits.argmax(1)
    known = [0, 1, 2, 3, 4, 5]  # labels for these; the others are classified by the model
    items = [(x[i], labels[i]) if i in known else x[i] for i in range(len(x))]
    with pytest.warns(UserWarning, match="predictions"):
        res = excitation_profile(
            model, items, sites="all", permutations=0, preprocess=TF.to_tensor, progress=False
        )
    assert res.label_source == "mixed"
    used = [labels[i] if i in known else int(pred[i]) for i in range(len(x))]
    expected = {k: used.count(k) for k in sorted(set(used))}
    assert dict(zip(res.classes, res.counts.tolist())) == expected
    assert "labels where known" in res.summary() and "WARNING" in res.summary()
    gates, _ = _gates(model, x)
    s = res.sites[0]
    for row, k in enumerate(res.classes):
        idx = [i for i in range(len(x)) if used[i] == k]
        np.testing.assert_allclose(s.class_mean[row], gates[s.alias][idx].mean(0), atol=1e-9)
    # all given / none given
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        given = excitation_profile(model, x, labels=labels, sites="all", permutations=0,
                                   progress=False)  # fmt: skip
    assert given.label_source == "given"
    with pytest.warns(UserWarning):
        none = excitation_profile(model, x, sites="all", permutations=0, progress=False)
    assert none.label_source == "prediction"


# -- Non-local: statistics and reductions from the block's weights -------------------------------
def _nl(mode: str) -> nn.Module:
    torch.manual_seed(1)
    block = NonLocalBlock(6, mode=mode)
    for conv in (block.theta, block.phi):
        nn.init.normal_(conv.weight, 0.0, 0.6)
    nn.init.normal_(block.W_z[1].weight, 0.0, 1.0)  # a non-zero block output
    return nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), block).eval()


def _nl_by_hand(model: nn.Module, x: torch.Tensor):
    """(features x (N, C), block output o - x (N, C), attention (N, N)) from the weights."""
    stem, block = model[0], model[1]
    with torch.no_grad():
        f = stem(x[None]).double()
        th = F.conv2d(f, block.theta.weight.double(), block.theta.bias.double())[0]
        ph = F.conv2d(f, block.phi.weight.double(), block.phi.bias.double())[0]
        out = block(f.float()).double()[0]
    c, h, w = f.shape[1:]
    th, ph = th.reshape(-1, h * w).T.numpy(), ph.reshape(-1, h * w).numpy()
    logits = th @ ph
    if block.mode == "dot_product":
        att = logits / (h * w)
    else:
        e = np.exp(logits - logits.max(1, keepdims=True))
        att = e / e.sum(1, keepdims=True)
    xs = f[0].reshape(c, -1).T.numpy()
    return xs, out.reshape(c, -1).T.numpy() - xs, att


def _pair_cos_distance(v: np.ndarray, diagonal: bool) -> float:
    n = v.shape[0]
    total, count = 0.0, 0
    for i in range(n):
        for j in range(n):
            if i == j and not diagonal:
                continue
            cos = float(v[i] @ v[j] / (np.linalg.norm(v[i]) * np.linalg.norm(v[j])))
            total += (1 - cos) / 2
            count += 1
    return total / count


@pytest.mark.parametrize("diagonal", [True, False])
def test_query_independence_pairs_with_and_without_the_diagonal(diagonal):
    model = _nl("embedded_gaussian")
    x = torch.randn(2, 3, 7, 10)  # a 4x5 query grid
    res = query_independence(model, x, include_diagonal=diagonal, exact=True, progress=False)
    assert res.include_diagonal is diagonal
    for i in range(2):
        xs, o, att = _nl_by_hand(model, x[i])
        n = att.shape[0]
        assert res.values["cos_input"][i, 0] == pytest.approx(_pair_cos_distance(xs, diagonal))
        assert res.values["cos_output"][i, 0] == pytest.approx(
            _pair_cos_distance(o, diagonal), abs=1e-6
        )
        assert res.values["cos_att"][i, 0] == pytest.approx(
            _pair_cos_distance(att, diagonal), abs=1e-6
        )
        jsd, cnt = 0.0, 0
        for a in range(n):
            for b in range(n):
                if a == b and not diagonal:
                    continue
                m = (att[a] + att[b]) / 2
                jsd += 0.5 * np.sum(att[a] * np.log(att[a] / m)) + 0.5 * np.sum(
                    att[b] * np.log(att[b] / m)
                )
                cnt += 1
        assert res.values["jsd_att"][i, 0] == pytest.approx(jsd / cnt, abs=1e-6)
    assert ("pairs i != j" in res.summary()) is (not diagonal)


def test_spatial_mean_reduction_on_a_non_local_site_averages_over_keys():
    model = _nl("dot_product")  # rows are not distributions: their means differ per query
    x = torch.randn(3, 7, 10)
    _, _, att = _nl_by_hand(model, x)
    with attnviz.capture(model, reduce="spatial_mean") as cache, torch.no_grad():
        model(x[None])
    (got,) = cache.values()
    assert got.shape == (1, att.shape[0])  # one value per query row
    np.testing.assert_allclose(got[0].numpy(), att.mean(axis=1), rtol=1e-4, atol=1e-7)
    assert np.ptp(att.mean(axis=1)) > 1e-4  # so averaging the wrong axis would show
    with attnviz.capture(model, reduce="mean") as cache, torch.no_grad():
        model(x[None])
    assert float(next(iter(cache.values()))[0]) == pytest.approx(att.mean(), rel=1e-4)


def test_dot_product_attention_is_divided_by_the_number_of_keys():
    model = _nl("dot_product")
    x = torch.randn(3, 8, 12)
    _, _, att = _nl_by_hand(model, x)  # theta . phi / N
    with attnviz.capture(model) as cache, torch.no_grad():
        model(x[None])
    np.testing.assert_allclose(next(iter(cache.values()))[0].numpy(), att, rtol=1e-4, atol=1e-7)
