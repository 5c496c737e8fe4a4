"""The ablation analysis against a hand computation with intervene, its statistics against
enumeration, its invariances (batch size), its forward count, its result round trip and CLI."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch

import attnviz
from attnviz.analysis.ablation import AblationResult, ablation, summarise_changes
from attnviz.analysis.stats import bootstrap_ci, bootstrap_mean_ci, holm, sign_flip_p
from attnviz.capture import PolicyError
from attnviz.cli import main
from attnviz.commands.ablate import POLICY_NAMES
from attnviz.data import write_image_folder


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation") / "shapes"
    ds = attnviz.ShapesDataset(n_per_class=1, size=64, seed=20_000)
    write_image_folder(ds, root)
    return root


@pytest.fixture(scope="module")
def se_model():
    return attnviz.load_model("se_tiny")


def _inputs(folder, config):
    from attnviz.data.preprocess import preprocess_for
    from attnviz.data.sources import image_source

    source = image_source(folder)
    transform = preprocess_for(config)
    x = torch.stack([transform(source.load(i)[0]) for i in range(len(source))])
    # labels in the model's class order (folders are alphabetical)
    labels = [list(config.classes).index(source.class_names[k]) for k in source.labels]
    return x, torch.tensor(labels)


def test_changes_equal_a_hand_computation_with_intervene(shapes, se_model):
    model, config = se_model
    result = ablation(
        model,
        shapes,
        sites=["SE_2_1", "SE_5_2"],
        policies=["remove", "mean", "shuffle"],
        preprocess=config,
        batch_size=4,
        progress=False,
        bank=6,
    )
    frame = result.to_frame().set_index(["group", "policy", "measure"]).sort_index()
    x, labels = _inputs(shapes, config)
    with torch.no_grad(), attnviz.capture(model, sites=["SE_2_1", "SE_5_2"]) as plain:
        logits0 = model(x)
    p0 = logits0.softmax(-1)
    rows = torch.arange(len(x))
    reference = {s.name: plain[s.name].double().mean(0).float() for s in plain.sites}
    for alias in ("SE_2_1", "SE_5_2"):
        name = plain.site(alias).name
        bank = plain[name][:6]
        partner = [(7 * i + 3) % 6 for i in range(len(x))]
        partner = [(j + 1) % 6 if j == i else j for i, j in enumerate(partner)]
        cases = {
            "remove": ({alias: "constant:1"}, {}),
            "mean": ({alias: "mean"}, {"reference": reference}),
            "shuffle": ({alias: "patch"}, {"source": {name: bank[partner]}}),
        }
        for policy, (spec, kwargs) in cases.items():
            with torch.no_grad(), attnviz.intervene(model, spec, **kwargs):
                logits = model(x)
            p = logits.softmax(-1)
            d_p = (p[rows, labels] - p0[rows, labels]).double().numpy()
            kl = (p0 * (p0.log() - p.log())).sum(-1).double().numpy()
            agree = (logits.argmax(-1) == logits0.argmax(-1)).double().numpy()
            acc = (logits.argmax(-1) == labels).double() - (logits0.argmax(-1) == labels).double()
            got = frame.loc[(alias, policy)]
            assert got.loc["p_true", "mean"] == pytest.approx(d_p.mean(), abs=1e-6)
            assert got.loc["p_true", "se"] == pytest.approx(
                d_p.std(ddof=1) / math.sqrt(10), abs=1e-6
            )
            assert got.loc["kl", "mean"] == pytest.approx(kl.mean(), abs=1e-5)
            assert got.loc["agreement", "mean"] == pytest.approx(agree.mean())
            assert got.loc["accuracy", "mean"] == pytest.approx(acc.mean().item())
            assert got.loc["p_true", "n"] == 10
    assert set(frame.index.get_level_values("group")) == {
        "SE_2_1",
        "SE_5_2",
        "stage:2",
        "stage:5",
        "all",
    }


def test_batch_size_does_not_change_the_result_and_round_trip(shapes, se_model, tmp_path):
    model, config = se_model
    kwargs = dict(sites=["stage:4"], preprocess=config, progress=False, bank=5)
    a = ablation(model, shapes, batch_size=3, **kwargs)
    b = ablation(model, shapes, batch_size=10, **kwargs)
    # float32 convolutions differ in the last bits between batch sizes; nothing else may
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame(), atol=1e-6, rtol=0)
    a.meta["model"] = "se_tiny"
    a.save(tmp_path / "r")
    c = AblationResult.load(tmp_path / "r")
    pd.testing.assert_frame_equal(a.to_frame(), c.to_frame())
    for field in ("scopes", "groups", "n_images", "skipped", "meta"):
        assert getattr(c, field) == getattr(a, field), field
    assert c.changes.keys() == a.changes.keys()
    for k in a.changes:
        np.testing.assert_array_equal(c.changes[k], a.changes[k])
    for k in a.original:
        np.testing.assert_array_equal(c.original[k], a.original[k])
    assert "Decomposition" in a.summary() and "SE_4_2" in a.summary()
    table = a.table().set_index(["group", "policy"])
    frame = a.to_frame().set_index(["group", "policy", "measure"]).sort_index()
    for (group, policy), row in table.iterrows():
        r = frame.loc[(group, policy, "p_true")]
        assert row["dP(target)"] == f"{r['mean']:+.3f} ± {r['se']:.3f}"
        assert row["KL"] == f"{frame.loc[(group, policy, 'kl'), 'mean']:.3f}"
    lines = a.markdown().splitlines()
    assert len(lines) == 2 + len(table) and lines[0].startswith("| group | policy | n |")


def test_one_forward_per_group_and_policy_per_batch(shapes, se_model):
    model, config = se_model
    calls = []
    handle = model.register_forward_pre_hook(lambda m, i: calls.append(i[0].shape[0]))
    try:
        result = ablation(
            model,
            shapes,
            sites=["SE_2_1", "SE_3_1"],
            policies=["remove", "constant:0.5"],
            scopes=("site", "all"),
            preprocess=config,
            batch_size=4,
            progress=False,
        )
    finally:
        handle.remove()
    combos = 3 * 2  # (SE_2_1, SE_3_1, all) x 2 policies; no reference pass needed
    assert calls == [4] * (1 + combos) * 2 + [2] * (1 + combos)
    assert result.policies == ["remove", "constant:0.5"]


def test_refused_before_any_forward(shapes, se_model):
    model, config = se_model
    calls = []
    handle = model.register_forward_pre_hook(lambda m, i: calls.append(1))
    try:
        with pytest.raises(PolicyError, match="branch:0.*cannot apply to site SE_2_1"):
            ablation(model, shapes, policies=["branch:0"], preprocess=config, progress=False)
        with pytest.raises(PolicyError, match="unknown policy"):
            ablation(model, shapes, policies=["ablate"], preprocess=config, progress=False)
    finally:
        handle.remove()
    assert calls == []


def test_sign_flip_p_is_exact_for_few_items_and_close_for_many():
    d = np.array([0.3, -0.1, 0.25, 0.4, -0.05, 0.2])
    obs = abs(d.mean())
    null = [abs((np.array(s) * d).mean()) for s in itertools.product([1, -1], repeat=6)]
    assert sign_flip_p(d) == pytest.approx(np.mean(np.array(null) >= obs - 1e-12))
    assert sign_flip_p(np.zeros(5)) == 1.0
    rng = np.random.default_rng(0)
    for mu in (0.0, 0.3, 0.6):
        d = rng.normal(mu, 1.0, 36)  # sampled flips; sum(s d) has variance sum(d^2)
        z = abs(d.sum()) / np.sqrt((d**2).sum())
        assert sign_flip_p(d, draws=20_000) == pytest.approx(math.erfc(z / math.sqrt(2)), abs=0.015)
        big = rng.normal(mu, 1.0, 300)  # the normal limit, not floored at 1 / (1 + draws)
        zb = abs(big.sum()) / np.sqrt((big**2).sum())
        assert sign_flip_p(big) == pytest.approx(math.erfc(zb / math.sqrt(2)), rel=1e-12)
    assert sign_flip_p(np.full(200, 0.5)) < 1e-40


def test_bootstrap_mean_ci_equals_the_loop_bootstrap_and_summary_fields():
    v = np.random.default_rng(3).normal(size=23)
    loop = bootstrap_ci(23, lambda i: float(v[i].mean()), draws=700, seed=4)[:2]
    assert bootstrap_mean_ci(v, draws=700, seed=4) == pytest.approx(loop)
    s = summarise_changes(v, tested=True, draws=700, seed=4)
    assert s["n"] == 23 and s["mean"] == pytest.approx(v.mean())
    assert (s["ci_low"], s["ci_high"]) == pytest.approx(loop)
    assert s["p"] == sign_flip_p(v, draws=700, seed=4)
    assert math.isnan(summarise_changes(v, tested=False)["p"])
    frame_p = np.array([0.01, 0.04, np.nan, 0.03])
    np.testing.assert_allclose(holm(frame_p), [0.03, 0.06, np.nan, 0.06])


def test_cli_policy_names_match_the_registry():
    from attnviz.capture.policies import POLICIES

    assert set(POLICY_NAMES) == set(POLICIES) - {"patch"}


def test_cli_runs_and_refuses_bad_policies_in_one_line(shapes, tmp_path, capsys):
    out = tmp_path / "out"
    cmd = [
        "ablate",
        "--model",
        "se_tiny",
        "--images",
        str(shapes),
        "--out",
        str(out),
        "--no-progress",
        "--scopes",
        "stage",
        "--policy",
        "remove",
        "shuffle:1",
    ]
    with pytest.raises(SystemExit) as bad:
        main(cmd[:-2] + ["zero"])
    err = capsys.readouterr().err
    assert bad.value.code == 2
    assert err.strip().count("\n") == 0 and "unknown policy 'zero'" in err
    assert main(cmd) == 0
    assert "Ablation on se_tiny: 10 images" in capsys.readouterr().out
    result = AblationResult.load(
        next(p.parent for p in out.rglob("manifest.json") if "ablation" in p.read_text())
    )
    assert set(result.policies) == {"remove", "shuffle:1"}
    assert set(result.scopes.values()) == {"stage"}


def test_scale_patching_equals_a_hand_interchange(tmp_path):
    from attnviz.analysis.scale_patching import scale_patching
    from attnviz.data.preprocess import preprocess_for

    model, config = attnviz.load_model("sk_tiny")
    scenes = attnviz.ShapeScenes(5, scales=(1.0, 2.0))
    result = scale_patching(
        model, scenes, scopes=("all",), preprocess=config, batch_size=2, progress=False
    )
    transform = preprocess_for(config)
    small = torch.stack([transform(scenes.views(k)[0]) for k in range(5)])
    large = torch.stack([transform(scenes.views(k)[1]) for k in range(5)])
    labels = torch.tensor([scenes.record(k).label for k in range(5)])
    other = [(k + 1) % 5 for k in range(5)]
    with torch.no_grad():
        with attnviz.capture(model) as at_small:
            model(small)
        with attnviz.capture(model) as at_large:
            y_large = model(large)
        with attnviz.intervene(model, {"all": "patch"}, source=at_small):
            y_wrong_scale = model(large)
        other_large = {n: at_large[n][other] for n in at_large}
        with attnviz.intervene(model, {"all": "patch"}, source=other_large):
            y_wrong_scene = model(large)
    rows = torch.arange(5)
    p0 = y_large.softmax(-1)[rows, labels]
    frame = result.to_frame().set_index(["group", "policy", "measure"]).sort_index()
    for policy, y in (("patch:1.0x>2.0x", y_wrong_scale), ("patch:other>2.0x", y_wrong_scene)):
        d = (y.softmax(-1)[rows, labels] - p0).double()
        assert frame.loc[("all", policy, "p_true"), "mean"] == pytest.approx(
            d.mean().item(), abs=1e-6
        )
    c = result.contrast("all", "patch:1.0x>2.0x", "patch:other>2.0x")
    assert c["n"] == 5
    d_wrong = y_wrong_scale.softmax(-1)[rows, labels] - y_wrong_scene.softmax(-1)[rows, labels]
    e = result.effects().set_index(["group", "policy", "measure"])  # the contrast as an effect
    row = e.loc[("all", "patch:1.0x>2.0x - patch:other>2.0x", "p_true")]
    assert row["effect"] == pytest.approx(d_wrong.double().mean().item(), abs=1e-6)
    assert row["se"] == pytest.approx(d_wrong.double().std().item() / 5**0.5, abs=1e-6)
    assert row["n"] == 5 and row["p"] == c["sign_test_p"]
    assert "Wrong scale - wrong scene" in result.summary()
    with pytest.raises(ValueError, match="scales=\\(1.0, 2.0\\)"):
        scale_patching(model, attnviz.ShapeScenes(2), preprocess=config, progress=False)


def test_target_is_the_label_not_the_prediction_on_prepared_inputs():
    """Labels that disagree with the prediction: P(target) is the label's probability."""
    model, _ = attnviz.load_model("cbam_tiny")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 64, 64, generator=g)
    labels = [3, 1, 4, 1, 5, 9]
    result = ablation(
        model,
        x,
        labels=labels,
        sites=["CBAMS_5_2"],
        policies=["remove"],
        scopes=("site",),
        batch_size=4,
        progress=False,
    )
    with torch.no_grad():
        p0 = model(x).softmax(-1)
        with attnviz.intervene(model, {"CBAMS_5_2": "remove"}):
            p1 = model(x).softmax(-1)
    rows, t = torch.arange(6), torch.tensor(labels)
    assert (p0.argmax(-1) != t).any()
    frame = result.to_frame().set_index(["measure"])
    expected = (p1[rows, t] - p0[rows, t]).double().mean().item()
    assert frame.loc["p_true", "mean"] == pytest.approx(expected, abs=1e-6)
    acc = ((p1.argmax(-1) == t).double() - (p0.argmax(-1) == t).double()).mean().item()
    assert frame.loc["accuracy", "mean"] == pytest.approx(acc)


def test_cli_scale_patching_reference_and_bank(shapes, tmp_path, capsys):
    base = ["ablate", "--no-progress"]
    args = [
        "--model",
        "sk_tiny",
        "--scale-patching",
        "3",
        "--shapes-seed",
        "20001",
        "--scopes",
        "all",
        "--batch-size",
        "2",
    ]
    assert main(base + args + ["--out", str(tmp_path / "patch")]) == 0
    printed = capsys.readouterr().out
    assert "Wrong scale - wrong scene" in printed and "3 images" in printed
    assert main(base + args + ["--images", str(shapes), "--out", str(tmp_path / "x")]) == 2
    assert "exactly one of --images DIR and --scale-patching N" in capsys.readouterr().err
    se = ["--model", "se_tiny", "--images", str(shapes), "--scopes", "all", "--limit", "4"]
    ref = ["--reference", str(shapes), "--bank", "3", "--policy", "shuffle"]
    assert main(base + se + ref + ["--out", str(tmp_path / "ref")]) == 0
    assert "shuffle" in capsys.readouterr().out
    nowhere = ["--reference", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m")]
    assert main(base + se + nowhere) == 2
    assert "--reference" in capsys.readouterr().err


def test_effects_and_an_untrained_baseline_from_the_cli(shapes, tmp_path, capsys):
    args = ["ablate", "--model", "se_tiny", "--images", str(shapes), "--scopes", "all",
            "--policy", "remove", "--limit", "4", "--no-progress", "--baseline", "untrained:1",
            "--out", str(tmp_path / "b")]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "untrained" in printed
    result = AblationResult.load(tmp_path / "b" / "result")
    e = result.effects().set_index(["group", "policy", "measure"])
    f = result.to_frame().set_index(["group", "policy", "measure"])
    np.testing.assert_array_equal(e["se"].to_numpy(), f["se"].to_numpy())
    for (group, policy, measure), row in f.iterrows():  # 0 is "no effect" for every measure
        if measure == "agreement":
            assert (group, policy, "agreement") not in e.index
            assert e.loc[(group, policy, "top1_changed"), "effect"] == 1.0 - row["mean"]
        else:
            assert e.loc[(group, policy, measure), "effect"] == row["mean"]
    effects = (tmp_path / "b" / "replicates" / "effects.csv").read_text()
    assert "all" in effects and "remove" in effects
