"""The one runner, input pipeline and result format (issue 10): forwards, checkpoints and
resume, sharding, progress, skips, and the Result base."""

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

import attnviz
from attnviz.analysis import (
    attention_vs_attribution,
    excitation_profile,
    query_independence,
    query_maps,
    scale_sweep,
)
from attnviz.analysis.runner import State, read_checkpoint
from attnviz.data.sources import image_source, iter_batches
from attnviz.errors import BadImageError, CheckpointError, Interrupted
from attnviz.models import load_model
from attnviz.results import Result, ResultFormatError

ANALYSES = {
    "sweep": ("sk_tiny", lambda m, imgs, **kw: scale_sweep(m, imgs, per_image=True, **kw)),
    "excitation": ("se_tiny", lambda m, imgs, **kw: excitation_profile(m, imgs, **kw)),
    "attribution": (
        "cbam_tiny",
        lambda m, imgs, **kw: attention_vs_attribution(m, imgs, sites="all", keep_maps=3, **kw),
    ),
    "queries": ("nl_tiny", lambda m, imgs, **kw: query_independence(m, imgs, map_images=2, **kw)),
}


def _arrays(result: Result) -> dict:
    arrays, frames, fields = result._payload()
    fields = {k: v for k, v in fields.items() if k != "meta"}
    return arrays, frames, fields


def assert_same_result(a: Result, b: Result, atol: float = 1e-9) -> None:
    """Every array, frame and manifest field of two results agree (meta aside)."""
    arr_a, fr_a, fi_a = _arrays(a)
    arr_b, fr_b, fi_b = _arrays(b)
    assert arr_a.keys() == arr_b.keys()
    for k in arr_a:
        x, y = np.asarray(arr_a[k]), np.asarray(arr_b[k])
        assert x.shape == y.shape, k
        if x.dtype.kind in "fc":
            np.testing.assert_allclose(x, y, atol=atol, rtol=1e-7, equal_nan=True, err_msg=k)
        else:
            np.testing.assert_array_equal(x, y, err_msg=k)
    assert fr_a.keys() == fr_b.keys()
    for k in fr_a:
        pd.testing.assert_frame_equal(fr_a[k], fr_b[k], atol=atol, check_exact=False)
    assert json.dumps(fi_a, default=str, sort_keys=True) == json.dumps(
        fi_b, default=str, sort_keys=True
    )


@pytest.fixture(scope="module")
def models():
    return {name: load_model(spec) for name, (spec, _) in ANALYSES.items()}


# ----------------------------------------------------------------------------- one forward
@pytest.mark.parametrize("name", sorted(ANALYSES))
def test_exactly_one_forward_per_batch(name, models, shapes_folder):
    model, cfg = models[name]
    calls = []
    handle = model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        result = ANALYSES[name][1](
            model, shapes_folder, preprocess=cfg, batch_size=7, progress=False
        )
    finally:
        handle.remove()
    assert len(calls) == 3  # 20 images in batches of 7, 7, 6
    # the sweep's views ride in the same forward: 3 zoom views + 2 resolution controls
    per_image = 5 if name == "sweep" else 1
    assert calls == [7 * per_image, 7 * per_image, 6 * per_image]
    assert result.meta["run"]["n_images"] == 20


def test_query_maps_is_one_forward(models, shapes_folder):
    model, cfg = models["queries"]
    calls = []
    handle = model.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        query_maps(
            model, next(shapes_folder.rglob("*.png")), queries=[(3, 60), (50, 5)], preprocess=cfg
        )
    finally:
        handle.remove()
    assert calls == [1]


# ----------------------------------------------------------------------------- resume
class _StopAfter:
    """A forward hook raising KeyboardInterrupt on the n-th forward (a Ctrl-C)."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self, module, inputs, output):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt


@pytest.mark.parametrize("name", sorted(ANALYSES))
def test_interrupted_and_resumed_equals_uninterrupted(name, models, shapes_folder, tmp_path):
    model, cfg = models[name]
    fn = ANALYSES[name][1]
    opts = dict(
        preprocess=cfg,
        batch_size=4,
        progress=False,
        checkpoint=tmp_path / "ckpt",
        checkpoint_every=1,
    )
    full = fn(model, shapes_folder, preprocess=cfg, batch_size=4, progress=False)
    stop = _StopAfter(3)
    handle = model.register_forward_hook(stop)
    try:
        with pytest.raises(Interrupted, match="--resume") as info:
            fn(model, shapes_folder, **opts)
    finally:
        handle.remove()
    ckpt = Path(info.value.checkpoint)
    assert ckpt.is_file()
    with pytest.raises(CheckpointError, match="--resume .* or --overwrite"):
        fn(model, shapes_folder, **opts)  # never overwritten silently
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        resumed = fn(model, shapes_folder, resume=True, **opts)
    finally:
        handle.remove()
    assert len(calls) == 3  # batches 3, 4, 5 of 5: the first two came from the checkpoint
    assert_same_result(full, resumed)


def test_resume_refuses_another_run(models, shapes_folder, tmp_path):
    model, cfg = models["excitation"]
    opts = dict(
        preprocess=cfg, batch_size=4, progress=False, checkpoint=tmp_path, checkpoint_every=1
    )
    handle = model.register_forward_hook(_StopAfter(2))
    try:
        with pytest.raises(Interrupted):
            excitation_profile(model, shapes_folder, **opts)
    finally:
        handle.remove()
    with pytest.raises(CheckpointError, match="params changed"):
        excitation_profile(model, shapes_folder, channels=7, resume=True, **opts)
    with pytest.raises(CheckpointError, match="weights_sha256 changed"):
        excitation_profile(
            model, shapes_folder, resume=True, fingerprint={"weights_sha256": "0" * 64}, **opts
        )
    image = sorted(shapes_folder.rglob("*.png"))[5]
    st = image.stat()
    try:
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        with pytest.raises(CheckpointError, match="image .*changed"):
            excitation_profile(model, shapes_folder, resume=True, **opts)
    finally:
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    ckpt = next(tmp_path.glob("*.npz"))
    ckpt.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable"):
        excitation_profile(model, shapes_folder, resume=True, **opts)
    again = excitation_profile(model, shapes_folder, overwrite=True, **opts)
    assert again.n_images == 20


def test_images_are_read_in_the_calling_process_by_default(models, shapes_folder, monkeypatch):
    """``workers=0`` by default: in a DataLoader worker ``get_worker_info()`` is not None."""
    import attnviz.analysis.runner as runner

    model, cfg = models["excitation"]
    seen = []
    real = runner.preprocess_for

    class Spy:  # the runner's transform, noting where each image is prepared
        def __init__(self, transform):
            self.transform = transform

        def __call__(self, image):
            seen.append(torch.utils.data.get_worker_info())
            return self.transform(image)

        def __getattr__(self, name):
            return getattr(self.transform, name)

    def spy(spec):
        return Spy(real(spec))

    monkeypatch.setattr(runner, "preprocess_for", spy)
    excitation_profile(model, shapes_folder, preprocess=cfg, limit=4, progress=False)
    assert len(seen) == 4 and all(info is None for info in seen)


def test_a_checkpoint_without_max_pixels_resumes_at_the_default(models, shapes_folder, tmp_path):
    model, cfg = models["excitation"]
    opts = dict(preprocess=cfg, batch_size=4, progress=False, checkpoint=tmp_path / "c")
    full = excitation_profile(model, shapes_folder, preprocess=cfg, batch_size=4, progress=False)
    handle = model.register_forward_hook(_StopAfter(3))
    try:
        with pytest.raises(Interrupted):
            excitation_profile(model, shapes_folder, checkpoint_every=1, **opts)
    finally:
        handle.remove()
    ckpt = next(Path(tmp_path / "c").glob("*.npz"))
    # at the default cap the fingerprint leaves max_pixels out, as the checkpoints written
    # before the cap existed did, so those still resume; another cap is refused
    assert "max_pixels" not in read_checkpoint(ckpt)[0]["fingerprint"]
    with pytest.raises(CheckpointError, match="max_pixels changed"):
        excitation_profile(
            model,
            shapes_folder,
            resume=True,
            max_pixels=attnviz.data.images.MAX_PIXELS // 2,
            **opts,
        )
    resumed = excitation_profile(model, shapes_folder, resume=True, **opts)
    pd.testing.assert_frame_equal(resumed.to_frame(), full.to_frame())


@pytest.mark.subprocess
def test_sigkill_then_resume_equals_uninterrupted(shapes_folder, tmp_path, cli):
    """A real ``kill -9`` of ``attnviz sweep``; ``--resume`` finishes it with equal numbers."""
    exe = [
        sys.executable,
        "-m",
        "attnviz",
        "sweep",
        "--model",
        "sk_tiny",
        "--images",
        str(shapes_folder),
        "--batch-size",
        "2",
        "--no-progress",
        "--no-figures",
        "--per-image",
        "--checkpoint-every",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert cli(*exe[3:], "--out", tmp_path / "full").code == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [*exe, "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpt = out / "checkpoint" / "scale_sweep-rank0-of1.npz"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            from attnviz.analysis.runner import read_checkpoint

            try:
                if read_checkpoint(ckpt)[0]["position"] >= 4:
                    break
            except CheckpointError:
                pass
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.skip("the sweep finished before it could be killed (machine too fast)")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "result").exists()
    resumed = subprocess.run(
        [*exe, "--out", str(out), "--resume"], env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert not ckpt.exists()  # removed after success
    a = attnviz.ScaleSweepResult.load(tmp_path / "full" / "result")
    b = attnviz.ScaleSweepResult.load(out / "result")
    assert_same_result(a, b)


@pytest.mark.subprocess
def test_two_rank_torchrun_equals_one_process(shapes_folder, tmp_path, cli):
    """``torchrun --nproc_per_node 2`` (gloo) of ``attnviz excitation`` equals one process;
    the runner shards and merges the same way for every analysis."""
    common = [
        "excitation",
        "--model",
        "se_tiny",
        "--images",
        str(shapes_folder),
        "--batch-size",
        "3",
        "--no-progress",
    ]
    assert cli(*common, "--out", tmp_path / "one").code == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            "-m",
            "attnviz",
            *common,
            "--out",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    load = attnviz.ExcitationProfileResult.load
    a, b = load(tmp_path / "one" / "result"), load(tmp_path / "two" / "result")
    # the ranks' batches hold other images, so float32 convolutions round differently
    assert_same_result(a, b, atol=1e-6)
    assert b.meta["run"]["world_size"] == 2 and a.meta["run"]["world_size"] == 1
    assert not (tmp_path / "two" / "checkpoint").exists()


# ----------------------------------------------------------------------------- inputs
def test_bad_files_are_skipped_with_their_reason_and_strict_fails(bad_images, models):
    model, cfg = models["excitation"]
    result = excitation_profile(model, bad_images, preprocess=cfg, progress=False)
    reasons = dict(result.skipped)
    assert set(reasons) == {
        "disc/bad_empty.png",
        "disc/bad_text.jpg",
        "ring/bad_truncated.png",
        "ring/bad_tiny.png",
    }
    assert reasons["disc/bad_empty.png"] == "empty file"
    assert reasons["disc/bad_text.jpg"] == "not an image"
    assert reasons["ring/bad_truncated.png"].startswith("truncated or corrupt image")
    assert reasons["ring/bad_tiny.png"].startswith("too small")
    assert result.n_images == 5  # 4 good + the non-UTF-8 name
    assert result.meta["run"]["n_skipped"] == 4
    with pytest.raises(BadImageError, match="bad_empty.png: empty file"):
        excitation_profile(model, bad_images, preprocess=cfg, progress=False, strict=True)


def test_permission_denied_is_reported_as_such(tmp_path, monkeypatch):
    from PIL import Image

    from attnviz.data.images import load_image

    path = tmp_path / "locked.png"
    Image.new("RGB", (16, 16)).save(path)

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", refuse)
    assert load_image(path) == (None, "permission denied")


def test_non_utf8_file_names_work_end_to_end(bad_images, tmp_path, cli):
    res = cli(
        "excitation",
        "--model",
        "se_tiny",
        "--images",
        bad_images,
        "--out",
        tmp_path / "out",
        "--no-progress",
    )
    assert res.code == 0, res.err
    frame = pd.read_csv(tmp_path / "out" / "result" / "excitation.csv")
    assert len(frame)
    src = image_source(bad_images)
    assert "ring/good_\\xff.png" in src.ids


def test_workers_decode_the_same_batches(shapes_folder):
    source = image_source(shapes_folder)
    t = attnviz.preprocess_for("sk_tiny")
    positions = list(range(len(source)))
    a = list(iter_batches(source, positions, 6, t, workers=0))
    b = list(iter_batches(source, positions, 6, t, workers=2))
    assert [len(x) for x in a] == [len(x) for x in b] == [6, 6, 6, 2]
    for x, y in zip(a, b):
        assert torch.equal(x.x, y.x) and x.records == y.records


def test_limit_and_batch_size_are_validated(models, shapes_folder):
    model, cfg = models["excitation"]
    for bad in ({"limit": -1}, {"limit": 0}, {"batch_size": 0}, {"workers": -1}):
        with pytest.raises(ValueError, match=">= "):
            excitation_profile(model, shapes_folder, preprocess=cfg, progress=False, **bad)
    r = excitation_profile(model, shapes_folder, preprocess=cfg, progress=False, limit=5)
    assert r.n_images == 5


def test_progress_closing_line_and_run_record(models, shapes_folder, capsys):
    model, cfg = models["excitation"]
    r = excitation_profile(model, shapes_folder, preprocess=cfg, batch_size=8)
    err = capsys.readouterr().err
    assert "excitation_profile: 20 images (0 skipped) in" in err and "images/s)" in err
    run = r.meta["run"]
    assert run["n_images"] == 20 and run["seconds"] > 0
    # the record rounds seconds to 3 decimals: allow that rounding (0.0005 s) in the ratio
    rounding = 0.0005 / run["seconds"]
    assert run["images_per_s"] == pytest.approx(20 / run["seconds"], rel=rounding + 1e-3)


def test_eval_flags_restored_exactly(models, shapes_folder):
    model, cfg = models["excitation"]
    model.train()
    model.layer1.eval()
    flags = [m.training for m in model.modules()]
    excitation_profile(model, shapes_folder, preprocess=cfg, progress=False, limit=2)
    assert [m.training for m in model.modules()] == flags
    model.eval()


def test_state_round_trips_and_merges():
    a, b = State(), State()
    a.add("s", [1.0, 2.0])
    a.put("r", 3, [1, 2])
    a.info["k"] = [1, 2]
    b.add("s", [10.0, 20.0])
    b.put("r", 0, [5, 6])
    c = State.from_arrays(a.arrays())
    assert c.sums["s"].tolist() == [1.0, 2.0] and c.info == {"k": [1, 2]}
    c.merge(b)
    idx, values = c.stacked("r")
    assert idx.tolist() == [0, 3] and values.tolist() == [[5, 6], [1, 2]]
    assert c.sums["s"].tolist() == [11.0, 22.0]


# ----------------------------------------------------------------------------- results
@pytest.fixture(scope="module")
def results(models, shapes_folder):
    out = {}
    for name, (_, fn) in ANALYSES.items():
        model, cfg = models[name]
        out[name] = fn(model, shapes_folder, preprocess=cfg, progress=False, limit=6)
    model, cfg = models["queries"]
    out["maps"] = query_maps(
        model,
        next(shapes_folder.rglob("*.png")),
        queries=[(2, 3)],
        query_space="cell",
        preprocess=cfg,
    )
    return out


@pytest.mark.parametrize("name", ["sweep", "excitation", "attribution", "queries", "maps"])
def test_every_result_round_trips_every_field(name, results, tmp_path):
    result = results[name]
    assert isinstance(result, Result)
    assert isinstance(result.summary(), str) and result.summary()
    assert isinstance(result.to_frame(), pd.DataFrame)
    result.save(tmp_path)
    loaded = type(result).load(tmp_path)
    assert_same_result(result, loaded)
    assert json.dumps(result.meta, default=str, sort_keys=True) == json.dumps(
        loaded.meta, default=str, sort_keys=True
    )


def test_load_checks_kind_and_version_and_save_keeps_other_files(results, tmp_path):
    sweep, excitation = results["sweep"], results["excitation"]
    (tmp_path / "notes.txt").write_text("mine")
    sweep.save(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    with pytest.raises(
        ResultFormatError,
        match=f"{tmp_path} holds a result of kind 'scale_sweep', not of kind 'excitation_profile'",
    ):
        type(excitation).load(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["format_version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ResultFormatError, match="format 99, newer"):
        type(sweep).load(tmp_path)
    with pytest.raises(ResultFormatError, match="no attnviz result"):
        type(sweep).load(tmp_path / "nowhere")


def test_save_removes_only_its_own_stale_files(results, tmp_path):
    sweep = results["sweep"]
    assert sweep.image_d is not None
    sweep.save(tmp_path)
    assert (tmp_path / "images.csv").exists()
    (tmp_path / "user.csv").write_text("a\n1\n")
    import dataclasses

    dataclasses.replace(
        sweep, image_d=None, image_attention=None, image_ids=None, image_labels=None
    ).save(tmp_path)
    assert not (tmp_path / "images.csv").exists()  # written by the earlier save: stale
    assert (tmp_path / "user.csv").read_text() == "a\n1\n"


def test_folder_labels_follow_the_models_class_order(shapes_folder, models):
    """Class folders are numbered alphabetically; a bundled model's outputs follow its training
    order (disc, ring, square, ...): the runner labels the images by the model's order."""
    from attnviz.data import SHAPE_CLASSES, ShapesDataset

    model, cfg = models["excitation"]
    assert list(cfg.classes) == [c.name for c in SHAPE_CLASSES]
    assert sorted(cfg.classes) != list(cfg.classes)  # the alphabetical order differs
    folder = excitation_profile(model, shapes_folder, preprocess=cfg, progress=False)
    dataset = excitation_profile(
        model,
        ShapesDataset(2, size=64, seed=4242),
        preprocess=cfg,
        labels=[i % 10 for i in range(20)],
        progress=False,
    )
    assert folder.class_names == dataset.class_names == list(cfg.classes)
    for a, b in zip(folder.sites, dataset.sites):
        np.testing.assert_allclose(a.class_mean, b.class_mean, atol=1e-6)


def test_a_model_without_attention_runs_through_the_runner(shapes_folder):
    from attnviz.analysis import gradcam_comparison
    from attnviz.models import create_tiny

    plain = create_tiny("plain_tiny").eval()
    assert attnviz.find_sites(plain) == []  # nothing to capture: the runner captures nothing
    result = gradcam_comparison(
        {"plain_tiny": plain}, shapes_folder, preprocess="sk_tiny", progress=False, limit=4
    )
    assert result.summary()
