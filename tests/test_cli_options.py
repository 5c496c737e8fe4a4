"""Command-line options that had no test of their effect, each against a reference that
shares no code with attnviz's analyses (plain forward hooks, PIL views, NumPy):

sweep ``--scales`` / ``--per-image`` / ``--limit`` / ``--no-control`` / ``--shapes`` /
``--shapes-seed``; excitation ``--sites`` / ``--limit``; compare-attribution ``--layer`` /
``--target``; ``--device`` on every command; demo ``--only queries``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from attnviz.cli import main as _main

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def main(argv) -> int:
    return _main([str(a) for a in argv])


def _tensor(view: Image.Image) -> torch.Tensor:
    arr = (np.asarray(view.convert("RGB"), np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())[None]


def _folder_files(root):
    """The folder's images in the order a folder source reads them (class folders sorted,
    files sorted)."""
    return sorted(p for p in root.rglob("*.png"))


def _sk_d(model, x) -> dict[str, float]:
    """D = mean_c b_c - mean_c a_c of every SK unit (``select`` output, plain hooks)."""
    seen = {}
    units = [(n, m) for n, m in model.named_modules() if type(m).__name__ == "SKConv"]
    hooks = [
        m.select.register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(n, o.detach()))
        for n, m in units
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for n, _ in units:
        layer, block = n.split(".")[:2]
        w = seen[n][0].double().reshape(seen[n].shape[1], -1).numpy()
        out[f"SK_{int(layer[5:]) + 1}_{int(block) + 1}"] = float(w[-1].mean() - w[0].mean())
    return out


def test_sweep_scales_per_image_limit_no_control(shapes_folder, tmp_path, capsys):
    from attnviz.analysis.scale_sweep import ScaleSweepResult
    from attnviz.models import load_model

    out = tmp_path / "out"
    code = main([
        "sweep", "--model", "sk_tiny", "--images", shapes_folder, "--out", out,
        "--scales", "1.0", "2.0", "--per-image", "--limit", "3", "--no-control",
        "--no-figures", "--no-progress", "--device", "cpu",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    res = ScaleSweepResult.load(out / "result")
    assert res.scales == (1.0, 2.0) and res.n_images == 3
    assert res.view_conditions == ["zoom", "zoom"]  # --no-control
    model, _ = load_model("sk_tiny")
    model.eval()
    files = _folder_files(shapes_folder)[:3]
    assert [p.name for p in files] == [i.split("/")[-1] for i in res.image_ids]
    for i, path in enumerate(files):
        with Image.open(path) as im:
            img = im.convert("RGB")
        assert img.size == (64, 64)  # the 1.0x view is the image; 2.0x the central 32 px
        views = [img, img.resize((64, 64), Image.Resampling.BILINEAR, box=(16, 16, 48, 48))]
        for s, view in enumerate(views):
            for alias, d in _sk_d(model, _tensor(view)).items():
                assert res.image_d[alias][i, s] == pytest.approx(d, abs=2e-6), (alias, i, s)


def test_sweep_shapes_and_shapes_seed(tmp_path, capsys):
    from attnviz.analysis.scale_sweep import ScaleSweepResult
    from attnviz.data.shapes import ShapeScenes, train_object_size_range
    from attnviz.models import load_model

    runs = {}
    for seed in (5, 6):
        out = tmp_path / f"s{seed}"
        code = main([
            "sweep", "--model", "sk_tiny", "--shapes", "3", "--shapes-seed", str(seed),
            "--out", out, "--per-image", "--no-figures", "--no-progress",
        ])  # fmt: skip
        assert code == 0, capsys.readouterr().err
        runs[seed] = ScaleSweepResult.load(out / "result")
    assert runs[5].views_native and runs[5].n_images == 3
    assert runs[5].meta["scenes"]["seed"] == 5 and runs[6].meta["scenes"]["seed"] == 6
    model, _ = load_model("sk_tiny")
    model.eval()
    scenes = ShapeScenes(
        3, scales=(1.0, 1.5, 2.0), seed=5, object_range=train_object_size_range("sk_tiny")
    )
    for k in range(3):
        for s, view in enumerate(scenes.views(k)):
            for alias, d in _sk_d(model, _tensor(view)).items():
                assert runs[5].image_d[alias][k, s] == pytest.approx(d, abs=2e-6)
    first = runs[5].site_aliases[0]
    assert not np.allclose(runs[5].image_d[first], runs[6].image_d[first])  # other scenes


def test_excitation_sites_and_limit(shapes_folder, tmp_path, capsys):
    from attnviz.analysis.excitation import ExcitationProfileResult
    from attnviz.models import load_model

    out = tmp_path / "out"
    code = main([
        "excitation", "--model", "se_tiny", "--images", shapes_folder, "--out", out,
        "--sites", "SE_3_1", "SE_5_2", "--limit", "5", "--permutations", "0",
        "--no-progress", "--device", "cpu",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    res = ExcitationProfileResult.load(out / "result")
    assert res.aliases == ["SE_3_1", "SE_5_2"] and res.n_images == 5
    model, _ = load_model("se_tiny")
    model.eval()
    files = _folder_files(shapes_folder)[:5]
    x = torch.cat([_tensor(Image.open(p)) for p in files])
    gates = {}
    hooks = []
    for alias, name in (("SE_3_1", "layer2.0.attn"), ("SE_5_2", "layer4.1.attn")):
        gate = model.get_submodule(name).gate
        hooks.append(gate.register_forward_hook(
            lambda m, i, o, a=alias: gates.__setitem__(a, o.detach().double().flatten(1).numpy())
        ))  # fmt: skip
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for s in res.sites:
        v = gates[s.alias]
        np.testing.assert_allclose(s.mean, v.mean(0), atol=1e-9)
        for row, name in enumerate(res.class_names):
            idx = [j for j, p in enumerate(files) if p.parent.name == name]
            np.testing.assert_allclose(s.class_mean[row], v[idx].mean(0), atol=1e-9)
    # the classes of the first 5 files (folder order), each with its count
    names = [p.parent.name for p in files]
    assert sorted(res.class_names) == sorted(set(names))
    assert res.counts.tolist() == [names.count(n) for n in res.class_names]


def test_compare_attribution_layer_and_target(shapes_folder, tmp_path, capsys):
    from attnviz.analysis.attribution import AttentionVsAttributionResult
    from attnviz.models import load_model

    out = tmp_path / "out"
    code = main([
        "compare-attribution", "--model", "cbam_tiny", "--images", shapes_folder, "--out", out,
        "--layer", "layer3", "--target", "prediction", "--limit", "4", "--figure-images", "1",
        "--no-progress", "--device", "cpu",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    res = AttentionVsAttributionResult.load(out / "result")
    assert res.layer == "layer3" and res.target_source == "prediction"
    model, _ = load_model("cbam_tiny")
    model.eval()
    x = torch.cat([_tensor(Image.open(p)) for p in _folder_files(shapes_folder)[:4]])
    feats = []
    handle = model.layer3.register_forward_hook(lambda m, i, o: feats.append(o))
    x.requires_grad_(False)
    logits = model(x)
    handle.remove()
    pred = logits.argmax(1)
    assert res.targets.tolist() == pred.tolist()
    assert list(res.meta["gradcam_grid"]) == list(feats[0].shape[-2:])  # layer3's grid (8x8)
    # Grad-CAM by hand at layer3 (Selvaraju et al. Eq. 1-2): ReLU(sum_k mean(dy/dA_k) A_k)
    a = feats[0]
    grads = torch.autograd.grad(logits[torch.arange(4), pred].sum(), a)[0]
    cam = torch.relu((grads.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)).detach()
    up = torch.nn.functional.interpolate(cam, size=(64, 64), mode="bilinear")[:, 0]
    kept = res.gradcam.shape[0]
    assert kept == 1
    np.testing.assert_allclose(res.gradcam[0], up[0].numpy(), rtol=1e-4, atol=1e-6)
    # an unknown layer is a usage error naming it
    code = main([
        "compare-attribution", "--model", "cbam_tiny", "--images", shapes_folder,
        "--out", tmp_path / "bad", "--layer", "layer9", "--no-progress",
    ])  # fmt: skip
    assert code != 0 and "layer9" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [
        ["sites", "sk_tiny"],
        ["sweep", "--model", "sk_tiny", "--shapes", "1"],
        ["queries", "--model", "nl_tiny"],
        ["excitation", "--model", "se_tiny"],
        ["compare-attribution", "--model", "cbam_tiny"],
    ],
    ids=lambda c: c[0],
)
def test_every_command_takes_device(command, shapes_folder, tmp_path, capsys):
    """``--device cpu`` runs; a device this machine lacks is refused before any output."""

    def extra(out):
        if command[0] == "sites":
            return []
        more = ["--out", out, "--no-progress"]
        if command[0] != "sweep":
            more += ["--images", shapes_folder, "--limit", "2"]
        return more + (["--no-figures"] if command[0] == "sweep" else [])

    assert main([*command, *extra(tmp_path / "ok"), "--device", "cpu"]) == 0
    capsys.readouterr()
    missing = "cuda:7" if torch.cuda.device_count() < 8 else "cuda:99"
    code = main([*command, *extra(tmp_path / "refused"), "--device", missing])
    err = capsys.readouterr().err
    assert code == 2 and "--device" in err and missing in err
    assert not (tmp_path / "refused" / "result").exists()
    if command[0] != "sites":
        assert any((tmp_path / "ok").rglob("manifest.json"))


def test_demo_only_queries(tmp_path, capsys):
    from attnviz.analysis.query_independence import QueryIndependenceResult

    root = tmp_path / "demo"
    assert main(["demo", "--out", root, "--only", "queries"]) == 0
    out = capsys.readouterr().out
    assert f"wrote results, figures and summaries under {root}" in out
    assert not (root / "sweep").exists() and not (root / "excitation").exists()
    import json

    folders = [
        p.parent
        for p in (root / "queries").rglob("manifest.json")
        if json.loads(p.read_text())["kind"] == "query_independence"
    ]
    assert folders
    res = QueryIndependenceResult.load(folders[0])
    assert res.n_images == 10 and res.sites and res.sites[0]["kind"] == "nl"
    summary = (root / "summary.md").read_text()
    assert "## queries" in summary and "## sweep" not in summary
    # every statistic the demo stores is a number in its range
    for m in ("cos_input", "cos_output", "cos_att"):
        v = res.values[m]
        assert np.isfinite(v).all() and ((v >= 0) & (v <= 1)).all()
    assert math.isfinite(float(res.values["eff_keys"].mean()))


def test_sweep_figure_image_picks_the_fig3_image(shapes_folder, tmp_path, capsys):
    """--figure-image names the image of Fig. 3 by id: another image, another figure."""
    drawn = {}
    ids = sorted(p.relative_to(shapes_folder).as_posix() for p in shapes_folder.rglob("*.png"))
    for key in (ids[0], ids[3]):
        out = tmp_path / key.replace("/", "_")
        code = main([
            "sweep", "--model", "sk_tiny", "--images", shapes_folder, "--out", out,
            "--limit", "2", "--scales", "1.0", "2.0", "--figure-image", key, "--no-progress",
        ])  # fmt: skip
        assert code == 0, capsys.readouterr().err
        drawn[key] = (out / "figures" / "fig3_views.png").read_bytes()
    assert drawn[ids[0]] != drawn[ids[3]]
