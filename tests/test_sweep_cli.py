"""``attnviz sweep``: outputs, bad files, --strict, resume after SIGKILL, torchrun (gloo)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from attnviz.analysis.scale_sweep import ScaleSweepResult, scale_sweep
from attnviz.cli import main
from attnviz.data import ShapesDataset, write_image_folder
from attnviz.models import load_model
from attnviz.models.tiny import create_tiny

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _weights(path: Path, name: str = "sk_tiny") -> Path:
    torch.manual_seed(0)
    save_file(create_tiny(name).state_dict(), str(path))
    return path


def _images(root: Path, n_per_class: int, bad: bool = True) -> Path:
    write_image_folder(ShapesDataset(n_per_class, size=64, seed=11), root)
    if bad:
        rng = np.random.default_rng(0)
        rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        (root / "disc" / "bad_empty.png").write_bytes(b"")
        (root / "disc" / "bad_text.jpg").write_text("not an image")
        Image.fromarray(rgb).save(root / "ring" / "bad_truncated.png")
        data = (root / "ring" / "bad_truncated.png").read_bytes()
        (root / "ring" / "bad_truncated.png").write_bytes(data[: len(data) // 3])
        Image.new("RGB", (5, 5)).save(root / "star" / "bad_tiny.png")
        Image.new("RGB", (400, 20)).save(root / "star" / "bad_strip.png")
        # convertible ones: these must be used, not skipped
        Image.fromarray(rgb).convert("CMYK").save(root / "cross" / "odd_cmyk.jpg")
        Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(root / "cross" / "odd16.png")
        Image.fromarray(rgb).convert("P").save(root / "frame" / "odd_palette.png")
        Image.fromarray(rgb).convert("LA").save(root / "frame" / "odd_gray_alpha.png")
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    return _weights(d / "sk.safetensors"), _images(d / "images", 1), d


def _args(weights, images, out, *extra):
    return ["sweep", "--model", "sk_tiny", "--weights", str(weights), "--images", str(images),
            "--out", str(out), "--no-progress", *extra]  # fmt: skip


def test_sweep_writes_result_figures_and_summary(setup, capsys):
    weights, images, d = setup
    out = d / "out"
    assert main(_args(weights, images, out, "--batch-size", "4")) == 0
    printed = capsys.readouterr().out
    res = ScaleSweepResult.load(out / "result")
    assert res.n_images == 10 + 4  # 10 shapes + 4 converted odd files
    manifest = json.loads((out / "result" / "manifest.json").read_text())
    reasons = {s["file"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {
        "disc/bad_empty.png", "disc/bad_text.jpg", "ring/bad_truncated.png",
        "star/bad_tiny.png", "star/bad_strip.png",
    }  # fmt: skip
    assert reasons["disc/bad_empty.png"] == "empty file"
    assert reasons["star/bad_strip.png"].startswith("extreme aspect ratio")
    assert manifest["kind"] == "scale_sweep" and manifest["scales"] == [1.0, 1.5, 2.0]
    meta = manifest["meta"]
    assert meta["model"] == "sk_tiny"
    assert meta["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert meta["run"]["n_images"] == 14 and meta["run"]["n_skipped"] == 5
    assert meta["run"]["images_per_s"] > 0
    assert {"torch", "numpy", "attnviz", "python"} <= set(manifest["versions"])
    figures = ("stage_bars", "d_heatmap", "class_d", "channel_attention_SK_3_2", "delta_bars",
               "fig4_class_d", "fig3_views")  # fmt: skip
    for name in figures:
        for ext in ("png", "svg"):
            assert (out / "figures" / f"{name}.{ext}").stat().st_size > 1000
    listed = json.loads((out / "figures" / ".attnviz-figures.json").read_text())
    assert sorted(listed) == sorted(f"{n}.{e}" for n in figures for e in ("png", "svg"))
    assert (out / "summary.txt").read_text() == res.summary() + "\n"
    assert not (out / "checkpoint").exists()
    assert (out / ".attnviz.lock").read_text() == ""  # kept, released (issue 23)
    # zoom views from the original pixels; 64 px images: every zoom view needed a control
    assert res.view_conditions == ["zoom"] * 3 + ["resolution_control"] * 2
    assert res.view_count.tolist() == [14, 14, 14, 14, 14]
    assert "SK_2_1: 3x3 d1 | 3x3 d2" in printed and "resolution control" in printed
    # the printed table is the result's D
    row = next(line for line in printed.splitlines() if line.startswith("SK_3_2"))
    assert f"{res.d_mean['SK_3_2'][1]:+.4f}" in row
    assert "skipped disc/bad_empty.png: empty file" in printed
    # same numbers as the Python API
    model, cfg = load_model("sk_tiny", weights=weights)
    api = scale_sweep(model, images, preprocess=cfg, progress=False)
    for u in api.site_aliases:
        np.testing.assert_allclose(res.d_mean[u], api.d_mean[u], atol=1e-6)

    # a rerun into the same OUT keeps the user's files and removes only its own stale figures
    (out / "figures" / "mine.png").write_bytes(b"user figure")
    (out / "result" / "notes.txt").write_text("mine")
    (out / "checkpoint").mkdir()
    (out / "checkpoint" / "mine.txt").write_text("mine")
    assert main(_args(weights, images, out, "--batch-size", "4", "--limit", "3")) == 0
    capsys.readouterr()
    assert ScaleSweepResult.load(out / "result").n_images == 3
    assert (out / "figures" / "mine.png").read_bytes() == b"user figure"
    assert (out / "result" / "notes.txt").read_text() == "mine"
    assert (out / "checkpoint" / "mine.txt").read_text() == "mine"
    assert "class_d.png" in os.listdir(out / "figures")  # 3 images of 3 classes


def test_strict_exits_non_zero_and_no_sk_model_gets_one_line(setup, tmp_path, capsys):
    weights, images, _ = setup
    code = main(_args(weights, images, tmp_path / "o", "--strict"))
    err = capsys.readouterr().err
    # one line naming the first unusable file, its reason and why the run stopped
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("attnviz sweep: error: skipped disc/bad_empty.png: empty file")
    assert "strict" in err
    assert not (tmp_path / "o" / "result").exists()

    plain = _weights(tmp_path / "plain.safetensors", "resnet_tiny")
    args = _args(plain, images, tmp_path / "p")
    args[2] = "resnet_tiny"
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith("attnviz sweep: error: ")
    assert "has no SK (selective kernel) site" in err and "Traceback" not in err


def test_usage_and_output_folder_errors_are_one_line(setup, tmp_path, capsys):
    weights, images, _ = setup
    for extra in (["--scales", "nan"], ["--scales", "inf"], ["--scales", "0.5"],
                  ["--limit", "-1"], ["--batch-size", "0"]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            main(_args(weights, images, tmp_path / "u", *extra))
        err = capsys.readouterr().err.strip()
        assert exit_.value.code == 2 and len(err.splitlines()) == 1, (extra, err)
        assert err.startswith("attnviz sweep: error: "), err
    with pytest.raises(SystemExit) as exit_:  # --units is gone: --sites
        main(_args(weights, images, tmp_path / "u", "--units", "SK_2_1"))
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1
    assert "error: unrecognized arguments: --units SK_2_1" in err
    assert not (tmp_path / "u").exists()

    # OUT inside the image folder: refused before any work
    assert main(_args(weights, images, images / "out")) == 1
    err = capsys.readouterr().err.strip()
    assert "inside the image folder" in err and len(err.splitlines()) == 1
    assert not (images / "out").exists() or not any((images / "out").iterdir())
    # OUT a file
    (tmp_path / "file").write_text("x")
    assert main(_args(weights, images, tmp_path / "file")) == 1
    assert "is a file" in capsys.readouterr().err
    # OUT locked by another running attnviz: the second run is refused
    busy = tmp_path / "busy"
    busy.mkdir()
    with open(busy / ".attnviz.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(_args(weights, images, busy)) == 1
        assert "in use by another running attnviz" in capsys.readouterr().err
    assert not (busy / "result").exists()
    # --sites picks sites by alias; an unknown one names the valid ones
    assert main(_args(weights, images, tmp_path / "s", "--sites", "SK_9_9")) == 1
    err = capsys.readouterr().err
    assert "unknown SK (selective kernel) site 'SK_9_9'" in err and "SK_2_1" in err
    assert main(_args(weights, images, tmp_path / "s", "--sites", "SK_3_2", "--limit", "2",
                      "--no-figures")) == 0  # fmt: skip
    assert ScaleSweepResult.load(tmp_path / "s" / "result").site_aliases == ["SK_3_2"]


def test_shapes_sweeps_native_scenes_and_excludes_images(setup, tmp_path, capsys):
    weights, images, _ = setup
    base = ["sweep", "--model", "sk_tiny", "--weights", str(weights), "--no-progress"]
    x = str(tmp_path / "x")
    for extra in (["--out", x], ["--images", str(images), "--shapes", "3", "--out", x]):
        code = main(base + extra)
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err
        assert err.startswith("attnviz sweep: error: ") and "--shapes" in err
    assert not (tmp_path / "x").exists()
    out = tmp_path / "scenes"
    assert main(base + ["--shapes", "4", "--out", str(out), "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    res = ScaleSweepResult.load(out / "result")
    assert res.n_images == 4 and res.views_native and res.view_conditions == ["zoom"] * 3
    assert res.meta["scenes"]["n_scenes"] == 4 and res.meta["scenes"]["seed"] == 20_000
    views = pd.read_csv(out / "result" / "views.csv")
    assert len(views) == 12 and {"x0", "y0", "x1", "y1", "scale"} <= set(views.columns)
    w = (views.x1 - views.x0).to_numpy().reshape(4, 3)
    assert (abs(w[:, 2] - 2 * w[:, 0]) <= 1).all()
    assert "views = native renders" in printed and "dD @ 2.0x" in printed
    for name in ("fig3_views", "fig4_class_d", "delta_bars"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.subprocess
def test_resume_after_sigkill_equals_uninterrupted_run(setup, tmp_path, capsys):
    weights, _, _ = setup
    images = _images(tmp_path / "imgs", 3, bad=False)  # 30 images, 15 batches of 2
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "attnviz", *_args(weights, images, out)]
    cmd += ["--batch-size", "2", "--checkpoint-every", "1", "--no-figures"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = out / "checkpoint" / "scale_sweep-rank0-of1.npz"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    with np.load(ckpt, allow_pickle=False) as z:
        position = json.loads(str(z["checkpoint"]))["position"]
    assert 0 < position < 30 and not (out / "result").exists()

    # a rerun without --resume never overwrites the checkpoint: it says what to use
    again = _args(weights, images, out, "--batch-size", "2", "--no-figures")
    assert main(again) == 1
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    # resuming with other weights would mix two models: refused, naming what changed
    other = _weights(tmp_path / "other.safetensors", "sk_tiny")
    with torch.no_grad():
        sd = {k: v + 0.01 if v.is_floating_point() else v for k, v in
              create_tiny("sk_tiny").state_dict().items()}  # fmt: skip
    save_file(sd, str(other))
    changed = _args(other, images, out, "--batch-size", "2", "--resume", "--no-figures")
    assert main(changed) == 1
    err = capsys.readouterr().err
    assert "cannot resume" in err and "weights" in err
    # so does resuming after an image changed
    victim = sorted(images.rglob("*.png"))[0]
    stat = victim.stat()
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert main([*again, "--resume"]) == 1
    assert "changed" in capsys.readouterr().err
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with np.load(ckpt, allow_pickle=False) as z:  # the refusals left the checkpoint alone
        assert json.loads(str(z["checkpoint"]))["position"] == position

    assert main(_args(weights, images, out, "--batch-size", "2", "--resume", "--no-figures")) == 0
    resumed = ScaleSweepResult.load(out / "result")
    assert not (out / "checkpoint").exists()
    model, cfg = load_model("sk_tiny", weights=weights)
    full = scale_sweep(model, images, preprocess=cfg, batch_size=2, progress=False)
    assert resumed.n_images == full.n_images == 30
    for u in full.site_aliases:
        np.testing.assert_allclose(resumed.d_mean[u], full.d_mean[u], atol=1e-6, rtol=0)
        np.testing.assert_allclose(resumed.branch_mean[u], full.branch_mean[u], atol=1e-6)
        np.testing.assert_allclose(resumed.class_d_mean[u], full.class_d_mean[u], atol=1e-6)
        # the paired sums (zoom and resolution control) resume too
        np.testing.assert_allclose(resumed.delta_mean[u], full.delta_mean[u], atol=1e-6)
        np.testing.assert_allclose(resumed.delta_se[u], full.delta_se[u], atol=1e-6)
        np.testing.assert_allclose(resumed.excess_se[u], full.excess_se[u], atol=1e-6)


@pytest.mark.subprocess
def test_torchrun_two_ranks_equals_single_process(setup, tmp_path):
    weights, images, _ = setup
    torchrun = BIN / "torchrun"
    assert torchrun.exists(), "torchrun ships with torch"
    out = tmp_path / "dist"
    launch = [str(torchrun), "--standalone", "--nnodes", "1", "--nproc_per_node", "2", "-m"]
    cmd = [*launch, "attnviz", *_args(weights, images, out, "--batch-size", "3", "--no-figures")]
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    dist = ScaleSweepResult.load(out / "result")
    assert dist.meta["run"]["world_size"] == 2
    model, cfg = load_model("sk_tiny", weights=weights)
    single = scale_sweep(model, images, preprocess=cfg, batch_size=3, progress=False)
    assert dist.n_images == single.n_images
    assert sorted(dist.skipped) == sorted(single.skipped)
    for u in single.site_aliases:
        np.testing.assert_allclose(dist.d_mean[u], single.d_mean[u], atol=1e-6, rtol=0)
        np.testing.assert_allclose(dist.d_sem[u], single.d_sem[u], atol=1e-6, rtol=0)
        np.testing.assert_allclose(dist.branch_mean[u], single.branch_mean[u], atol=1e-6)
        np.testing.assert_allclose(dist.class_d_mean[u], single.class_d_mean[u], atol=1e-6)
        np.testing.assert_allclose(dist.delta_mean[u], single.delta_mean[u], atol=1e-6)
        np.testing.assert_allclose(dist.delta_se[u], single.delta_se[u], atol=1e-6)
        np.testing.assert_allclose(
            dist.class_delta_se[u], single.class_delta_se[u], atol=1e-6, equal_nan=True
        )
        np.testing.assert_allclose(dist.excess_mean[u], single.excess_mean[u], atol=1e-6)
    assert dist.view_count.tolist() == single.view_count.tolist()
    assert run.stdout.count("wrote ") == 1  # only rank 0 writes and prints


def test_demo_runs_the_sweep_part_and_keeps_user_files(tmp_path, monkeypatch, capsys):
    from attnviz.commands import demo as demo_cmd
    from attnviz.models import bundled_models

    assert "sk_tiny" in bundled_models(), "bundled sk_tiny checkpoint missing"
    # 10 images: a quick demo
    monkeypatch.setattr(
        demo_cmd,
        "DEMO_PARTS",
        (
            ("sweep", "attnviz.commands.sweep", (0, 10)),  # 10 native scenes
            ("queries", "attnviz.commands.queries", (1, 1)),
        ),
    )
    root = tmp_path / "demo"
    (root / "sweep" / "images").mkdir(parents=True)
    (root / "sweep" / "images" / "mine.png").write_bytes(b"the user's own file")
    assert main(["demo", "--out", str(root), "--only", "sweep"]) == 0
    out = capsys.readouterr().out
    assert f"wrote results, figures and summaries under {root}" in out
    res = ScaleSweepResult.load(root / "sweep" / "result")
    assert res.n_images == 10 and res.meta["model"] == "sk_tiny" and res.views_native
    assert res.meta["scenes"]["n_scenes"] == 10
    assert (root / "sweep" / "figures" / "fig3_views.png").exists()
    assert (root / "sweep" / "figures" / "stage_bars.svg").exists()
    assert (root / "sweep" / "summary.txt").read_text() == res.summary() + "\n"
    assert (root / "sweep" / "images" / "mine.png").read_bytes() == b"the user's own file"
    assert not (root / "queries").exists()  # --only: the other parts do not run
    summary = (root / "summary.md").read_text()
    assert "## sweep" in summary and "## queries" not in summary
    assert f"{res.d_mean['SK_2_1'][0]:+.4f}" in summary
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(root), "--only"])
    capsys.readouterr()
    assert main(["demo", "--out", str(root), "--only", "nope"]) == 2
    assert "unknown demo part" in capsys.readouterr().err
