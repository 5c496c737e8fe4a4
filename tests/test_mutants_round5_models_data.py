"""Round 5's survivors in ``attnviz.models`` and ``attnviz.data``, answered as classes (TESTING.md,
"Mutation testing"):

* every loader path's failure message, whole (seed specs with weights / num_classes / a
  non-bundled spec, the torchvision offline path, timm's size failure with a multi-line or an
  empty exception message, user factories, unknown specs);
* the preprocessing of a bundled model read field by field from its manifest entry (a copy
  in tmp with non-default interpolation, size, mean, std and crop_pct);
* every data cache path: created when nested, named as documented, read back unchanged, and
  a cached training leaves its held-out split and its stream chunk there;
* ``score`` against a hand computation with unequal class sizes, fractions and an empty bin;
* ``bundle`` on a training manifest without ``"models"``; the printed list of ``seeds main``;
* a data config's ``crop_pct`` given as text, compared with timm's ``create_transform``;
* boundary and saturation cases of the scene generators (a contrast value whose way down
  ends exactly at black, a contrast match that overshoots 255, a one-element crop size);
* ``ShapeScenes``' validation of ``n_scenes`` (bools, floats, strings, zero, negative), whole.
"""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from attnviz.data.preprocess import EvalTransform, preprocess_for
from attnviz.data.shapes import ShapeScenes, ShapesDataset, _contrasting_value
from attnviz.models.loading import (
    InputSizeError,
    PretrainedUnavailableError,
    assets_dir,
    load_model,
)

PRETRAINED_HINT = (
    "Pass a local file instead: load_model(spec, weights='path/to/weights.safetensors') "
    "(.safetensors, or a .pth/.pt state dict), or on the command line --weights PATH."
)


def _split(ds: ShapesDataset, start: int, stop: int):
    """uint8 (N, 3, H, W) images and int64 labels of samples start..stop-1, item by item."""
    images = np.stack([ds.render(i) for i in range(start, stop)])
    labels = [ds.record(i).label for i in range(start, stop)]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64)


# ----------------------------------------------------------------------------- loader messages
def _seed_msg(seed: int, spec: str) -> str:
    return (
        f"seed={seed} names a bundled seed replicate of a bundled tiny model; it takes "
        f"no weights= or num_classes= (got spec {spec!r})"
    )


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        ("sk_tiny", {"seed": 1, "num_classes": 3}, _seed_msg(1, "sk_tiny")),
        ("sk_tiny@seed2", {"num_classes": 10}, _seed_msg(2, "sk_tiny")),
        ("sk_tiny", {"seed": 1, "weights": "w.safetensors"}, _seed_msg(1, "sk_tiny")),
        ("timm:resnet18@seed2", {}, _seed_msg(2, "timm:resnet18")),
        ("not_a_model", {"seed": 3}, _seed_msg(3, "not_a_model")),
        ("sk_tiny@seed1", {"seed": 2}, "model spec sk_tiny@seed1 and seed=2 disagree"),
        (
            "python:nocolon",
            {},
            "python spec must be 'python:package.module:factory', got 'nocolon'",
        ),
        (
            "python:json:nothing_here",
            {},
            "python:json:nothing_here: json has no attribute 'nothing_here'",
        ),
        ("python:json:__doc__", {}, "python:json:__doc__: __doc__ is not callable"),
        (
            "python:json:dumps",
            {},
            "python:json:dumps: calling dumps() failed (TypeError: dumps() missing 1 required "
            "positional argument: 'obj'); the factory must take no arguments and return a "
            "torch.nn.Module",
        ),
        (
            "python:builtins:dict",
            {},
            "python:builtins:dict: dict() returned dict, not a torch.nn.Module",
        ),
    ],
)
def test_loader_failure_messages_whole(spec, kwargs, message):
    with pytest.raises(ValueError) as info:
        load_model(spec, **kwargs)
    assert type(info.value) is ValueError
    assert str(info.value) == message


def test_unknown_spec_message_names_every_bundled_model():
    from attnviz.models.zoo import TINY_MODELS

    with pytest.raises(ValueError) as info:
        load_model("nope:x")
    assert str(info.value) == (
        f"unknown model spec 'nope:x': use a bundled name ({', '.join(sorted(TINY_MODELS))}), "
        "'timm:<name>', 'torchvision:<name>' or 'python:package.module:factory'"
    )


def test_torchvision_pretrained_offline_message_whole(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # nothing cached
    with pytest.raises(PretrainedUnavailableError) as info:
        load_model("torchvision:resnet18", pretrained=True)
    assert str(info.value) == (
        "could not fetch pretrained weights for 'torchvision:resnet18' (no hub access: "
        "RuntimeError: HF_HUB_OFFLINE is set). " + PRETRAINED_HINT
    )


@pytest.mark.parametrize(
    ("exc", "first"),
    [
        (
            ValueError("  img_size 20x30 is not divisible\nby the patch size 16\n"),
            "img_size 20x30 is not divisible",
        ),
        (AssertionError(), "AssertionError"),
        (RuntimeError("   \n  "), "RuntimeError"),
    ],
)
def test_timm_size_failure_is_the_first_line_or_the_type(monkeypatch, exc, first):
    import timm

    seen = []

    def fake(name, pretrained=False, **kwargs):
        seen.append((name, pretrained, dict(kwargs)))
        raise exc

    monkeypatch.setattr(timm, "create_model", fake)
    with pytest.raises(InputSizeError) as info:
        load_model("timm:resnet18", input_size=(20, 30))
    assert str(info.value) == f"timm:resnet18 cannot be built for input 20x30: {first}"
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert seen == [("resnet18", False, {"img_size": (20, 30)})]


# ----------------------------------------------------------------------------- bundled config
def test_bundled_preprocessing_is_read_field_by_field(monkeypatch, tmp_path):
    manifest = json.loads((assets_dir() / "manifest.json").read_text())
    entry = manifest["models"]["plain_tiny"]
    entry["preprocessing"] = {
        "input_size": [3, 72, 80],
        "mean": [0.25, 0.5, 0.75],
        "std": [0.1, 0.2, 0.3],
        "interpolation": "bicubic",
        "crop_pct": 0.9,
    }
    entry["classes"] = [f"c{i}" for i in range(10)]
    (tmp_path / "models").mkdir()
    shutil.copyfile(assets_dir() / entry["file"], tmp_path / "models" / entry["file"])
    (tmp_path / "models" / "manifest.json").write_text(
        json.dumps({"models": {"plain_tiny": entry}})
    )
    monkeypatch.setenv("ATTNVIZ_ASSETS", str(tmp_path))
    _, cfg = load_model("plain_tiny")
    assert cfg.to_dict() == {
        "input_size": (3, 72, 80),
        "mean": (0.25, 0.5, 0.75),
        "std": (0.1, 0.2, 0.3),
        "interpolation": "bicubic",
        "crop_pct": 0.9,
        "resize_size": None,
        "classes": tuple(f"c{i}" for i in range(10)),
        "source": {
            "spec": "plain_tiny",
            "weights": str(tmp_path / "models" / entry["file"]),
            "weights_sha256": entry["sha256"],
        },
    }


def test_bundled_checkpoint_failures_whole(monkeypatch, tmp_path):
    from attnviz.models.loading import WeightsError

    manifest = json.loads((assets_dir() / "manifest.json").read_text())
    entry = manifest["models"]["plain_tiny"]
    models = tmp_path / "models"
    models.mkdir()
    shutil.copyfile(assets_dir() / entry["file"], models / entry["file"])
    monkeypatch.setenv("ATTNVIZ_ASSETS", str(tmp_path))
    (models / "manifest.json").write_text(json.dumps({"models": {}}))
    with pytest.raises(FileNotFoundError) as info:
        load_model("plain_tiny")
    assert str(info.value) == (
        f"tiny model 'plain_tiny' has no bundled checkpoint in {models}; train it with "
        "`python -m attnviz.models.train plain_tiny` or pass weights=PATH"
    )
    real = entry["sha256"]
    for command, hint in [
        ("python -m attnviz.models.train plain_tiny --seed 0", None),
        (None, "python -m attnviz.models.train"),
    ]:
        changed = {**entry, "sha256": "0" * 64}
        if command is None:
            changed.pop("command")
        else:
            changed["command"] = command
        (models / "manifest.json").write_text(json.dumps({"models": {"plain_tiny": changed}}))
        with pytest.raises(WeightsError) as info:
            load_model("plain_tiny")
        assert str(info.value) == (
            f"{models / entry['file']} has sha256 {real}, the manifest says {'0' * 64}: the "
            f"file was changed; retrain with `{hint or command}`"
        )


# ----------------------------------------------------------------------------- caches
def test_stream_chunk_and_cached_tensors_make_nested_cache_dirs(tmp_path):
    from attnviz.models.train import cached_tensors, stream_chunk

    ds = ShapesDataset(1, size=64, seed=3, scale_range=(0.2, 0.6))
    cache = tmp_path / "a" / "b" / "c"
    want_x, want_y = _split(ds, 2, 7)
    x, y = stream_chunk(ds, 2, 7, cache)
    assert sorted(p.name for p in cache.iterdir()) == ["stream-s64-seed3-0.2-0.6-2-7.pt"]
    assert torch.equal(x, want_x) and torch.equal(y, want_y) and y.dtype == torch.int64
    x2, y2 = stream_chunk(ds, 2, 7, cache)  # read back: the same samples
    assert torch.equal(x2, want_x) and torch.equal(y2, want_y)
    torch.save((want_x[:1], want_y[:1]), cache / "stream-s64-seed3-0.2-0.6-2-7.pt")
    assert torch.equal(stream_chunk(ds, 2, 7, cache)[0], want_x[:1])  # the cache is what is read
    assert torch.equal(stream_chunk(ds, 2, 7, None)[0], want_x)

    cache2 = tmp_path / "d" / "e"
    full_x, full_y = _split(ds, 0, len(ds))
    scales = np.array([ds.record(i).scale for i in range(len(ds))])
    for _ in range(2):  # written, then read back
        x, y, s = cached_tensors(ds, cache2)
        assert torch.equal(x, full_x) and torch.equal(y, full_y)
        assert isinstance(s, np.ndarray) and np.array_equal(s, scales)
    assert sorted(p.name for p in cache2.iterdir()) == ["shapes-n1-s64-seed3-0.2-0.6.pt"]


def test_cached_training_keeps_both_splits_and_the_same_result(
    monkeypatch, tmp_path, capsys, restore_torch_state
):
    """Two steps of 4 images (10 fresh images, 8 used): the batches, the printed mean loss
    (of the losses seen by a spy on cross_entropy), the printed lines, both cache files, and
    the manifest entry, which is the same with and without the cache."""
    import re
    import types

    import torch.nn.functional as F

    from attnviz.models import train as train_mod

    def run(out, cache):
        seen.clear()
        args = argparse.Namespace(
            arch="plain_tiny", epochs=1, seed=4, n_train=1, n_test=2, batch_size=4,
            optimizer="adamw", lr=3e-3, weight_decay=0.05, warmup=0.1, label_smoothing=0.1,
            threads=1, out=str(out), cache_dir=None if cache is None else str(cache),
        )  # fmt: skip
        return train_mod.train(args)

    seen = []

    def cross_entropy(logits, target, **kwargs):
        loss = F.cross_entropy(logits, target, **kwargs)
        seen.append((len(target), float(loss.detach()), kwargs))
        return loss

    monkeypatch.setattr(train_mod, "F", types.SimpleNamespace(cross_entropy=cross_entropy))
    cache = tmp_path / "cache" / "nested"
    cached = run(tmp_path / "a", cache)
    assert [(n, kw) for n, _, kw in seen] == [(4, {"label_smoothing": 0.1})] * 2
    total = 0.0
    for n, loss, _ in seen:
        total += loss * n
    assert sorted(p.name for p in cache.iterdir()) == [
        "shapes-n2-s64-seed10004-0.15-0.75.pt",
        "stream-s64-seed4-0.15-0.75-0-10.pt",
    ]
    test_ds = ShapesDataset(2, size=64, seed=10004, scale_range=(0.15, 0.75))
    x, y, _ = torch.load(cache / "shapes-n2-s64-seed10004-0.15-0.75.pt", weights_only=True)
    want_x, want_y = _split(test_ds, 0, len(test_ds))
    assert torch.equal(x, want_x) and torch.equal(y, want_y)
    path = tmp_path / "a" / "plain_tiny.safetensors"
    from safetensors.torch import load_file

    acc = _hand_accuracy(load_file(str(path)), want_x, want_y).mean()
    lines = capsys.readouterr().out.splitlines()
    times = [re.sub(r"\d+s", "Ns", line) for line in lines]
    assert times == [
        f"[plain_tiny] epoch 1/1 loss {total / 8:.4f} check accuracy {acc:.3f} lr 0.0000 "
        "(Ns, CPU Ns, data Ns)",
        f"[plain_tiny] held-out accuracy {acc:.4f} (Ns wall, Ns CPU)",
        f"[plain_tiny] wrote {path} sha256 {cached['sha256']}",
    ]
    plain = run(tmp_path / "b", None)
    for key in ("test_accuracy", "test_accuracy_by_class", "test_accuracy_by_scale", "sha256"):
        assert cached[key] == plain[key], key
    assert (cached["data_cache"], plain["data_cache"]) == (True, False)
    _check_entry(cached, tmp_path / "a", want_x, want_y, test_ds)


def _hand_accuracy(state: dict, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Per-image correctness of plain_tiny with ``state`` (float32) on uint8 images ``x``."""
    from attnviz.models.zoo import MEAN, STD, create_tiny

    model = create_tiny("plain_tiny", num_classes=10)
    model.load_state_dict(state)
    model.eval()
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return (model((x.float() / 255.0 - mean) / std).argmax(1) == y).numpy()


def _check_entry(entry, out, x_test, y_test, test_ds):
    """A training's manifest entry, every key: the fixed ones written out, the file's against
    hashlib and stat, the accuracies against a forward pass of the written weights."""
    import hashlib
    import platform

    from safetensors.torch import load_file

    path = out / "plain_tiny.safetensors"
    state = load_file(str(path))
    correct = _hand_accuracy(state, x_test, y_test)
    labels = y_test.numpy()
    classes = test_ds.classes
    written = json.loads((out / "manifest.json").read_text())
    assert written == {"models": {"plain_tiny": json.loads(json.dumps(entry))}}
    volatile = ("train_time_s", "train_cpu_time_s", "train_time_data_generation_s")
    assert all(isinstance(entry[k], float) and entry[k] >= 0 for k in volatile)
    fixed = {k: v for k, v in entry.items() if k not in volatile}
    assert fixed == {
        "architecture": "TinyResNet",
        "factory": "attnviz.models.zoo:TINY_MODELS['plain_tiny']",
        "config": {
            "attn": None, "num_classes": 10, "widths": [16, 32, 64, 128],
            "depths": [2, 2, 2, 2], "attn_kwargs": None, "stem_width": 16,
            "zero_init_residual": False,
        },
        "file": "plain_tiny.safetensors",
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "size_bytes": len(path.read_bytes()),
        "num_params": sum(
            v.numel() for k, v in state.items()
            if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
        ),
        "classes": list(classes),
        "seed": 4,
        "train_data": {
            "dataset": "attnviz.data.ShapesDataset", "n_per_class": 1, "size": 64, "seed": 4,
            "scale_range": [0.15, 0.75], "fresh_per_epoch": 10,
            "note": "a stream of fresh images: epoch e uses samples "
                    "[e * fresh_per_epoch, (e + 1) * fresh_per_epoch); none repeats",
        },
        "train_object_size_range": [0.15, 0.75],
        "test_data": {
            "dataset": "attnviz.data.ShapesDataset", "n_per_class": 2, "size": 64,
            "seed": 10004, "scale_range": [0.15, 0.75],
        },
        "test_accuracy": round(float(correct.sum()) / len(correct), 4),
        "test_accuracy_by_class": {
            name: round(float(correct[labels == c].sum()) / 2, 4)
            for c, name in enumerate(classes)
        },
        "test_accuracy_by_scale": entry["test_accuracy_by_scale"],  # score's: pinned above
        "test_accuracy_by_scale_note": "bins of the object size (object side / image side)",
        "epochs": 1,
        "train_images": 10,
        "batch_size": 4,
        "steps": 2,
        "optimizer": {
            "name": "AdamW", "lr": 0.003, "betas": (0.9, 0.999), "eps": 1e-08,
            "weight_decay": 0.05, "weight_decay_on": "conv and linear weights",
            "schedule": "linear warm-up (0.1 of the steps), then cosine to 0",
            "label_smoothing": 0.1,
        },
        "augmentation": "random h/v flips and transposes",
        "command": "python -m attnviz.models.train plain_tiny --epochs 1 --seed 4 --n-train 1 "
                   "--n-test 2 --batch-size 4 --optimizer adamw --lr 0.003 --weight-decay "
                   f"0.05 --warmup 0.1 --label-smoothing 0.1 --threads 1 --out {out.resolve()}",
        "preprocessing": {
            "input_size": [3, 64, 64], "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225], "interpolation": "bilinear", "crop_pct": 1.0,
        },
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "threads": 1,
        "deterministic_algorithms": True,
        "train_time_note": "wall and CPU time of the training process on one torch thread "
                           "(held-out evaluation and data generation, or reading it from "
                           "--cache-dir, included); wall time depends on the machine's load",
        "data_cache": True,
    }  # fmt: skip


# ----------------------------------------------------------------------------- score
def test_score_by_hand_with_unequal_classes_and_an_empty_bin():
    from attnviz.models.train import score

    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 2])
    correct = np.array([1, 1, 0, 1, 1, 1, 1, 1, 0, 0, 1], dtype=bool)
    scales = np.array([0.2, 0.25, 0.3, 0.6, 0.24, 0.5, 0.5, 0.34, 0.6, 0.59, 0.25])
    got = score(correct, labels, scales, ["a", "b", "c"], (0.2, 0.6))
    assert got == {
        "accuracy": 0.7273,  # 8 / 11
        "accuracy_by_class": {"a": 0.6667, "b": 0.7143, "c": 1.0},  # 2/3, 5/7, 1/1
        "accuracy_by_scale": {
            "0.20-0.25": 1.0,  # 0.2, 0.24
            "0.25-0.35": 0.75,  # 0.25, 0.3, 0.34, 0.25
            "0.35-0.45": None,
            "0.45-0.55": 1.0,
            "0.55-0.60": 0.3333,  # the last bin is closed: 0.6, 0.6, 0.59
        },
    }
    assert list(got) == ["accuracy", "accuracy_by_class", "accuracy_by_scale"]


# ----------------------------------------------------------------------------- seeds
def test_bundle_skips_a_training_manifest_without_models(monkeypatch, tmp_path, capsys):
    from attnviz.models.seeds import bundle

    monkeypatch.setenv("ATTNVIZ_ASSETS", str(tmp_path / "elsewhere"))  # never the repository's
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / "manifest.json").write_text(json.dumps({"version": 1}))
    assert bundle([src, tmp_path / "missing"], out) == []
    assert not out.exists() and not (tmp_path / "elsewhere").exists()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"{tmp_path / 'missing'}: no manifest.json yet (no training finished)\n"


def test_bundle_converts_a_finished_training_to_float16(monkeypatch, tmp_path, capsys):
    """A real bundle of a (random-weight) training: what is skipped and why, the stored file,
    every manifest field against hashlib / stat / a hand forward pass, idempotence, and
    loading it back through ``load_model("plain_tiny@seed1")``."""
    import hashlib

    from safetensors.torch import load_file, save_file

    from attnviz.models import seeds
    from attnviz.models.zoo import create_tiny

    # never the repository's assets, even under a mutant that ignores ``out``
    monkeypatch.setenv("ATTNVIZ_ASSETS", str(tmp_path / "elsewhere"))
    monkeypatch.setattr(seeds, "CHECK_PER_CLASS", 1)
    torch.manual_seed(0)
    weights = {k: v.contiguous() for k, v in create_tiny("plain_tiny").state_dict().items()}
    src = tmp_path / "src"
    src.mkdir()
    save_file(weights, str(src / "plain_tiny.safetensors"))
    raw = (src / "plain_tiny.safetensors").read_bytes()
    test = {"n_per_class": 2, "size": 64, "seed": 10001, "scale_range": [0.2, 0.7]}
    entry = {
        "seed": 1, "file": "plain_tiny.safetensors", "sha256": hashlib.sha256(raw).hexdigest(),
        "size_bytes": len(raw), "config": {"num_classes": 10}, "test_data": test,
        "test_accuracy": 0.5, "classes": ["a"],
        "preprocessing": {
            "input_size": [3, 64, 64], "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.2, 0.2],
            "interpolation": "bicubic", "crop_pct": 1.0,
        },
    }  # fmt: skip
    training = {
        "models": {
            "plain_tiny": entry,
            "sk_tiny": {**entry, "seed": 0},  # the bundled model itself: skipped
            "gc_tiny": {**entry, "seed": 2, "file": "gc_tiny.safetensors"},  # unfinished
            "resnet18": {**entry, "seed": 3},  # not a tiny model: skipped
        }
    }
    (src / "manifest.json").write_text(json.dumps(training))
    out = tmp_path / "models" / "seeds"
    assert seeds.bundle([src], out) == ["plain_tiny@seed1"]
    stored = out / "plain_tiny-seed1.safetensors"
    data = stored.read_bytes()
    half = load_file(str(stored))
    assert all(
        half[k].dtype == (torch.float16 if v.is_floating_point() else v.dtype)
        and torch.equal(half[k], v.half() if v.is_floating_point() else v)
        for k, v in weights.items()
    ) and set(half) == set(weights)
    as32 = {k: v.float() if v.is_floating_point() else v for k, v in half.items()}

    def acc(n):
        ds = ShapesDataset(n, size=64, seed=10001, scale_range=(0.2, 0.7))
        correct = _hand_accuracy(as32, *_split(ds, 0, len(ds)))
        return round(float(correct.sum()) / len(correct), 4)

    new = {
        **{k: v for k, v in entry.items() if k not in ("file", "sha256", "size_bytes")},
        "file": "plain_tiny-seed1.safetensors",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "dtype": "float16",
        "source_sha256": entry["sha256"],
        "source_size_bytes": len(raw),
        "source_test_accuracy": 0.5,
        "test_accuracy": acc(2),
        "test_accuracy_note": "re-measured on the stored float16 weights loaded as float32",
        "check": {"n_per_class": 1, "accuracy": acc(1)},
    }
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == {"models": {"plain_tiny@seed1": new}}
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", stored.name]
    captured = capsys.readouterr()
    assert captured.out == (
        f"plain_tiny@seed1: {len(data)} bytes, held-out accuracy {new['test_accuracy']} "
        "(float32 source 0.5)\n"
    )
    assert captured.err == f"gc_tiny@seed2: training not finished in {src}, skipped\n"
    assert seeds.bundle([src], out) == ["plain_tiny@seed1"]  # already bundled: unchanged
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert stored.read_bytes() == data

    monkeypatch.setenv("ATTNVIZ_ASSETS", str(tmp_path))
    model, cfg = load_model("plain_tiny@seed1")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in as32.items())
    assert cfg.to_dict() == {
        "input_size": (3, 64, 64), "mean": (0.4, 0.5, 0.6), "std": (0.2, 0.2, 0.2),
        "interpolation": "bicubic", "crop_pct": 1.0, "resize_size": None, "classes": ("a",),
        "source": {
            "spec": "plain_tiny@seed1", "weights": str(stored),
            "weights_sha256": new["sha256"], "seed": 1,
        },
    }  # fmt: skip
    assert seeds.seeds_of("plain_tiny") == [0, 1]


@pytest.mark.parametrize("done", [[], ["sk_tiny@seed1"], ["gc_tiny@seed2", "sk_tiny@seed1"]])
def test_seeds_main_prints_the_bundled_keys(monkeypatch, tmp_path, capsys, done):
    from attnviz.models import seeds

    monkeypatch.setenv("ATTNVIZ_ASSETS", str(tmp_path / "elsewhere"))  # never the repository's
    calls = []
    monkeypatch.setattr(seeds, "bundle", lambda sources, out: calls.append((sources, out)) or done)
    assert seeds.main(["s1", "s2", "--out", str(tmp_path)]) == 0
    assert calls == [(["s1", "s2"], str(tmp_path))]
    assert capsys.readouterr().out == (
        f"{len(done)} seed replicates bundled in {tmp_path}: {', '.join(done)}\n"
    )
    assert seeds.main(["s1"]) == 0
    assert calls[-1] == (["s1"], None)
    assert capsys.readouterr().out == (
        f"{len(done)} seed replicates bundled in {assets_dir() / 'seeds'}: {', '.join(done)}\n"
    )


# ----------------------------------------------------------------------------- preprocessing
def test_crop_pct_given_as_text_reaches_timms_transform():
    from timm.data import create_transform

    config = {
        "input_size": (3, 20, 30),
        "interpolation": "bicubic",
        "mean": (0.5, 0.4, 0.3),
        "std": (0.2, 0.25, 0.3),
        "crop_pct": "0.5",
    }
    t = preprocess_for(config)
    assert t.config["crop_pct"] == 0.5 and isinstance(t.config["crop_pct"], float)
    ref = create_transform(
        input_size=(3, 20, 30), interpolation="bicubic", mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.25, 0.3), crop_pct=0.5, is_training=False,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (47, 83, 3), dtype=np.uint8))
    assert torch.equal(t(image), ref(image))
    full = preprocess_for({**config, "crop_pct": 1.0})
    assert not torch.equal(t(image), full(image))  # the crop changes what the model sees
    assert t.view(image).size == (30, 20)


# ----------------------------------------------------------------------------- scene data
def test_contrasting_value_when_the_way_down_ends_exactly_at_black():
    """down == 0 is a reachable value (black): the coin decides, as for any down >= 0."""
    seen = set()
    for seed in range(40):
        ref = np.random.default_rng(seed)
        gap, coin = ref.uniform(0.3, 0.5), ref.random()
        rng = np.random.default_rng(seed)
        got = _contrasting_value(rng, gap)  # v_ref == gap: down is exactly 0.0
        assert got == (gap + gap if coin < 0.5 else 0.0)
        assert rng.random() == ref.random()  # exactly two draws were taken
        seen.add(coin < 0.5)
    assert seen == {True, False}


def test_contrast_match_that_overshoots_saturates_at_255():
    """A dark view matched to a bright one: the outlier's affine image (about 340) is clipped
    to 255, never wrapped; the result is monotone in the input and has the target's mean and
    std (NumPy's, within 0.1 grey level)."""
    from attnviz.data.scene_controls import _contrast_matched

    rng = np.random.default_rng(1)
    view_1 = rng.integers(60, 140, (6, 9, 3)).astype(np.uint8)
    view_1[0, 0] = 250  # one bright outlier
    view_s = rng.integers(190, 256, (6, 9, 3)).astype(np.uint8)
    out = _contrast_matched(view_1, view_s)
    assert out.dtype == np.uint8 and out.shape == view_1.shape
    assert (out[0, 0] == 255).all()  # saturated, not wrapped
    order = np.argsort(view_1.ravel(), kind="stable")
    assert (np.diff(out.ravel()[order].astype(int)) >= 0).all()  # monotone in view_1
    assert abs(out.mean() - view_s.mean()) < 0.1
    assert abs(out.std() - view_s.std()) < 0.1


def test_view_box_with_a_one_element_crop_size():
    from torchvision import transforms as T

    from attnviz.data.views import view_box

    crop = T.CenterCrop(16)
    crop.size = (16,)  # a recipe that keeps the size as given: one element
    geometry = T.Compose([T.Resize(24), crop])
    t = EvalTransform(geometry, T.ToTensor(), {"input_size": (3, 16, 16)})
    image = Image.new("RGB", (50, 30))
    assert t.view(image).size == (16, 16)
    # Resize(24) of 50x30 -> 40x24 (scale 1.25 each way), crop at left 12, top 4
    assert view_box((50, 30), t) == pytest.approx((15.0, 5.0, 35.0, 25.0))


def test_shape_scenes_valid_construction():
    scenes = ShapeScenes(3, scales=[1, 2.0], seed=7, object_range=(0.2, 0.8), controls=[])
    assert len(scenes) == 3 and scenes.n_scenes == 3
    assert scenes.scales == (1.0, 2.0) and scenes.object_range == (0.2, 0.8)
    assert (scenes.size, scenes.seed, scenes.control_scale) == (64, 7, 2.0)
    assert scenes.source.scale_range == (0.2, 0.4) and scenes.source.seed == 7
    assert scenes.classes == list(ShapesDataset(1).classes)
    assert len(scenes.indices) == 3 and scenes.indices == sorted(set(scenes.indices))
    assert scenes.tried == scenes.indices[-1] + 1


NSCENES = "n_scenes must be a whole number >= 1, got {!r}"


@pytest.mark.parametrize("n", [True, False, 2.0, 1.5, "3", 0, -2, None])
def test_shape_scenes_refuses_n_scenes_that_is_not_a_whole_number(n):
    with pytest.raises(ValueError) as info:
        ShapeScenes(n)
    assert type(info.value) is ValueError
    assert str(info.value) == NSCENES.format(n)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scales": ()}, "scene scales must be finite numbers >= 1.0, got []"),
        ({"scales": (1.0, 0.5)}, "scene scales must be finite numbers >= 1.0, got [1.0, 0.5]"),
        (
            {"scales": (1.0, float("inf"))},
            "scene scales must be finite numbers >= 1.0, got [1.0, inf]",
        ),
        (
            {"controls": ("nope",)},
            "content controls must be distinct names of {}, got ['nope']",
        ),
        (
            {"scales": (1.0, 2.0), "object_range": (0.5, 0.8)},
            "no object size fits: the largest view (2x) of an object of the smallest size 0.5 "
            "exceeds 0.8 of the image side",
        ),
    ],
)
def test_shape_scenes_other_validations_whole(kwargs, message):
    from attnviz.data.shapes import SCENE_CONTROLS

    with pytest.raises(ValueError) as info:
        ShapeScenes(2, **kwargs)
    want = message.format(list(SCENE_CONTROLS["names"])) if "{}" in message else message
    assert str(info.value) == want


# ----------------------------------------------------------------------------- more loader paths
class _Made(torch.nn.Module):
    """What a faked factory returns."""


def test_timm_constructor_without_img_size_is_retried_without_it(monkeypatch):
    import timm

    from attnviz.models.loading import _create_timm

    seen = []
    made = _Made()

    def fake(name, pretrained=False, **kwargs):
        seen.append((name, pretrained, dict(kwargs)))
        if "img_size" in kwargs:
            raise TypeError("ResNet.__init__() got an unexpected keyword argument 'img_size'")
        return made

    monkeypatch.setattr(timm, "create_model", fake)
    for pretrained in (False, True):
        seen.clear()
        got = _create_timm("resnet18", pretrained, {"img_size": (20, 30), "num_classes": 3})
        assert got is made
        assert seen == [
            ("resnet18", pretrained, {"img_size": (20, 30), "num_classes": 3}),
            ("resnet18", pretrained, {"num_classes": 3}),
        ]


@pytest.mark.parametrize(
    ("exc", "kwargs"),
    [
        (TypeError("bad argument 'depth'"), {"img_size": (20, 30)}),  # not about img_size
        (TypeError("unexpected keyword argument 'img_size'"), {}),  # img_size not asked for
        (RuntimeError("Unknown model (nope)"), {"img_size": (20, 30)}),
        (ValueError("img_size must be divisible"), {"num_classes": 3}),
    ],
)
def test_timm_failures_that_are_not_about_the_size_pass_through(monkeypatch, exc, kwargs):
    import timm

    from attnviz.models.loading import _create_timm

    def fake(name, pretrained=False, **kw):
        raise exc

    monkeypatch.setattr(timm, "create_model", fake)
    with pytest.raises(type(exc)) as info:
        _create_timm("resnet18", False, dict(kwargs))
    assert info.value is exc


def test_torchvision_pretrained_config_from_a_cached_checkpoint(monkeypatch, tmp_path):
    import torchvision

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "resnet18-f37072fd.pth").write_bytes(b"cached")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    seen = []
    made = _Made()

    def fake(name, weights=None, **kwargs):
        seen.append((name, weights, kwargs))
        return made

    monkeypatch.setattr(torchvision.models, "get_model", fake)
    model, cfg = load_model("torchvision:resnet18", pretrained=True, num_classes=1000)
    enum = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    assert model is made and seen == [("resnet18", enum, {"num_classes": 1000})]
    got = cfg.to_dict()
    classes = got.pop("classes")
    assert len(classes) == 1000 and classes[:2] == ("tench", "goldfish")
    assert got == {
        "input_size": (3, 224, 224),
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "interpolation": "bilinear",
        "crop_pct": 0.875,  # 224 / 256
        "resize_size": 256,
        "source": {
            "spec": "torchvision:resnet18",
            "weights": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
            "weights_sha256": None,
        },
    }

    def failing(name, weights=None, **kwargs):
        raise OSError("checkpoint is truncated\nsecond line")

    monkeypatch.setattr(torchvision.models, "get_model", failing)
    with pytest.raises(PretrainedUnavailableError) as info:
        load_model("torchvision:resnet18", pretrained=True)
    assert str(info.value) == (
        "could not fetch pretrained weights for 'torchvision:resnet18' (no hub access: "
        "OSError: checkpoint is truncated). " + PRETRAINED_HINT
    )
    assert isinstance(info.value.__cause__, OSError)


# ----------------------------------------------------------------------------- cache safety
def test_caches_refuse_a_pickle_that_is_not_tensors(tmp_path):
    import pickle
    import types

    from attnviz.models.train import cached_tensors, stream_chunk

    ds = ShapesDataset(1, size=64, seed=3, scale_range=(0.2, 0.6))
    torch.save(
        (torch.zeros(1), types.SimpleNamespace(a=1)), tmp_path / "stream-s64-seed3-0.2-0.6-0-2.pt"
    )
    with pytest.raises(pickle.UnpicklingError):
        stream_chunk(ds, 0, 2, tmp_path)
    torch.save(
        (torch.zeros(1), torch.zeros(1), types.SimpleNamespace(a=1)),
        tmp_path / "shapes-n1-s64-seed3-0.2-0.6.pt",
    )
    with pytest.raises(pickle.UnpicklingError):
        cached_tensors(ds, tmp_path)


# ----------------------------------------------------------------------------- view_box
def test_view_box_of_single_steps_and_its_failures_whole():
    from torchvision import transforms as T

    from attnviz.data.views import view_box

    def box(geometry, size=(50, 30)):
        return view_box(size, EvalTransform(geometry, T.ToTensor(), {}))

    # a single step, not a Compose: a 20x10 crop of 50x30 starts at left 15, top 10
    assert box(T.CenterCrop((10, 20))) == pytest.approx((15.0, 10.0, 35.0, 20.0))
    # Resize to (15, 20) of 50x30: x scale 2.5, y scale 2
    assert box(T.Resize((15, 20))) == pytest.approx((0.0, 0.0, 50.0, 30.0))
    assert box(T.Compose([T.Resize((15, 20)), T.CenterCrop((5, 10))])) == pytest.approx(
        (12.5, 10.0, 37.5, 20.0)
    )
    cases = [
        (None, "the preprocessing has no known geometric view"),
        (T.CenterCrop(40), "the centre crop pads the image"),
        (T.Compose([T.Grayscale()]), "unknown geometric step Grayscale"),
    ]
    for geometry, message in cases:
        with pytest.raises(ValueError) as info:
            box(geometry)
        assert str(info.value) == message


@pytest.mark.parametrize(
    ("name", "file", "resize", "interpolation"),
    [
        ("efficientnet_b0", "efficientnet_b0_rwightman-7f5810bc.pth", 256, "bicubic"),
        ("convnext_tiny", "convnext_tiny-983f1562.pth", 236, "bilinear"),
    ],
)
def test_torchvision_pretrained_recipe_fields(
    monkeypatch, tmp_path, name, file, resize, interpolation
):
    import torchvision

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / file).write_bytes(b"cached")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torchvision.models, "get_model", lambda name, weights=None: _Made())
    _, cfg = load_model(f"torchvision:{name}", pretrained=True)
    assert (cfg.input_size, cfg.resize_size, cfg.interpolation) == (
        (3, 224, 224),
        resize,
        interpolation,
    )
    assert cfg.crop_pct == pytest.approx(224 / resize)
    assert cfg.source["weights"] == f"https://download.pytorch.org/models/{file}"


@pytest.mark.parametrize("size", [(20, 30), [20, 30], ("20", "30"), [3, 20, 30]])
def test_data_config_input_size_is_normalised_to_three_ints(size):
    t = preprocess_for({"input_size": size, "crop_pct": 1.0})
    assert t.config["input_size"] == (3, 20, 30)
    assert t.input_size == (20, 30)
    image = Image.new("RGB", (61, 37))
    assert t.view(image).size == (30, 20) and tuple(t(image).shape) == (3, 20, 30)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_per_class": 0}, "n_per_class must be a whole number >= 1, got 0"),
        ({"n_per_class": -1}, "n_per_class must be a whole number >= 1, got -1"),
        ({"n_per_class": 2.5}, "n_per_class must be a whole number >= 1, got 2.5"),
        ({"n_per_class": True}, "n_per_class must be a whole number >= 1, got True"),
        ({"n_per_class": "3"}, "n_per_class must be a whole number >= 1, got '3'"),
        (
            {"n_per_class": 1, "size": 64.5},
            "size must be a whole number of pixels within 64..96, got 64.5",
        ),
        (
            {"n_per_class": 1, "size": 63},
            "size must be a whole number of pixels within 64..96, got 63",
        ),
        (
            {"n_per_class": 1, "size": 97},
            "size must be a whole number of pixels within 64..96, got 97",
        ),
    ],
)
def test_shapes_dataset_refuses_what_is_not_a_whole_count_or_size(kwargs, message):
    """ShapesDataset took 0, -1, 2.5, True and "3" images per class and a 64.5 px size and
    failed later with unrelated errors (or took True as 1); now the whole message, at once."""
    from attnviz.data import ShapesDataset

    n = kwargs.pop("n_per_class")
    with pytest.raises(ValueError) as err:
        ShapesDataset(n, **kwargs)
    assert str(err.value) == message


def test_shapes_dataset_takes_numpy_integers_as_plain_ints():
    from attnviz.data import ShapesDataset

    ds = ShapesDataset(np.int64(2), size=np.int32(72))
    assert len(ds) == 2 * ds.num_classes and type(ds.n_per_class) is int and type(ds.size) is int
    assert ds.params()["n_per_class"] == 2 and ds.params()["size"] == 72
