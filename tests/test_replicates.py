"""Baselines, seed replicates and the joined effect table (issue 21 items 1-3)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
import torch

from attnviz.analysis.replicates import ReplicatesResult, run_replicates
from attnviz.analysis.scale_sweep import scale_sweep
from attnviz.commands._common import BASELINE_KINDS, baseline_value
from attnviz.data.shapes import ShapeScenes
from attnviz.models import create_tiny, load_model
from attnviz.models.baselines import (
    BASELINES,
    BaselineError,
    baseline_models,
    parse_baseline,
    permuted,
    untrained,
)
from attnviz.models.loading import assets_dir
from attnviz.models.seeds import bundle, seed_manifest, seeds_of
from attnviz.results import Result


# ----------------------------------------------------------------------------- baselines
def test_untrained_is_seeded_fresh_and_leaves_the_global_rng_alone():
    trained, _ = load_model("plain_tiny")
    factory = lambda: create_tiny("plain_tiny")  # noqa: E731
    before = torch.random.get_rng_state()
    a, b, c = (untrained(trained, s, factory) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), before)
    wa, wb, wc = (m.state_dict()["stem.0.weight"] for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert not torch.equal(wa, trained.state_dict()["stem.0.weight"])
    assert not a.training
    # without a factory: a copy with reset_parameters under the seed, deterministic too
    r0, r1 = untrained(trained, 3), untrained(trained, 3)
    assert torch.equal(r0.state_dict()["fc.weight"], r1.state_dict()["fc.weight"])
    assert not torch.equal(r0.state_dict()["fc.weight"], trained.state_dict()["fc.weight"])


def test_permuted_shuffles_within_each_tensor():
    trained, _ = load_model("plain_tiny")
    p = permuted(trained, 0)
    old, new = trained.state_dict(), p.state_dict()
    changed = 0
    for k, v in old.items():
        if v.is_floating_point():
            assert torch.equal(torch.sort(v.flatten()).values, torch.sort(new[k].flatten()).values)
            changed += int(not torch.equal(v, new[k]))
        else:
            assert torch.equal(v, new[k])
    assert changed > 10
    assert torch.equal(permuted(trained, 0).state_dict()["fc.weight"], new["fc.weight"])


def test_baseline_names_agree_between_cli_and_models():
    assert set(BASELINE_KINDS) == set(BASELINES)
    assert parse_baseline("untrained") == ("untrained", 3) == baseline_value("untrained")
    assert parse_baseline("permuted:5") == ("permuted", 5) == baseline_value("permuted:5")
    for bad in ("random:2", "untrained:0", "untrained:x"):
        with pytest.raises(BaselineError):
            parse_baseline(bad)
    trained, _ = load_model("plain_tiny")
    built = baseline_models(trained, "untrained", 2, factory=lambda: create_tiny("plain_tiny"))
    assert list(built) == ["untrained:0", "untrained:1"]


# ----------------------------------------------------------------------------- the table
@dataclass
class _Effects(Result):
    """A result that is only an effect table (for hand-checked joins)."""

    kind: ClassVar[str] = "test_effects"
    values: dict[str, float]
    ses: dict[str, float] = field(default_factory=dict)

    def effects(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {"site": k, "effect": v, "se": self.ses.get(k, math.nan), "n": 10}
                for k, v in self.values.items()
            ]
        )

    def to_frame(self) -> pd.DataFrame:
        return self.effects()

    def summary(self) -> str:
        return self.to_frame().to_string()

    def _payload(self):
        return {}, {}, {"values": self.values, "ses": self.ses}

    @classmethod
    def _restore(cls, manifest: dict[str, Any], arrays: dict[str, np.ndarray]):
        return cls(values=manifest["values"], ses=manifest["ses"])


def _joined() -> ReplicatesResult:
    trained = _Effects({"A": 0.5, "B": 0.02, "C": -0.3, "D": 0.4}, {"A": 0.05, "B": 0.01,
                       "C": 0.05, "D": 0.05})  # fmt: skip
    seeds = {
        "seed1": _Effects({"A": 0.4, "B": -0.01, "C": -0.2, "D": 0.3}),
        "seed2": _Effects({"A": 0.6, "B": 0.03, "C": -0.25, "D": 0.35}),
    }
    baselines = {
        "untrained:0": _Effects({"A": 0.01, "B": 0.00, "C": -0.4, "D": 0.1}),
        "untrained:1": _Effects({"A": -0.02, "B": 0.05, "C": 0.1, "D": 0.5}),
    }
    return ReplicatesResult(trained, seeds, baselines, meta={"model": "test"})


def test_joined_table_by_hand():
    f = _joined().to_frame().set_index("site")
    a = f.loc["A"]
    assert a["effect"] == 0.5 and a["se"] == 0.05 and a["z"] == pytest.approx(10.0)
    assert a["seeds"] == 3 and a["seed_mean"] == pytest.approx(0.5)
    assert a["seed_sd"] == pytest.approx(np.std([0.5, 0.4, 0.6], ddof=1))
    assert (a["seed_min"], a["seed_max"]) == (0.4, 0.6)
    assert a["untrained_min"] == -0.02 and a["untrained_max"] == 0.01
    assert a["beyond_baseline"] and a["sign_holds"] and a["reading"] == "positive"
    b = f.loc["B"]  # seed1 has the other sign
    assert b["sign_agreement"] == pytest.approx(2 / 3) and not b["sign_holds"]
    assert b["reading"] == "none: sign varies across seeds"
    c = f.loc["C"]  # sign holds, but the untrained range [-0.4, 0.1] contains -0.3
    assert c["sign_holds"] and not c["beyond_baseline"]
    assert c["reading"] == "none: inside the baseline range"
    d = f.loc["D"]  # 0.4 inside [0.1, 0.5]
    assert not d["beyond_baseline"]
    # Holm over the 4 tests: p from z = effect / se, two-sided normal
    z = np.array([10.0, 2.0, -6.0, 8.0])
    p = np.array([math.erfc(abs(v) / math.sqrt(2)) for v in z])
    order = np.argsort(p)
    adj = np.maximum.accumulate(np.minimum(1, (4 - np.arange(4)) * p[order]))
    hand = np.empty(4)
    hand[order] = adj
    np.testing.assert_allclose(f["p_holm"].to_numpy(), hand)
    assert f["z3"].tolist() == [True, False, True, True]


def test_one_seed_states_no_reading_and_summary_says_what_survives():
    r = _joined()
    alone = ReplicatesResult(r.trained, baselines=r.baselines)
    assert set(alone.to_frame()["reading"]) == {"none: one seed only"}
    text = r.summary()
    assert "1 of 4 effects survive: A (positive)" in text
    assert "untrained range" in text and "[-0.020, +0.010]" in text


def test_save_and_load_round_trip(tmp_path):
    r = _joined()
    r.save(tmp_path / "rep")
    back = ReplicatesResult.load(tmp_path / "rep")
    pd.testing.assert_frame_equal(r.to_frame(), back.to_frame())
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == sorted(
        ["effects.csv", "manifest.json", "replicates.npz", "seed1", "seed2", "trained",
         "untrained_0", "untrained_1"]
    )  # fmt: skip


# ----------------------------------------------------------------------------- the runner path
def test_run_replicates_on_the_sweep_and_sweep_effects_by_hand():
    model, cfg = load_model("sk_tiny")
    scenes = ShapeScenes(4, seed=5)
    opts = {"preprocess": cfg, "progress": False, "batch_size": 4}
    base = baseline_models(model, "untrained", 1, factory=lambda: create_tiny("sk_tiny"))
    rep = run_replicates(scale_sweep, model, scenes, baselines=base, per_image=True, **opts)
    eff = rep.trained.effects()
    r = rep.trained
    a, s = r.site_aliases[2], 2.0
    row = eff[(eff.site == a) & (eff.scale == s) & (eff.condition == "zoom")].iloc[0]
    d = r.image_d[a][:, r.scale_index(s)] - r.image_d[a][:, 0]
    assert row["effect"] == pytest.approx(d.mean(), abs=1e-9)
    assert row["se"] == pytest.approx(d.std(ddof=1) / 2.0, abs=1e-9)
    frame = rep.to_frame()
    assert len(frame) == len(eff) and frame["untrained_min"].notna().all()
    # the baseline is the untrained network's own sweep on the same scenes
    alone = scale_sweep(base["untrained:0"](), scenes, **opts).effects()
    np.testing.assert_allclose(frame["untrained_min"], alone["effect"])


def test_cli_baseline_on_the_sweep(cli, tmp_path):
    out = tmp_path / "out"
    res = cli("sweep", "--model", "sk_tiny", "--shapes", "3", "--out", out, "--baseline",
              "untrained:1", "--no-figures", "--no-progress", "--scales", "1.0", "2.0")  # fmt: skip
    assert res.code == 0, res.err
    frame = pd.read_csv(out / "replicates" / "effects.csv")
    assert {"untrained_min", "untrained_max", "beyond_baseline", "reading"} <= set(frame.columns)
    assert "replicates of sk_tiny" in (out / "replicates" / "summary.txt").read_text()
    bad = cli("sweep", "--model", "sk_tiny", "--shapes", "3", "--out", tmp_path / "o2",
              "--baseline", "random")  # fmt: skip
    assert bad.code == 2 and "unknown baseline" in bad.err


# ----------------------------------------------------------------------------- seeds
def _fake_training(root, seed: int):
    """A finished 'training' of sk_tiny at ``seed`` in ``root`` (the bundled weights, a
    held-out split of 2 images per class), as attnviz.models.train writes it."""
    from attnviz.models import read_manifest
    from attnviz.models.loading import sha256_file

    entry = dict(read_manifest()["models"]["sk_tiny"])
    root.mkdir(parents=True)
    src = root / "sk_tiny.safetensors"
    src.write_bytes((assets_dir() / "sk_tiny.safetensors").read_bytes())
    entry.update(seed=seed, sha256=sha256_file(src), file=src.name)
    entry["test_data"] = {**entry["test_data"], "n_per_class": 2, "seed": 10000 + seed}
    (root / "manifest.json").write_text(json.dumps({"models": {"sk_tiny": entry}}))
    return src


def test_bundle_stores_float16_and_loads_by_name(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    src = _fake_training(tmp_path / "train", 7)
    assets = tmp_path / "assets"
    monkeypatch.setenv("ATTNVIZ_ASSETS", str(assets))
    assert seeds_of("sk_tiny") == [0]
    assert bundle([tmp_path / "train", tmp_path / "nothing"]) == ["sk_tiny@seed7"]
    entry = seed_manifest()["models"]["sk_tiny@seed7"]
    path = assets / "models" / "seeds" / entry["file"]
    assert entry["size_bytes"] == path.stat().st_size < 0.6 * src.stat().st_size
    dtypes = {v.dtype for v in load_file(str(path)).values()}
    assert torch.float16 in dtypes and torch.float32 not in dtypes
    assert seeds_of("sk_tiny") == [0, 7] and entry["check"]["n_per_class"] == 20
    model, cfg = load_model("sk_tiny@seed7")
    same, _ = load_model("sk_tiny", seed=7)
    assert cfg.source["seed"] == 7 and cfg.source["weights_sha256"] == entry["sha256"]
    monkeypatch.delenv("ATTNVIZ_ASSETS")
    full, _ = load_model("sk_tiny")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), full(x), atol=0.05)  # float16 rounding only
        assert torch.equal(model(x), same(x))
    monkeypatch.setenv("ATTNVIZ_ASSETS", str(assets))
    mtime = path.stat().st_mtime_ns
    assert bundle([tmp_path / "train"]) == ["sk_tiny@seed7"] and path.stat().st_mtime_ns == mtime
    src.write_bytes(b"half-written")  # an unfinished training is not bundled
    manifest = json.loads((tmp_path / "train" / "manifest.json").read_text())
    manifest["models"]["sk_tiny"]["seed"] = 8
    (tmp_path / "train" / "manifest.json").write_text(json.dumps(manifest))
    assert bundle([tmp_path / "train"]) == []
    with pytest.raises(FileNotFoundError, match="seeds of sk_tiny: \\[0, 7\\]"):
        load_model("sk_tiny@seed9")


# ----------------------------------------------------------------------------- effects()
def test_query_independence_effects_by_hand():
    from attnviz.analysis.query_independence import QueryIndependenceResult

    vals = np.array([[0.1, np.nan], [0.3, 0.2], [0.2, 0.4]])
    jsd = np.array([[0.01, 0.5], [0.02, 0.5], [0.03, 0.5]])
    se = np.array([[0.001, 0.0], [0.002, 0.0], [0.002, 0.0]])
    sites = [{"alias": "NL_1", "name": "a", "kind": "nonlocal"}, {"alias": "NL_2", "name": "b",
             "kind": "nonlocal"}]  # fmt: skip
    r = QueryIndependenceResult("m", sites, ["cos_att", "jsd_att"],
                                {"cos_att": vals, "jsd_att": jsd}, jsd_se=se)  # fmt: skip
    e = r.effects().set_index(["site", "metric"])
    assert e.loc[("NL_1", "cos_att"), "effect"] == pytest.approx(0.2)
    assert e.loc[("NL_1", "cos_att"), "se"] == pytest.approx(0.1 / math.sqrt(3))
    assert e.loc[("NL_2", "cos_att"), "n"] == 2  # the NaN image left out
    assert e.loc[("NL_2", "cos_att"), "effect"] == pytest.approx(0.3)
    # jsd: image s.e. and pair-sampling s.e. in quadrature
    hand = math.sqrt((0.01 / math.sqrt(3)) ** 2 + (0.001**2 + 2 * 0.002**2) / 9)
    assert e.loc[("NL_1", "jsd_att"), "se"] == pytest.approx(hand)


def test_attribution_effects_subtract_the_exact_chance():
    from attnviz.analysis.attribution import AttentionVsAttributionResult, iou_chance

    iou = np.array([[0.5], [0.3], [np.nan], [0.4]])
    rho = np.array([[0.2], [0.4], [0.6], [np.nan]])
    z = np.zeros(4, dtype=np.int64)
    r = AttentionVsAttributionResult(
        sites=[{"alias": "CBAM_S_5_2", "name": "x", "kind": "cbam_spatial",
                "compare_grid": [4, 4]}],
        layer="layer4", top_k=0.2, ids=list("abcd"), labels=z, predictions=z, targets=z,
        target_source="label", spearman=rho, iou=iou, gradcam=np.zeros((0, 1, 1)),
        attention=np.zeros((1, 0, 1, 1)), images=np.zeros((0, 1, 1, 3), np.uint8),
    )  # fmt: skip
    e = r.effects().set_index("metric")
    assert e.loc["iou_above_chance", "effect"] == pytest.approx(0.4 - iou_chance(0.2, (4, 4)))
    assert e.loc["iou_above_chance", "se"] == pytest.approx(0.1 / math.sqrt(3))
    assert e.loc["spearman", "effect"] == pytest.approx(0.4) and e.loc["spearman", "n"] == 3
    assert r.site_summary()["iou_chance"].iloc[0] == pytest.approx(0.158, abs=5e-4)


def test_cli_seeds_all_runs_every_bundled_seed(cli, tmp_path, monkeypatch):
    assets = tmp_path / "assets"
    (assets / "models").mkdir(parents=True)
    for f in ("manifest.json", "sk_tiny.safetensors"):
        (assets / "models" / f).write_bytes((assets_dir() / f).read_bytes())
    _fake_training(tmp_path / "train", 4)
    monkeypatch.setenv("ATTNVIZ_ASSETS", str(assets))
    bundle([tmp_path / "train"])
    out = tmp_path / "out"
    res = cli("sweep", "--model", "sk_tiny", "--shapes", "3", "--out", out, "--seeds", "all",
              "--no-figures", "--no-progress", "--scales", "1.0", "2.0")  # fmt: skip
    assert res.code == 0, res.err
    frame = pd.read_csv(out / "replicates" / "effects.csv")
    assert (frame["seeds"] == 2).all()  # seed 0 (the model) and seed 4
    # seed 4 holds the same weights in float16: its effects are the trained ones, nearly
    np.testing.assert_allclose(frame["seed_min"], frame["seed_max"], atol=2e-3)
    assert (out / "replicates" / "seed4" / "manifest.json").is_file()
    bad = cli("sweep", "--model", "sk_tiny", "--shapes", "3", "--out", tmp_path / "o2",
              "--seeds", "9")  # fmt: skip
    assert bad.code == 2 and "no bundled seed(s) [9]" in bad.err


def test_a_baseline_without_a_value_is_not_read_as_inside_its_range():
    r = _joined()
    r.baselines["untrained:0"] = _Effects({"A": math.nan, "B": 0.0, "C": -0.4, "D": 0.1})
    r.baselines["untrained:1"] = _Effects({"A": math.nan, "B": 0.05, "C": 0.1, "D": 0.5})
    a = r.to_frame().set_index("site").loc["A"]
    assert not a["baseline_known"] and not a["beyond_baseline"]
    assert a["reading"] == "none: a baseline gives no value"
    assert "n/a" in r.summary()


def test_effect_tests_of_one_result_without_replicates():
    from attnviz.analysis.replicates import effect_tests

    t = effect_tests(_joined().trained.effects())
    assert t["z"].tolist() == pytest.approx([10.0, 2.0, -6.0, 8.0])
    assert t["p_holm"].iloc[1] == pytest.approx(min(1.0, math.erfc(2 / math.sqrt(2))))  # largest
    assert t["z3"].tolist() == [True, False, True, True]


def test_seed_specs_parse_and_refuse_what_they_cannot_be():
    from attnviz.models.seeds import split_seed

    assert split_seed("sk_tiny@seed12") == ("sk_tiny", 12)
    assert split_seed("sk_tiny") == ("sk_tiny", None)
    assert split_seed("hf-hub:org/model@main") == ("hf-hub:org/model@main", None)
    with pytest.raises(ValueError, match="disagree"):
        load_model("sk_tiny@seed1", seed=2)
    with pytest.raises(ValueError, match="no weights="):
        load_model("sk_tiny", seed=1, weights=assets_dir() / "sk_tiny.safetensors")
    assert load_model("sk_tiny", seed=0)[1].source["spec"] == "sk_tiny"  # seed 0: the bundle


def test_cli_seed_replicate_runs_the_model_of_that_seed(cli, tmp_path):
    """``--seeds 1`` runs the bundled ``se_tiny@seed1`` weights, not the trained model again:
    its saved result equals the API on that model and differs from the trained run."""
    from attnviz.analysis.excitation import ExcitationProfileResult, excitation_profile
    from attnviz.data import ShapesDataset, write_image_folder

    images = write_image_folder(ShapesDataset(1, size=64, seed=10_000), tmp_path / "images")
    out = tmp_path / "out"
    res = cli("excitation", "--model", "se_tiny", "--images", images, "--out", out,
              "--seeds", "1", "--permutations", "10", "--no-progress")  # fmt: skip
    assert res.code == 0, res.err
    seed1 = ExcitationProfileResult.load(out / "replicates" / "seed1")
    trained = ExcitationProfileResult.load(out / "result")
    model, config = load_model("se_tiny@seed1")
    direct = excitation_profile(model, images, preprocess=config, permutations=10,
                                progress=False)  # fmt: skip
    for a, b, t in zip(direct.sites, seed1.sites, trained.sites):
        np.testing.assert_allclose(b.class_mean, a.class_mean, atol=1e-6)
        assert not np.allclose(b.class_mean, t.class_mean, atol=1e-3)
