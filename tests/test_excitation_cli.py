"""``attnviz excitation`` / ``attnviz compare-attribution`` end to end, and the demo part."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from attnviz.analysis.attribution import AttentionVsAttributionResult, attention_vs_attribution
from attnviz.analysis.excitation import ExcitationProfileResult, excitation_profile
from attnviz.cli import main
from attnviz.data import ShapesDataset, write_image_folder
from attnviz.models import load_model
from attnviz.models.tiny import create_tiny


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    write_image_folder(ShapesDataset(2, size=64, seed=123), root)
    (root / "disc" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (root / "ring" / "empty.jpg").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random weights of the tiny models (the CLI must not depend on the bundled ones)."""
    root = tmp_path_factory.mktemp("weights")
    out = {}
    for name in ("se_tiny", "cbam_tiny"):
        torch.manual_seed(1)
        state = {
            k: v.contiguous()
            for k, v in create_tiny(name, zero_init_residual=False).state_dict().items()
        }
        save_file(state, root / f"{name}.safetensors")
        out[name] = root / f"{name}.safetensors"
    return out


def test_excitation_command(image_dir, weights, tmp_path, capsys):
    out = tmp_path / "exc"
    code = main(
        [
            "excitation",
            "--model",
            "se_tiny",
            "--weights",
            str(weights["se_tiny"]),
            "--images",
            str(image_dir),
            "--out",
            str(out),
            "--classes",
            "ring",
            "disc",
            "--channels",
            "20",
            "--permutations",
            "40",
            "--seed",
            "3",
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "skipped disc/broken.png: " in printed
    assert "skipped ring/empty.jpg: empty file" in printed
    result = ExcitationProfileResult.load(out / "result")
    assert result.class_names == ["ring", "disc"]
    assert result.counts.tolist() == [2, 2]  # the bad files are not counted
    assert result.n_images == 20
    # --channels 20: evenly spaced channels per site, and the option matters (a wider site)
    assert all(len(s.channels) == min(20, s.n_channels) for s in result.sites)
    assert any(s.n_channels > 20 for s in result.sites)
    manifest = json.loads((out / "result" / "manifest.json").read_text())
    assert {r["file"] for r in manifest["skipped"]} == {"disc/broken.png", "ring/empty.jpg"}
    assert manifest["kind"] == "excitation_profile" and manifest["meta"]["run"]["n_images"] == 20
    assert manifest["meta"]["weights_sha256"] and "torch" in manifest["versions"]
    # the command's numbers are those of the Python API on the same images
    model, config = load_model("se_tiny", weights=weights["se_tiny"])
    direct = excitation_profile(
        model, image_dir, classes=["ring", "disc"], preprocess=config, progress=False
    )
    for a, b in zip(direct.sites, result.sites):
        np.testing.assert_allclose(a.class_mean, b.class_mean, atol=1e-6)
    table = pd.read_csv(out / "result" / "specificity.csv")
    assert table["site"].tolist() == result.aliases
    # the controls: squeeze input, the seeded permutation null (40 draws, seed 3)
    assert result.permutations == 40 and result.seed == 3 and result.label_source == "given"
    assert all(s.null.shape == (40,) for s in result.sites)
    controls = ["squeeze_specificity", "gate_gain", "null_mean", "null_p95", "p_value"]
    assert table[controls].notna().all().all()
    assert ((table["p_value"] > 0) & (table["p_value"] <= 1)).all()
    stems = ["fig6_excitation_by_class", "fig7_excitation_std", "fig6_excitation_heatmap"]
    stems += ["gate_stage_bars", "specificity_vs_depth"]
    written = [f"{stem}.{ext}" for stem in stems for ext in ("png", "svg")]
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == sorted([".attnviz-figures.json", *written])
    assert json.loads((out / "figures" / ".attnviz-figures.json").read_text()) == written
    assert (out / "summary.txt").read_text() == result.summary() + "\n"
    assert result.summary().startswith("20 images, 2 classes")
    assert result.summary() in printed
    assert not (out / "checkpoint").exists()
    assert (out / ".attnviz.lock").read_text() == ""  # kept, released (issue 23)


def test_compare_attribution_command(image_dir, weights, tmp_path, capsys):
    out = tmp_path / "att"
    code = main(
        [
            "compare-attribution",
            "--model",
            "cbam_tiny",
            "--weights",
            str(weights["cbam_tiny"]),
            "--images",
            str(image_dir),
            "--out",
            str(out),
            "--top-k",
            "0.3",
            "--limit",
            "6",
            "--sites",
            "all",
            "--figure-images",
            "2",
            "--no-progress",
        ]
    )
    assert code == 0
    result = AttentionVsAttributionResult.load(out / "result")
    # --limit 6: the first six files of the folder (class folders in name order)
    assert result.ids == [
        "checkered_disc/000009.png",
        "checkered_disc/000019.png",
        "crescent/000007.png",
        "crescent/000017.png",
        "cross/000005.png",
        "cross/000015.png",
    ]
    assert result.skipped == [] and result.top_k == 0.3
    n = len(result.ids)
    assert result.target_source == "label"
    assert len(result.sites) == 8 and result.gradcam.shape == (2, 64, 64)
    frame = pd.read_csv(out / "result" / "agreement.csv")
    assert len(frame) == n * 8
    np.testing.assert_allclose(
        frame["iou"].to_numpy(), result.iou.ravel(), equal_nan=True, atol=1e-12
    )
    assert sorted(p.name for p in (out / "figures").iterdir()) == [
        ".attnviz-figures.json",
        "agreement.png",
        "agreement.svg",
        "attention_vs_gradcam.png",
        "attention_vs_gradcam.svg",
    ]
    printed = capsys.readouterr().out
    assert "Grad-CAM at layer4" in printed and result.summary() in printed
    # the command's numbers are those of the Python API on the same images
    model, config = load_model("cbam_tiny", weights=weights["cbam_tiny"])
    direct = attention_vs_attribution(
        model,
        image_dir,
        preprocess=config,
        sites="all",
        top_k=0.3,
        limit=6,
        keep_maps=2,
        progress=False,
    )
    assert direct.ids == result.ids and direct.targets.tolist() == result.targets.tolist()
    np.testing.assert_allclose(direct.gradcam, result.gradcam, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(direct.spearman, result.spearman, atol=1e-6, equal_nan=True)


def test_commands_report_bad_input(image_dir, tmp_path, capsys):
    code = main(
        [
            "excitation",
            "--model",
            "se_tiny",
            "--weights",
            str(tmp_path / "missing.safetensors"),
            "--images",
            str(image_dir),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("attnviz excitation: error: ") and err.count("\n") == 1
    assert "missing.safetensors" in err
    # an output folder inside the image folder is refused before any work
    code = main(["excitation", "--model", "se_tiny", "--images", str(image_dir),
                 "--out", str(image_dir / "out"), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("attnviz excitation: error: --out ")
    assert "inside the image folder" in err and not (image_dir / "out").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    torch.manual_seed(0)
    w = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in create_tiny("cbam_tiny").state_dict().items()}, w)
    code = main(
        [
            "compare-attribution",
            "--model",
            "cbam_tiny",
            "--weights",
            str(w),
            "--images",
            str(empty),
            "--out",
            str(tmp_path / "o2"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("attnviz compare-attribution: error: no image files")
    assert err.count("\n") == 1


def test_demo_parts_run_both_analyses(tmp_path):
    from attnviz.commands import compare_attribution, excitation
    from attnviz.commands.demo import DEMO_PARTS, demo_images

    # the demo's own image sets and code path, with fewer images per class (real: 10 and 4)
    seeds = {name: seed for name, _, (_, seed) in DEMO_PARTS}
    exc_images = demo_images(tmp_path / "data", 3, seeds["excitation"])
    att_images = demo_images(tmp_path / "data", 1, seeds["attribution"])
    text = excitation.demo(tmp_path / "excitation", exc_images)
    assert "Excitation on se_tiny" in text
    exc = ExcitationProfileResult.load(tmp_path / "excitation" / "result")
    assert exc.n_images == 30 and len(exc.classes) == 10
    assert exc.counts.tolist() == [3] * 10 and exc.label_source == "given"
    assert (tmp_path / "excitation" / "figures" / "fig6_excitation_by_class.png").stat().st_size
    text = compare_attribution.demo(tmp_path / "attribution", att_images)
    assert "Grad-CAM on cbam_tiny" in text and "Grad-CAM on gc_tiny" in text
    for name in ("cbam_tiny", "gc_tiny"):
        folder = tmp_path / "attribution" / name
        res = AttentionVsAttributionResult.load(folder / "result")
        assert len(res.ids) == 10 and np.isfinite(res.spearman).any()
        assert res.meta["model"] == name and res.target_source == "label"
        # labelled in the model's class order (its manifest), not the folders' alphabetical one
        classes = list(load_model(name)[1].classes)
        assert classes != sorted(classes) and res.class_names == classes
        assert res.labels.tolist() == [classes.index(i.split("/")[0]) for i in res.ids]
        assert (folder / "figures" / "agreement.png").stat().st_size
        assert (folder / "summary.txt").read_text() == res.summary() + "\n"


def test_compare_attribution_across_models(image_dir, tmp_path, capsys):
    """Several --model (repeated or listed): the CBAM paper's Grad-CAM comparison."""
    from attnviz.analysis.attribution import GradCamComparisonResult, gradcam_comparison

    out = tmp_path / "models"
    args = ["compare-attribution", "--model", "se_tiny", "--model", "cbam_tiny"]
    args += ["--images", str(image_dir), "--out", str(out), "--limit", "5"]
    code = main([*args, "--figure-images", "2", "--no-progress"])
    assert code == 0
    result = GradCamComparisonResult.load(out / "result")
    assert result.models == ["se_tiny", "cbam_tiny"] and len(result.ids) == 5
    assert result.target_source == "label" and result.probability.shape == (5, 2)
    assert sorted(p.name for p in (out / "figures").iterdir()) == [
        ".attnviz-figures.json",
        "gradcam_by_model.png",
        "gradcam_by_model.svg",
        "margin.png",  # the calibration-free measure beside P (the zoo's label smoothing)
        "margin.svg",
        "target_probability.png",
        "target_probability.svg",
    ]
    printed = capsys.readouterr().out
    assert result.summary() in printed
    models, config = {}, None
    for name in ("se_tiny", "cbam_tiny"):
        models[name], c = load_model(name)
        config = config or c
    direct = gradcam_comparison(models, image_dir, preprocess=config, limit=5, progress=False)
    np.testing.assert_allclose(direct.probability, result.probability, rtol=1e-5)
    # usage errors: one line, exit 2
    code = main([*args, "--weights", "x.safetensors"])
    assert code == 2 and "--weights needs a single --model" in capsys.readouterr().err
    code = main([*args, "--sites", "all"])
    assert code == 2 and "--sites selects the attention sites" in capsys.readouterr().err
