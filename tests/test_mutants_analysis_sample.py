"""Class tests for the survivors of a 30-mutant sample of ``attnviz/analysis`` (issue 26).

Bug classes caught: options an analysis forwards to its second pass (ablation's reference
pass), edges of the result tables (a GC site without query cells, NaN / one-value columns,
the site's own compare grid against Grad-CAM's), defaults of absent manifest keys when an
older result folder is loaded, and the text surface of summaries (a reviewed golden in
``tests/golden/analysis_sample.json``; regenerate with ``ATTNVIZ_UPDATE_GOLDEN=1``).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from golden_testing import UPDATE, read_golden
from torch import nn

from attnviz.analysis.attribution import AttentionVsAttributionResult
from attnviz.analysis.query_independence import (
    EXACT_ROWS,
    JSD_PAIRS,
    QueryIndependenceResult,
)
from attnviz.analysis.query_maps import QueryMapsResult

NAN = math.nan
# the package exports a function named like the module: import the module itself
ablation_mod = importlib.import_module("attnviz.analysis.ablation")
GOLDEN = Path(__file__).parent / "golden" / "analysis_sample.json"
CASES = ("attribution_summary", "gc_query_summary", "point_query_summary")


# ----------------------------------------------------------------------------- hand references
def _chance(top_k: float, cells: int) -> float:
    """Expected IoU of two random top-k regions of ``cells`` cells (hypergeometric, by loop)."""
    n = max(1, math.ceil(top_k * cells - 1e-9))
    total = 0.0
    for x in range(max(0, 2 * n - cells), n + 1):
        pmf = math.comb(n, x) * math.comb(cells - n, n - x) / math.comb(cells, n)
        total += pmf * x / (2 * n - x)
    return total


def _mean_se_std(col: np.ndarray) -> tuple[float, float, float, int]:
    vals = [float(v) for v in col if math.isfinite(v)]
    n = len(vals)
    if not n:
        return NAN, NAN, NAN, 0
    mean = sum(vals) / n
    pop = math.sqrt(sum((v - mean) ** 2 for v in vals) / n)
    se = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) / math.sqrt(n) if n > 1 else NAN
    return mean, se, pop, n


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


# ----------------------------------------------------------------------------- attribution
def _attribution(meta=None) -> AttentionVsAttributionResult:
    """Three sites: own 3x5 compare grid; none (Grad-CAM's 2x7 grid); one with no finite IoU.
    Five images, NaNs in different places per column, one column with a single finite value."""
    rho = np.array(
        [[0.2, NAN, 0.9], [0.4, -0.3, NAN], [0.7, NAN, NAN], [NAN, NAN, NAN], [0.1, NAN, NAN]]
    )
    iou = np.array(
        [[0.5, 0.1, NAN], [0.3, 0.2, NAN], [NAN, 0.6, NAN], [0.4, NAN, NAN], [0.9, 0.25, NAN]]
    )
    sites = [
        {"alias": "CBAM_S_5_2", "name": "a", "kind": "cbam_spatial", "grid": [6, 10],
         "compare_grid": [3, 5]},
        {"alias": "GC_5_2", "name": "b", "kind": "gc", "grid": [1, 1], "compare_grid": []},
        {"alias": "GC_4_1", "name": "c", "kind": "gc"},
    ]  # fmt: skip
    n = rho.shape[0]
    return AttentionVsAttributionResult(
        sites=sites, layer="layer4", top_k=0.3, ids=[f"#{i}" for i in range(n)],
        labels=np.array([0, 1, 1, -1, 2]), predictions=np.array([0, 1, 2, 2, 2]),
        targets=np.array([0, 1, 1, 2, 2]), target_source="mixed", spearman=rho, iou=iou,
        gradcam=np.zeros((0, 1, 1)), attention=np.zeros((3, 0, 1, 1)),
        images=np.zeros((0, 1, 1, 3), np.uint8),
        meta={"gradcam_grid": [2, 7]} if meta is None else meta, compare_at="input",
    )  # fmt: skip


def test_attribution_effects_and_site_summary_equal_hand_statistics():
    res = _attribution()
    cells = {"CBAM_S_5_2": 15, "GC_5_2": 14, "GC_4_1": 14}  # own grid, else Grad-CAM's
    eff = res.effects()
    assert list(eff.columns) == ["site", "metric", "effect", "se", "n"]
    assert list(zip(eff["site"], eff["metric"])) == [
        (a, m) for a in cells for m in ("spearman", "iou_above_chance")
    ]
    summ = res.site_summary().set_index("site")
    for j, (alias, n_cells) in enumerate(cells.items()):
        chance = _chance(0.3, n_cells)
        rm, rse, rstd, rn = _mean_se_std(res.spearman[:, j])
        im, ise, istd, i_n = _mean_se_std(res.iou[:, j])
        got = eff[eff["site"] == alias].set_index("metric")
        for metric, (m, se, n) in (
            ("spearman", (rm, rse, rn)),
            ("iou_above_chance", (im - chance, ise, i_n)),
        ):
            assert _same(float(got.loc[metric, "effect"]), m), (alias, metric)
            assert _same(float(got.loc[metric, "se"]), se), (alias, metric)
            assert int(got.loc[metric, "n"]) == n
        row = summ.loc[alias]
        assert int(row["n"]) == rn
        for key, want in (("spearman_mean", rm), ("spearman_std", rstd), ("iou_mean", im),
                          ("iou_std", istd), ("iou_chance", chance)):  # fmt: skip
            assert _same(float(row[key]), want), (alias, key)
        assert row["kind"] == res.sites[j]["kind"] and row["layer"] == "layer4"
        assert row["top_k"] == 0.3 and row["gradcam_grid"] == "2x7"
    assert list(summ["attention_grid"]) == ["6x10", "1x1", "?"]
    assert list(summ["compare_grid"]) == ["3x5", "?", "?"]


def test_attribution_without_any_grid_takes_one_cell():
    res = _attribution(meta={})
    eff = res.effects().set_index(["site", "metric"])
    # one cell: both top-k regions are that cell, chance 1
    m, _, _, _ = _mean_se_std(res.iou[:, 1])
    assert _same(float(eff.loc[("GC_5_2", "iou_above_chance"), "effect"]), m - 1.0)
    assert res.site_summary()["iou_chance"].tolist()[1:] == [1.0, 1.0]
    assert res.site_summary()["gradcam_grid"].tolist() == ["?", "?", "?"]


def test_attribution_without_sites_has_empty_tables_with_their_columns():
    res = _attribution()
    res.sites, res.spearman, res.iou = [], np.zeros((5, 0)), np.zeros((5, 0))
    eff = res.effects()
    assert eff.empty and list(eff.columns) == ["site", "metric", "effect", "se", "n"]
    assert res.to_frame().empty


def test_attribution_frame_has_one_row_per_image_and_site():
    res = _attribution()
    frame = res.to_frame()
    assert len(frame) == 5 * 3
    for k, (_, r) in enumerate(frame.iterrows()):
        i, j = divmod(k, 3)
        assert r["image"] == f"#{i}" and r["site"] == res.sites[j]["alias"]
        assert (r["label"], r["prediction"], r["target"]) == (
            res.labels[i], res.predictions[i], res.targets[i])  # fmt: skip
        assert _same(r["spearman"], res.spearman[i, j]) and _same(r["iou"], res.iou[i, j])
        assert r["kind"] == res.sites[j]["kind"]


# ----------------------------------------------------------------------------- query maps
def _gc_query() -> QueryMapsResult:
    """A GC site: one context map (Q = 1) on a 3x4 key grid and no query points."""
    grid = np.array([[[0.05, 0.1, 0.0, 0.05], [0.1, 0.3, 0.05, 0.05], [0.1, 0.1, 0.05, 0.05]]])
    return QueryMapsResult(
        image=np.zeros((6, 8, 3), np.uint8), maps=np.zeros((1, 6, 8), np.float32),
        grid_maps=grid.astype(np.float32), query_cells=np.zeros((0, 2), np.int64),
        query_pixels=np.zeros((0, 2), np.float32), site={"alias": "GC_3_1", "kind": "gc"},
        is_distribution=True,
    )  # fmt: skip


def _point_query() -> QueryMapsResult:
    """Two queries on a 2x3 key grid, not distributions (Non-local embedded Gaussian off)."""
    grid = np.array([[[0.1, 0.9, 0.2], [0.3, 0.0, 0.4]], [[1.0, 0.2, 0.2], [0.3, 2.0, 0.1]]])
    return QueryMapsResult(
        image=np.zeros((5, 9, 3), np.uint8), maps=np.zeros((2, 5, 9), np.float32),
        grid_maps=grid.astype(np.float32), query_cells=np.array([[0, 2], [1, 0]]),
        query_pixels=np.array([[1.25, 7.5], [3.75, 1.5]], np.float32),
        site={"alias": "NL_2_1", "kind": "nonlocal"}, is_distribution=False,
    )  # fmt: skip


def test_gc_site_frame_has_no_cells_and_a_hand_entropy():
    res = _gc_query()
    frame = res.to_frame()
    assert len(frame) == 1
    row = frame.iloc[0]
    for key in ("cell_y", "cell_x", "pixel_y", "pixel_x"):
        assert row[key] is None, key
    p = res.grid_maps[0].astype(np.float64).ravel()
    want = -sum(v * math.log(v) for v in p if v > 0)
    assert math.isclose(row["entropy"], want, rel_tol=1e-6)
    assert (row["argmax_y"], row["argmax_x"]) == (1, 1)
    assert math.isclose(row["max"], 0.3, rel_tol=1e-6)
    assert row["site"] == "GC_3_1" and row["query"] == 0


def test_point_queries_frame_reads_cells_pixels_and_argmax_by_axis():
    res = _point_query()
    frame = res.to_frame()
    assert "entropy" not in frame.columns and "prefix_weight" not in frame.columns
    for q in range(2):
        r = frame.iloc[q]
        g = res.grid_maps[q]
        ky, kx = max(((y, x) for y in range(2) for x in range(3)), key=lambda t: g[t])
        assert (r["cell_y"], r["cell_x"]) == tuple(int(v) for v in res.query_cells[q])
        assert (r["pixel_y"], r["pixel_x"]) == tuple(float(v) for v in res.query_pixels[q])
        assert (r["argmax_y"], r["argmax_x"]) == (ky, kx)
        assert math.isclose(r["max"], float(g.max()))


# ----------------------------------------------------------------------------- summaries
def _summaries() -> dict[str, str]:
    return {
        "attribution_summary": _attribution().summary(),
        "gc_query_summary": _gc_query().summary(),
        "point_query_summary": _point_query().summary(),
    }


@pytest.mark.parametrize("case", CASES)
def test_summary_text_matches_its_reviewed_golden(case, golden_updates):
    got = _summaries()[case]
    if UPDATE:
        golden_updates[case] = {"text": got}
        return
    golden = read_golden(GOLDEN)
    assert case in golden, f"no golden for {case}: regenerate with ATTNVIZ_UPDATE_GOLDEN=1"
    assert got == golden[case]["text"]


def test_attribution_summary_names_the_source_and_the_comparison():
    text = _attribution().summary()
    lines = text.splitlines()
    assert lines[0].startswith("5 images, Grad-CAM at layer4 for the mixed class; top-30% IoU")
    assert "compared at the input size (both maps upsampled, bilinear)" in lines[1]
    # the table has no index column: its rows start with the site alias
    assert [ln.split()[0] for ln in lines[3:]] == ["CBAM_S_5_2", "GC_5_2", "GC_4_1"]
    coarse = _attribution()
    coarse.compare_at = "coarser"
    assert "coarser grid of the two (the finer map average-pooled to it)" in coarse.summary()


# ----------------------------------------------------------------------------- old manifests
def _independence() -> QueryIndependenceResult:
    cos = np.array([[0.1, 0.3], [NAN, 0.2], [0.2, 0.4]])
    return QueryIndependenceResult(
        "m", [{"alias": "NL_1", "name": "a", "kind": "nonlocal"},
              {"alias": "NL_2", "name": "b", "kind": "nonlocal"}],
        ["cos_att"], {"cos_att": cos}, ids=["a", "b", "c"], skipped=[("d.png", "unreadable")],
        jsd_se=np.array([[0.01, 0.0], [0.02, 0.0], [0.0, 0.03]]),
        exact_rows=64, jsd_pairs=100, seed=5, meta={"x": 1}, include_diagonal=True,
        notes={"NL_2": "a note"}, map_site={"alias": "NL_1", "kind": "nonlocal",
                                           "query_grid": [2, 3], "is_distribution": True},
        map_cells=np.array([[0, 2], [1, 0]]), map_images=np.full((1, 4, 6, 3), 7, np.uint8),
        map_grid_maps=np.arange(12, dtype=np.float32).reshape(1, 2, 2, 3) / 66,
    )  # fmt: skip


def test_independence_manifest_without_sampling_keys_loads_their_defaults(tmp_path):
    """Folders written before the JSD was sampled lack exact_rows / jsd_pairs / seed / se."""
    res = _independence()
    folder = res.save(tmp_path / "qi")
    back = QueryIndependenceResult.load(folder)
    for f in dataclasses.fields(res):  # every field comes back, none left at its default
        a, b = getattr(res, f.name), getattr(back, f.name)
        if f.name == "values":
            assert a.keys() == b.keys()
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])
        elif isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=f.name)
        elif f.name == "skipped":
            assert [tuple(x) for x in b] == a
        else:
            assert json.loads(json.dumps(a)) == json.loads(json.dumps(b)), f.name
    assert (back.exact_rows, back.jsd_pairs, back.seed) == (64, 100, 5)
    assert [tuple(x) for x in back.skipped] == [("d.png", "unreadable")]
    np.testing.assert_array_equal(back.jsd_se, res.jsd_se)
    # the oldest folders have no pair-sampling s.e. array either: an empty (0, 0) one
    npz = folder / f"{QueryIndependenceResult.kind}.npz"
    with np.load(npz, allow_pickle=False) as z:
        assert "jsd::se" in z.files
        arrays = {k: z[k] for k in z.files if k != "jsd::se"}
    np.savez(npz, **arrays)
    manifest = json.loads((folder / "manifest.json").read_text())
    for key in ("exact_rows", "jsd_pairs", "seed", "ids", "notes", "map_site"):
        manifest.pop(key, None)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    old = QueryIndependenceResult.load(folder)
    assert (old.exact_rows, old.jsd_pairs, old.seed) == (EXACT_ROWS, JSD_PAIRS, 0)
    assert old.ids == [] and old.notes == {} and old.map_site is None
    assert old.jsd_se.shape == (0, 0)
    np.testing.assert_array_equal(old.values["cos_att"], res.values["cos_att"])


# ----------------------------------------------------------------------------- ablation options
def test_ablation_reference_pass_gets_the_input_options(monkeypatch, tmp_path):
    """The mean / shuffle reference pass reads the same images the same way: preprocess,
    batch_size, workers, limit, strict and exclude reach it; the rest (checkpoint...) not."""
    from attnviz.blocks import SEBlock

    calls = []
    real = ablation_mod.reference_attention

    def spy(model, images, sites, **kw):
        calls.append(kw)
        return real(model, images, sites, **kw)

    monkeypatch.setattr(ablation_mod, "reference_attention", spy)
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 4, 3, padding=1), SEBlock(4, reduction=2), nn.AdaptiveAvgPool2d(1)]
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(4, 3)).eval()
    images = torch.rand(4, 3, 9, 14)
    options = {"preprocess": None, "batch_size": 3, "workers": 0, "limit": 3,
               "strict": True, "exclude": [str(tmp_path / "nowhere")]}  # fmt: skip
    result = ablation_mod.ablation(
        model, images, policies=["mean"], bank=2, progress=False, **options
    )
    assert len(calls) == 1
    assert calls[0] == {**options, "progress": False, "bank": 2}
    # the main pass gets them too (limit=3 of the 4 images), and meta names what ran
    assert result.n_images == 3
    assert result.meta["groups"] == list(result.groups) and len(result.groups) >= 1
    assert result.meta["policies"] == result.policies


# ----------------------------------------------------------------------------- stage order
def test_stage_last_sites_takes_the_highest_block_and_keeps_the_first_of_ties():
    """None counts as block 0; equal blocks keep the first site in model order; stages come
    out sorted; sites without a stage are left out (all sites when none has one)."""
    from attnviz.analysis.scale_sweep import SweepSite, stage_last_sites

    def site(alias, stage, block):
        return SweepSite(alias, alias.lower(), stage, block, branches=2, channels=4)

    sites = [site("A", 3, None), site("B", 3, 0), site("C", 2, 1), site("D", 2, 4),
             site("E", 2, 2), site("F", None, 9), site("G", 4, 0), site("H", 4, None),
             site("I", 1, None), site("J", 1, 1)]  # fmt: skip
    assert stage_last_sites(sites) == ["J", "D", "A", "G"]
    free = [site("X", None, 1), site("Y", None, None)]
    assert stage_last_sites(free) == ["X", "Y"]
    assert stage_last_sites([]) == []
