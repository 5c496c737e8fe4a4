"""``attnviz excitation`` / ``attnviz compare-attribution`` end to end, and the demo part."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from attnviz.analysis.attribution import AttributionComparison
from attnviz.analysis.excitation import ExcitationResult, excitation_profile
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
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "skipped" in printed and "broken.png" in printed and "empty file" in printed
    result = ExcitationResult.load(out / "result")
    assert result.class_names == ["ring", "disc"]
    assert result.counts.tolist() == [2, 2]  # the bad files are not counted
    assert result.n_images == 20
    manifest = json.loads((out / "result" / "manifest.json").read_text())
    assert {p.rsplit("/", 1)[-1] for p, _ in manifest["skipped"]} == {"broken.png", "empty.jpg"}
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
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == [
        "fig6_excitation_by_class.png",
        "fig7_excitation_std.png",
        "specificity_vs_depth.png",
    ]
    assert (out / "summary.txt").read_text().startswith("20 images, 2 classes")


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
    result = AttributionComparison.load(out / "result")
    assert len(result.ids) == 6 and result.top_k == 0.3
    assert result.target_source == "label"
    assert len(result.sites) == 8 and result.gradcam.shape == (2, 64, 64)
    frame = pd.read_csv(out / "result" / "agreement.csv")
    assert len(frame) == 6 * 8
    np.testing.assert_allclose(
        frame["iou"].to_numpy(), result.iou.ravel(), equal_nan=True, atol=1e-12
    )
    assert sorted(p.name for p in (out / "figures").iterdir()) == [
        "agreement.png",
        "attention_vs_gradcam.png",
    ]
    assert "Grad-CAM at layer4" in capsys.readouterr().out


def test_commands_report_bad_input(tmp_path, capsys):
    code = main(
        [
            "excitation",
            "--model",
            "se_tiny",
            "--weights",
            str(tmp_path / "missing.safetensors"),
            "--images",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 1 and "error" in capsys.readouterr().err
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
    assert code == 1 and "no image files" in err


def test_demo_part_runs_both_analyses(tmp_path, monkeypatch):
    from attnviz.commands import excitation as command

    # fewer images than the real demo (10 and 4 per class), same code path
    monkeypatch.setattr(command, "DEMO_EXCITATION_PER_CLASS", 3)
    monkeypatch.setattr(command, "DEMO_ATTRIBUTION_PER_CLASS", 1)
    text = command.demo(tmp_path)
    assert "Excitation on se_tiny" in text and "Grad-CAM on cbam_tiny" in text
    assert "Grad-CAM on gc_tiny" in text
    exc = ExcitationResult.load(tmp_path / "excitation_se_tiny" / "result")
    assert exc.n_images == 30 and len(exc.classes) == 10
    for name in ("cbam_tiny", "gc_tiny"):
        res = AttributionComparison.load(tmp_path / f"attribution_{name}" / "result")
        assert len(res.ids) == 10 and np.isfinite(res.spearman).any()
        assert (tmp_path / f"attribution_{name}" / "figures" / "agreement.png").stat().st_size
