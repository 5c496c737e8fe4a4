"""``attnviz sweep``: outputs, bad files, --strict, resume after SIGKILL, torchrun (gloo)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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
    assert manifest["model"] == "sk_tiny" and manifest["scales"] == [1.0, 1.5, 2.0]
    assert manifest["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert {"torch", "numpy", "attnviz", "python"} <= set(manifest["versions"])
    for name in ("stage_bars", "d_heatmap", "class_d", "channel_attention_SK_3_2"):
        for ext in ("png", "svg"):
            assert (out / "figures" / f"{name}.{ext}").stat().st_size > 1000
    assert not (out / "checkpoint").exists()
    # the printed table is the result's D
    row = next(line for line in printed.splitlines() if line.startswith("SK_3_2"))
    assert f"{res.d_mean['SK_3_2'][1]:+.4f}" in row
    assert "skipped disc/bad_empty.png: empty file" in printed
    # same numbers as the Python API
    model, cfg = load_model("sk_tiny", weights=weights)
    api = scale_sweep(model, images, preprocess=cfg, progress=False)
    for u in api.unit_aliases:
        np.testing.assert_allclose(res.d_mean[u], api.d_mean[u], atol=1e-6)


def test_strict_exits_non_zero_and_no_sk_model_gets_one_line(setup, tmp_path, capsys):
    weights, images, _ = setup
    code = main(_args(weights, images, tmp_path / "o", "--strict"))
    err = capsys.readouterr().err
    assert code == 1 and "--strict" in err and "bad_" in err
    assert not (tmp_path / "o" / "result").exists()

    plain = _weights(tmp_path / "plain.safetensors", "resnet_tiny")
    args = _args(plain, images, tmp_path / "p")
    args[2] = "resnet_tiny"
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "has no SK (selective kernel) unit" in err and "Traceback" not in err


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_resume_after_sigkill_equals_uninterrupted_run(setup, tmp_path):
    weights, _, _ = setup
    images = _images(tmp_path / "imgs", 3, bad=False)  # 30 images, 15 batches of 2
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "attnviz", *_args(weights, images, out)]
    cmd += ["--batch-size", "2", "--checkpoint-every", "1", "--no-figures"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ckpt = out / "checkpoint" / "scale_sweep-rank0-of1.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    position = torch.load(ckpt, weights_only=True)["position"]
    assert 0 < position < 30 and not (out / "result").exists()

    assert main(_args(weights, images, out, "--batch-size", "2", "--resume", "--no-figures")) == 0
    resumed = ScaleSweepResult.load(out / "result")
    assert not (out / "checkpoint").exists()
    model, cfg = load_model("sk_tiny", weights=weights)
    full = scale_sweep(model, images, preprocess=cfg, batch_size=2, progress=False)
    assert resumed.n_images == full.n_images == 30
    for u in full.unit_aliases:
        np.testing.assert_allclose(resumed.d_mean[u], full.d_mean[u], atol=1e-6, rtol=0)
        np.testing.assert_allclose(resumed.branch_mean[u], full.branch_mean[u], atol=1e-6)
        np.testing.assert_allclose(resumed.class_d_mean[u], full.class_d_mean[u], atol=1e-6)


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
    assert dist.meta["world_size"] == 2
    model, cfg = load_model("sk_tiny", weights=weights)
    single = scale_sweep(model, images, preprocess=cfg, batch_size=3, progress=False)
    assert dist.n_images == single.n_images
    assert sorted(dist.skipped) == sorted(single.skipped)
    for u in single.unit_aliases:
        np.testing.assert_allclose(dist.d_mean[u], single.d_mean[u], atol=1e-6, rtol=0)
        np.testing.assert_allclose(dist.d_sem[u], single.d_sem[u], atol=1e-6, rtol=0)
        np.testing.assert_allclose(dist.branch_mean[u], single.branch_mean[u], atol=1e-6)
        np.testing.assert_allclose(dist.class_d_mean[u], single.class_d_mean[u], atol=1e-6)
    assert run.stdout.count("wrote ") == 1  # only rank 0 writes and prints


def test_demo_runs_the_sweep_part_and_skips_missing_parts(tmp_path, monkeypatch, capsys):
    from attnviz.commands import demo as demo_cmd
    from attnviz.commands import sweep as sweep_cmd
    from attnviz.models import bundled_models

    assert "sk_tiny" in bundled_models(), "bundled sk_tiny checkpoint missing"
    monkeypatch.setattr(sweep_cmd, "DEMO_N_PER_CLASS", 1)  # 10 images: a quick demo
    monkeypatch.setattr(
        demo_cmd,
        "DEMO_PARTS",
        (("sweep", "attnviz.commands.sweep"), ("later", "attnviz.commands.not_written_yet")),
    )
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    root = tmp_path / "demo"
    assert f"wrote figures and summaries under {root}" in out
    res = ScaleSweepResult.load(root / "sweep" / "result")
    assert res.n_images == 10 and res.meta["model"] == "sk_tiny"
    assert (root / "sweep" / "figures" / "stage_bars.svg").exists()
    summary = (root / "summary.md").read_text()
    assert "## sweep" in summary and "## later" not in summary
    assert f"{res.d_mean['SK_2_1'][0]:+.4f}" in summary
