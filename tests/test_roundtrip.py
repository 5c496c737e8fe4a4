"""One generic round trip for every result class: every array, frame and field after save/load.

Each result comes from a small real run with every optional part filled (per-image arrays,
permutation nulls, squeeze inputs, query maps, skipped files, class names, unequal classes),
and a test first checks that no field is empty, so the comparison can fail on each of them.
Then ``load(save(r))`` must equal ``r`` field by field (arrays with dtype and NaNs, nested
dicts / lists / dataclasses), and every csv the folder holds must equal the frame it was
written from. The csv columns are checked against fixed lists too, so dropping a column from
``to_frame`` (which would also drop it on both sides of the comparison) fails.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

import attnviz
from attnviz.analysis.ablation import (
    AblationResult,
    ReferenceResult,
    ablation,
    reference_attention,
)
from attnviz.analysis.attribution import (
    AttentionVsAttributionResult,
    GradCamComparisonResult,
    attention_vs_attribution,
    gradcam_comparison,
)
from attnviz.analysis.excitation import ExcitationProfileResult, excitation_profile
from attnviz.analysis.query_independence import QueryIndependenceResult, query_independence
from attnviz.analysis.query_maps import QueryMapsResult, query_maps
from attnviz.analysis.replicates import ReplicatesResult
from attnviz.analysis.rollout import RolloutResult, rollout
from attnviz.analysis.scale_sweep import ScaleSweepResult, scale_sweep
from attnviz.models.tiny import create_tiny
from attnviz.results import Result

CFG = dict(input_size=(3, 32, 32), crop_pct=1.0, interpolation="bilinear")

# fields that are legitimately empty / None for the runs below (with the reason)
MAY_BE_EMPTY = {
    # the tiny runs have no unreadable files except where a bad file is passed on purpose
    "QueryMapsResult": {"meta"},
    # a Result without a skipped list: the reference pass keeps sums and a bank only
}


def _images(n: int, size: tuple[int, int], seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(n)]


def _with_bad_file(tmp_path: Path, images: list[Image.Image]) -> list:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    return [*images, bad]


def _folder(tmp_path: Path, counts: dict[str, int], size: tuple[int, int], seed: int) -> Path:
    """Class folders with ``counts`` images each (unequal) and one unreadable file."""
    root = tmp_path / "images"
    images = iter(_images(sum(counts.values()), size, seed))
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            next(images).save(root / name / f"{i}.png")
    (root / "a" / "broken.png").write_bytes(b"not a png")
    return root


# -- the results ------------------------------------------------------------------------------
def _sweep(tmp_path: Path) -> ScaleSweepResult:
    torch.manual_seed(0)
    model = create_tiny("sk_tiny", num_classes=3).eval()
    # 40x48 images: the 1.5x / 2.0x crops need upsampling, so the controls are counted
    folder = _folder(tmp_path, {"a": 3, "b": 1, "c": 2}, (40, 48), 1)
    # object boxes by source position: some inside the 2.0x crop, some clipped by it
    boxes = {i: (14 + i, 16, 26 + 2 * i, 30) for i in range(7)}
    res = scale_sweep(model, folder, per_image=True, preprocess=CFG, progress=False, boxes=boxes)
    res.view_records = [{"image": i, "scale": 1.0, "upsampling": 1.0} for i in res.image_ids]
    return res


def _excitation(tmp_path: Path) -> ExcitationProfileResult:
    torch.manual_seed(0)
    model = create_tiny("se_tiny", num_classes=3, zero_init_residual=False).eval()
    return excitation_profile(
        model,
        _folder(tmp_path, {"a": 4, "b": 2, "c": 1}, (32, 32), 2),
        permutations=5,
        seed=7,  # not the default, so a lost seed shows
        preprocess=CFG,
        progress=False,
    )


def _nl_model() -> nn.Module:
    from attnviz.blocks import NonLocalBlock

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), NonLocalBlock(8, sub_sample=True)
    ).eval()


def _independence(tmp_path: Path) -> QueryIndependenceResult:
    from attnviz.blocks import NonLocalBlock

    images = _images(3, (23, 40), 3)
    model = nn.Sequential(*_nl_model(), NonLocalBlock(8, mode="dot_product")).eval()
    return query_independence(
        model,  # the dot-product site has no JSD: a note
        _with_bad_file(tmp_path, images),
        map_images=2,
        n_queries=4,
        exact_rows=8,  # sampled JSD: jsd_se is not all zero
        jsd_pairs=16,
        preprocess={"input_size": (3, 23, 40), "crop_pct": 1.0},
        progress=False,
        model_name="nl",
    )


def _token_vit() -> torch.nn.Module:
    """A ViT with a class and a register token on a 2 x 3 patch grid (per-head token maps)."""
    import timm

    torch.manual_seed(0)
    kw = dict(img_size=(16, 24), patch_size=8, depth=2, embed_dim=16, num_heads=2, reg_tokens=1)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, **kw).eval()


def _query_maps(tmp_path: Path) -> QueryMapsResult:
    """At a token site, so that the per-head and prefix-token fields are filled too."""
    x = torch.randn(3, 16, 24)
    return query_maps(_token_vit(), x, queries=[(3.0, 20.0), (12.0, 4.0)])


def _rollout(tmp_path: Path) -> RolloutResult:
    images = _with_bad_file(tmp_path, _images(3, (16, 24), 8))
    return rollout(
        _token_vit(),
        images,
        preprocess={"input_size": (3, 16, 24), "crop_pct": 1.0},
        map_images=2,
        progress=False,
        model_name="vit",
    )


def _attribution(tmp_path: Path) -> AttentionVsAttributionResult:
    torch.manual_seed(0)
    model = create_tiny("cbam_tiny", num_classes=3).eval()
    return attention_vs_attribution(
        model,
        _folder(tmp_path, {"a": 2, "b": 1, "c": 1}, (32, 32), 4),
        keep_maps=2,
        preprocess=CFG,
        progress=False,
    )


def _gradcam(tmp_path: Path) -> GradCamComparisonResult:
    torch.manual_seed(0)
    models = {
        "plain": create_tiny("plain_tiny", num_classes=3).eval(),
        "cbam": create_tiny("cbam_tiny", num_classes=3).eval(),
    }
    return gradcam_comparison(
        models,
        _folder(tmp_path, {"a": 2, "b": 1, "c": 1}, (32, 32), 5),
        keep_maps=2,
        preprocess=CFG,
        progress=False,
        masks=lambda i: np.pad(np.ones((8 + 2 * i, 10), np.float32), ((4, 20 - 2 * i), (6, 16))),
    )


def _ablation(tmp_path: Path) -> AblationResult:
    torch.manual_seed(0)
    model = create_tiny("se_tiny", num_classes=3).eval()
    folder = _folder(tmp_path, {"a": 3, "b": 2, "c": 2}, (32, 32), 6)
    return ablation(
        model,
        folder,
        sites=["SE_2_1", "stage:5"],
        preprocess=CFG,
        bank=3,
        batch_size=3,
        progress=False,
    )


def _reference(tmp_path: Path) -> ReferenceResult:
    torch.manual_seed(0)
    model = create_tiny("sk_tiny", num_classes=3).eval()
    sites = attnviz.find_sites(model)[:2]
    images = _images(4, (32, 32), 7)
    return reference_attention(model, images, sites, bank=3, preprocess=CFG, progress=False)


def _replicates(tmp_path: Path) -> ReplicatesResult:
    """The joined result of a trained sweep, one seed and one baseline (the same sweep three
    times: the round trip is about the folders, not the numbers)."""
    res = _sweep(tmp_path)
    return ReplicatesResult(res, {"seed1": res}, {"untrained:0": res}, meta={"model": "sk"})


MAKERS = {
    AblationResult: _ablation,
    ReferenceResult: _reference,
    ReplicatesResult: _replicates,
    ScaleSweepResult: _sweep,
    ExcitationProfileResult: _excitation,
    QueryIndependenceResult: _independence,
    QueryMapsResult: _query_maps,
    RolloutResult: _rollout,
    AttentionVsAttributionResult: _attribution,
    GradCamComparisonResult: _gradcam,
}

# columns each csv must hold (a dropped column fails here even though both sides agree)
CSV_COLUMNS = {
    "excitation.csv": ["site", "class_name", "label", "count", "channel", "mean", "std"],
    "specificity.csv": ["site", "class_spread", "specificity", "squeeze_specificity",
                        "gate_gain", "null_mean", "null_p95", "p_value"],
    "D.csv": ["site", "condition", "scale", "class", "n_images", "D", "D_sem", "D_std",
              "delta_D", "delta_D_se", "zoom_minus_control", "zoom_minus_control_se"],
    "channels.csv": ["site", "scale", "branch", "channel", "mean", "std"],
    "images.csv": ["image", "label", "site", "scale", "D"],
    "statistics.csv": ["site", "cos_input_mean", "cos_output_mean", "cos_att_mean",
                       "jsd_att_mean", "jsd_att_se"],
    "per_image.csv": ["image", "site", "cos_input", "cos_att", "jsd_att"],
    "queries.csv": ["query", "cell_y", "cell_x", "pixel_y", "pixel_x", "max", "argmax_y"],
    "rollout.csv": ["image", "id", "token", "prefix_mass", "entropy_norm", "max_share"],
}  # fmt: skip


def test_every_result_class_is_covered():
    """A new Result subclass must be added to MAKERS (and so to the round trip)."""

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    import attnviz.analysis  # noqa: F401  (imports every analysis module)

    found = {c for c in subclasses(Result) if c.__module__.startswith("attnviz.")}
    assert found == set(MAKERS)


# -- comparison ---------------------------------------------------------------------------------
def _empty(v) -> bool:
    if v is None:
        return True
    if isinstance(v, np.ndarray):
        return v.size == 0
    if isinstance(v, (dict, list, tuple, str)):
        return len(v) == 0
    return False


def assert_same(a, b, where: str = "result") -> None:
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
        return
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, f"{where}: shape {a.shape} != {b.shape}"
        assert a.dtype.kind == b.dtype.kind, f"{where}: dtype {a.dtype} != {b.dtype}"
        if a.dtype.kind == "f":
            np.testing.assert_array_equal(a, b, err_msg=where)  # NaNs in the same places
        else:
            assert np.array_equal(a, b), where
        return
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, obj=where)
        return
    if isinstance(a, dict):
        assert isinstance(b, dict), where
        assert sorted(map(str, a)) == sorted(map(str, b)), f"{where}: keys {list(a)} != {list(b)}"
        bb = {str(k): v for k, v in b.items()}
        for k, v in a.items():
            assert_same(v, bb[str(k)], f"{where}[{k!r}]")
        return
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)), f"{where}: {type(b)}"
        assert len(a) == len(b), f"{where}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
        return
    if isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
        return
    assert a == b, f"{where}: {a!r} != {b!r}"


def _json_normal(v):
    """What a value becomes after a JSON round trip (tuples -> lists, numpy -> python)."""
    from attnviz.results import json_default

    return json.loads(json.dumps(v, default=json_default))


_MADE: dict[type, tuple] = {}


def _make(cls, tmp_path_factory):
    if cls not in _MADE:
        tmp = tmp_path_factory.mktemp(cls.__name__)
        _MADE[cls] = (cls, MAKERS[cls](tmp), tmp)
    return _MADE[cls]


@pytest.fixture(params=list(MAKERS), ids=lambda c: c.__name__)
def made(request, tmp_path_factory):
    return _make(request.param, tmp_path_factory)


def test_no_field_is_empty(made):
    cls, res, _ = made
    assert type(res) is cls
    allowed = MAY_BE_EMPTY.get(cls.__name__, set())
    empty = [f.name for f in dataclasses.fields(res) if _empty(getattr(res, f.name))]
    assert set(empty) <= allowed, f"{cls.__name__}: empty fields {empty} make the check vacuous"
    # per-site dict fields hold an entry for every site, none empty
    for f in dataclasses.fields(res):
        v = getattr(res, f.name)
        if isinstance(v, dict) and v and all(isinstance(x, np.ndarray) for x in v.values()):
            assert all(x.size for x in v.values()), f.name


def test_save_load_restores_every_field_and_csv(made):
    cls, res, tmp = made
    folder = res.save(tmp / "saved")
    back = cls.load(folder)
    # fields that went through JSON compare in their JSON form (tuples become lists)
    for f in dataclasses.fields(res):
        a, b = getattr(res, f.name), getattr(back, f.name)
        if isinstance(a, (dict, list)) and not (
            isinstance(a, dict) and a and all(isinstance(x, np.ndarray) for x in a.values())
        ):
            if a and all(dataclasses.is_dataclass(x) for x in a):
                assert_same(a, b, f.name)
            elif isinstance(a, list) and a and isinstance(a[0], tuple):
                assert_same([list(x) for x in a], [list(x) for x in b], f.name)
            else:
                assert _json_normal(a) == _json_normal(b), f.name
        else:
            assert_same(a, b, f"{cls.__name__}.{f.name}")
    # a second round trip is exact, including the JSON-side fields
    again = cls.load(back.save(tmp / "again"))
    assert_same(back, again)
    # every csv equals the frame it was written from, and has its columns
    manifest = json.loads((folder / "manifest.json").read_text())
    csvs = sorted(p.name for p in folder.glob("*.csv"))
    assert csvs and set(csvs) <= set(manifest["files"])
    _, frames, _ = res._payload()
    assert sorted(frames) == csvs
    for name in csvs:
        on_disk = pd.read_csv(folder / name)
        written = pd.read_csv(__import__("io").StringIO(frames[name].to_csv(index=False)))
        pd.testing.assert_frame_equal(on_disk, written, obj=name)
        reloaded = pd.read_csv(
            __import__("io").StringIO(back._payload()[1][name].to_csv(index=False))
        )
        pd.testing.assert_frame_equal(on_disk, reloaded, obj=f"{name} after load")
        missing = [c for c in CSV_COLUMNS.get(name, []) if c not in on_disk.columns]
        assert not missing, f"{name} lacks {missing}"


def test_a_manifest_without_meta_loads_with_empty_meta(made):
    """Older folders have no "meta" field: they load with meta == {}."""
    cls, res, tmp = made
    folder = res.save(tmp / "no-meta")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "meta" in manifest
    del manifest["meta"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert cls.load(folder).meta == {}


def test_excitation_csv_holds_the_arrays(tmp_path_factory):
    """The excitation table's mean / std columns are the site arrays (class rows and 'all')."""
    _, res, tmp = _make(ExcitationProfileResult, tmp_path_factory)
    frame = pd.read_csv(res.save(tmp / "csv") / "excitation.csv")
    for s in res.sites:
        rows = frame[frame["site"] == s.alias]
        every = rows[rows["class_name"] == "all"].sort_values("channel")
        np.testing.assert_allclose(every["mean"], s.mean, rtol=1e-12)
        np.testing.assert_allclose(every["std"], s.std, rtol=1e-12)
        for k, name in enumerate(res.class_names):
            part = rows[rows["class_name"] == name].sort_values("channel")
            np.testing.assert_allclose(part["mean"], s.class_mean[k], rtol=1e-12)
            np.testing.assert_allclose(part["std"], s.class_std[k], rtol=1e-12)
            assert (part["count"] == res.counts[k]).all()
        assert not np.allclose(s.class_std, s.class_mean)  # a swap would show


def test_sweep_csv_holds_d_std_and_class_sem(tmp_path_factory):
    _, res, tmp = _make(ScaleSweepResult, tmp_path_factory)
    frame = pd.read_csv(res.save(tmp / "csv") / "D.csv")
    for u in res.sites:
        for si, s in enumerate(res.scales):
            rows = frame[(frame.site == u.alias) & (frame.scale == s)]
            rows = rows[rows.condition == "zoom"]
            every = rows[rows["class"] == "all"].iloc[0]
            assert every["D_std"] == pytest.approx(res.d_std[u.alias][si], rel=1e-12)
            for k, name in enumerate(res.class_names):
                row = rows[rows["class"] == name].iloc[0]
                sem = res.class_d_sem[u.alias][si, k]
                assert (math.isnan(sem) and math.isnan(row["D_sem"])) or row[
                    "D_sem"
                ] == pytest.approx(sem, rel=1e-12)


def test_attnviz_exports_the_result_classes():
    for cls in MAKERS:
        assert getattr(attnviz, cls.__name__, cls) is cls
