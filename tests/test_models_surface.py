"""The surface of ``attnviz.models`` that users and later runs read, pinned whole (issue 26).

Classes of bugs this module catches, each as a class rather than one mutant at a time:

1. **The training's record and log** (``attnviz train``, run in this process): every key and
   every machine-independent value of the manifest entry (config, classes, seeds, the data
   dicts and their notes, the optimiser record with its exact keys for AdamW and SGD, the
   schedule text, preprocessing, notes, the command, steps, batch size, ...) against the
   reviewed golden ``tests/golden/models_surface.json``; the machine-dependent values (times,
   versions, sha256, accuracies) by type and range, or against a hand computation (sha256 of
   the file, accuracies of the checkpoint on its held-out split, per class and per size bin);
   the manifest file's layout and mode, the data cache's files; every printed log line by a
   regex with its exact wording (the learning rate of the one-cycle schedule by hand).
2. **Defaults of the command lines** are pinned by ``tests/test_cli_help.py``'s action table
   (not here).
3. **Seeding**: ``seed_everything`` seeds Python's ``random``, NumPy's and torch's global
   generators (each compared with a fresh generator seeded independently).
4. **Loader messages and paths, evaluation, seeds, baselines**: the python loader's messages
   (whole), the timm pretrained path receives the model name and its size / class options,
   ``PreprocessConfig.to_dict``; the tiny factories pass their keyword arguments on
   (``MixTinyResNet`` and the stage-3 block models); ``evaluate`` against a hand computation
   (a constant model: exact fractions, an empty size bin; a random tiny model); the seed
   bundler's lines to stdout / stderr, its entry and files (float16 weights, accuracies
   re-measured by hand); ``baselines.describe``.

Regenerate the golden after reviewing the diff:

    ATTNVIZ_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_models_surface.py
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import random
import re
import stat
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from golden_testing import UPDATE, read_golden
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch_state import kept_global_state

from attnviz.data import ShapesDataset
from attnviz.models import create_tiny, load_model, loading, seeds
from attnviz.models.baselines import BASELINES, describe
from attnviz.models.loading import PreprocessConfig
from attnviz.models.tiny_more import MORE_MODELS, MixTinyResNet
from attnviz.models.train import evaluate, seed_everything

GOLDEN = Path(__file__).parent / "golden" / "models_surface.json"

# hand-written constants of the recipe (not read from attnviz)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EDGES = [0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75]  # per-size bins of the default scale range
TINY = ["--n-train", "2", "--n-test", "1", "--batch-size", "8"]
RUNS = {
    # adamw with every default but the tiny sizes: 2 epochs x 20 images, 2 steps an epoch
    "train se_tiny adamw": ("se_tiny", ["--epochs", "2", *TINY]),
    # sgd with every option given, the data cache on
    "train plain_tiny sgd": (
        "plain_tiny",
        [
            "--epochs",
            "1",
            *TINY,
            "--seed",
            "3",
            "--optimizer",
            "sgd",
            "--lr",
            "0.02",
            "--weight-decay",
            "0.001",
            "--warmup",
            "0.5",
            "--label-smoothing",
            "0",
            "--threads",
            "1",
        ],
    ),  # fmt: skip
}
CASES = tuple(RUNS)


@pytest.fixture(scope="module", autouse=True)
def _restore_global_state():
    """train() sets deterministic algorithms and the thread count of its process, and seeds
    the global generators: put the test process's settings back afterwards."""
    with kept_global_state():
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each run of ``RUNS`` through ``attnviz.cli.main``: (out folder, cache folder or None,
    stdout lines, stderr)."""
    from attnviz.cli import main

    done = {}
    for case, (arch, options) in RUNS.items():
        root = tmp_path_factory.mktemp(case.replace(" ", "_"))
        out = root / "out" if "sgd" in case else root / "new" / "out"  # parents made too
        cache = root / "cache" if "sgd" in case else None
        extra = ["--cache-dir", str(cache)] if cache else []
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            assert main(["train", arch, *options, *extra, "--out", str(out)]) == 0
        done[case] = (out, cache, stdout.getvalue().splitlines(), stderr.getvalue())
    return done


def _entry(out: Path, arch: str) -> dict:
    return json.loads((out / "manifest.json").read_text())["models"][arch]


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> the network's input, written out here."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std


def _split(ds: ShapesDataset) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(uint8 images, labels, object scales) of a generated dataset, read item by item."""
    images = np.stack([ds.render(i) for i in range(len(ds))])
    records = [ds.record(i) for i in range(len(ds))]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return x, np.array([r.label for r in records]), np.array([r.scale for r in records])


def _hand_scores(correct, labels, scales, classes, edges) -> dict:
    """Accuracy overall, per class and per size bin (the last bin closed), by hand."""
    by_scale = {}
    for k in range(len(edges) - 1):
        a, b = edges[k], edges[k + 1]
        upper = scales <= b if k == len(edges) - 2 else scales < b
        sel = (scales >= a) & upper
        key = f"{a:.2f}-{b:.2f}"
        by_scale[key] = round(sum(correct[sel]) / sel.sum(), 4) if sel.sum() else None
    by_class = {n: round(sum(correct[labels == c]) / (labels == c).sum(), 4)
                for c, n in enumerate(classes)}  # fmt: skip
    return {
        "accuracy": round(sum(correct) / len(correct), 4),
        "accuracy_by_class": by_class,
        "accuracy_by_scale": by_scale,
    }


def _checkpoint_scores(path: Path, arch: str, test: dict, classes: list[str]) -> dict:
    """Held-out scores of a checkpoint (float16 weights loaded as float32), by hand."""
    model = create_tiny(arch, num_classes=10)
    state = load_file(str(path))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    model.eval()
    ds = ShapesDataset(test["n_per_class"], size=test["size"], seed=test["seed"],
                       scale_range=tuple(test["scale_range"]))  # fmt: skip
    x, labels, scales = _split(ds)
    with torch.no_grad():
        pred = model(_normalise(x)).argmax(1).numpy()
    return _hand_scores(pred == labels, labels, scales, classes, EDGES)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _machine_free(entry: dict, out: Path, arch: str) -> dict:
    """The entry with its machine-dependent values checked here and replaced by markers."""
    import platform

    e = json.loads(json.dumps(entry))
    path = out / e["file"]
    assert e.pop("sha256") == _sha256(path)
    assert e.pop("size_bytes") == path.stat().st_size
    assert e.pop("torch_version") == torch.__version__
    assert e.pop("numpy_version") == np.__version__
    assert e.pop("python_version") == platform.python_version()
    times = [e.pop(k) for k in ("train_time_s", "train_cpu_time_s", "train_time_data_generation_s")]
    for t in times:
        assert isinstance(t, float) and t >= 0 and round(t, 1) == t
    assert times[2] <= times[0]  # data generation is part of the wall time
    hand = _checkpoint_scores(path, arch, e["test_data"], e["classes"])
    for key in ("accuracy", "accuracy_by_class", "accuracy_by_scale"):
        assert e.pop(f"test_{key}") == hand[key], key
    e["command"] = e["command"].replace(str(out.resolve()), "<out>")
    return e


@pytest.mark.parametrize("case", CASES)
def test_training_manifest_entry_is_the_reviewed_one(case, runs, golden_updates):
    out = runs[case][0]
    arch = RUNS[case][0]
    entry = _entry(out, arch)
    got = _machine_free(entry, out, arch)
    if UPDATE:
        golden_updates[case] = got
        return
    want = read_golden(GOLDEN).get(case)
    assert want is not None, f"{case}: no golden entry (regenerate: see the docstring)"
    assert sorted(got) == sorted(want), "the entry's keys changed"
    for key in want:
        assert got[key] == want[key], f"{case}: {key}: {got[key]!r} != {want[key]!r}"


def test_training_files_manifest_layout_and_cache(runs):
    for case, (out, cache, _, _) in runs.items():
        arch = RUNS[case][0]
        assert sorted(p.name for p in out.iterdir()) == ["manifest.json", f"{arch}.safetensors"]
        manifest = json.loads((out / "manifest.json").read_text())
        assert list(manifest) == ["models"] and list(manifest["models"]) == [arch]
        assert (out / "manifest.json").read_text() == json.dumps(manifest, indent=2) + "\n"
        for name in ("manifest.json", f"{arch}.safetensors"):
            assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
        with safe_open(str(out / f"{arch}.safetensors"), "pt") as fh:
            assert fh.metadata() == {"format": "pt"}
        # the weights are those of the architecture: every key, every shape
        model = create_tiny(arch, num_classes=10)
        state = load_file(str(out / f"{arch}.safetensors"))
        assert {k: tuple(v.shape) for k, v in state.items()} == {
            k: tuple(v.shape) for k, v in model.state_dict().items()
        }
        if cache is not None:  # the held-out split and the one epoch's chunk of the stream
            assert sorted(p.name for p in cache.iterdir()) == [
                "shapes-n1-s64-seed10003-0.15-0.75.pt",
                "stream-s64-seed3-0.15-0.75-0-20.pt",
            ]


def _lr(peak: float, warmup: float, step: int, total: int) -> str:
    """The one-cycle learning rate after ``step`` steps, by hand, as the log prints it."""
    n_warm = max(1, round(warmup * total))
    if step < n_warm:
        factor = (step + 1) / n_warm
    else:
        factor = 0.5 * (
            1.0 + math.cos(math.pi * min(1.0, (step - n_warm) / max(1, total - n_warm)))
        )
    return f"{peak * factor:.4f}"


def test_training_log_lines_have_their_exact_wording(runs):
    secs = r"\((\d+)s, CPU (\d+)s, data (\d+)s\)"
    for case, (out, _, lines, stderr) in runs.items():
        arch = RUNS[case][0]
        entry = _entry(out, arch)
        epochs, steps = entry["epochs"], entry["steps"]
        opt = entry["optimizer"]
        a = re.escape(f"[{arch}]")
        warmup = 0.5 if "sgd" in case else 0.1  # the run's --warmup, or the default
        patterns = [
            rf"{a} epoch {e + 1}/{epochs} loss (\d\.\d{{4}}) check accuracy (\d\.\d{{3}}) "
            rf"lr {_lr(opt['lr'], warmup, (e + 1) * 2, steps)} {secs}"  # 20 // 8 steps/epoch
            for e in range(epochs)
        ]
        patterns += [
            rf"{a} held-out accuracy {entry['test_accuracy']:.4f} \((\d+)s wall, (\d+)s CPU\)",
            rf"{a} wrote {re.escape(str(out / (arch + '.safetensors')))} "
            rf"sha256 {entry['sha256']}",
        ]
        assert len(lines) == len(patterns), lines
        for k, (line, pattern) in enumerate(zip(lines, patterns)):
            m = re.fullmatch(pattern, line)
            assert m, f"{line!r} !~ {pattern!r}"
            if k < epochs:
                assert 1.0 < float(m.group(1)) < 5.0  # about ln 10 after a few steps
        # the last epoch's check runs on the whole held-out split here (1 image per class)
        last = re.fullmatch(patterns[epochs - 1], lines[epochs - 1])
        assert last.group(2) == f"{entry['test_accuracy']:.3f}"
        assert stderr == ""
    # the adamw run's first epoch ends mid-schedule: 2 of 4 steps, one warm-up step
    assert " lr 0.0023 " in runs["train se_tiny adamw"][2][0]


# --------------------------------------------------------------------------- seeding
def test_seed_everything_seeds_python_numpy_and_torch():
    for seed in (0, 1234):
        seed_everything(seed)
        got = ([random.random() for _ in range(3)], np.random.rand(3), torch.rand(3))
        want_random = random.Random(seed)
        gen = torch.Generator().manual_seed(seed)
        assert got[0] == [want_random.random() for _ in range(3)]
        assert np.array_equal(got[1], np.random.RandomState(seed).rand(3))
        assert torch.equal(got[2], torch.rand(3, generator=gen))


# --------------------------------------------------------------------------- evaluation
class _Constant(nn.Module):
    """Predicts class ``k`` for every image."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(x.shape[0], 10)
        out[:, self.k] = 1.0
        return out


def test_evaluate_equals_a_hand_computation(tmp_path):
    ds = ShapesDataset(3, size=72, seed=11, scale_range=(0.24, 0.6))
    x, labels, scales = _split(ds)
    edges = [0.24, 0.25, 0.35, 0.45, 0.55, 0.6]
    # a constant model: accuracy 1/10, class "square" 1, each bin its share of squares; no
    # image of this seed falls in the first bin (0.24-0.25): None
    want = _hand_scores(labels == 2, labels, scales, ds.classes, edges)
    assert want["accuracy"] == 0.1 and want["accuracy_by_class"]["square"] == 1.0
    assert list(want["accuracy_by_scale"]) == [
        "0.24-0.25", "0.25-0.35", "0.35-0.45", "0.45-0.55", "0.55-0.60",
    ]  # fmt: skip
    assert want["accuracy_by_scale"]["0.24-0.25"] is None
    assert evaluate(_Constant(2), ds) == want
    # a random tiny network: its own predictions, by hand; read from the cache the second time
    torch.manual_seed(5)
    model = create_tiny("plain_tiny", num_classes=10).eval()
    with torch.no_grad():
        pred = model(_normalise(x)).argmax(1).numpy()
    want = _hand_scores(pred == labels, labels, scales, ds.classes, edges)
    assert 0 < want["accuracy"] < 1  # some right, some wrong: a swapped comparison shows
    cache = tmp_path / "cache"
    assert evaluate(model, ds, cache_dir=cache) == want
    assert [p.name for p in cache.iterdir()] == ["shapes-n3-s72-seed11-0.24-0.6.pt"]
    assert evaluate(model, ds, cache_dir=cache) == want


# --------------------------------------------------------------------------- loaders
def test_preprocess_config_to_dict():
    assert PreprocessConfig().to_dict() == {
        "input_size": (3, 224, 224),
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "interpolation": "bilinear",
        "crop_pct": 0.875,
        "resize_size": None,
        "classes": (),
        "source": {},
    }
    cfg = PreprocessConfig((3, 40, 56), (0.5,), (0.25,), "bicubic", 1.0, 60, ("a", "b"), {"s": 1})
    d = cfg.to_dict()
    assert d == {
        "input_size": (3, 40, 56), "mean": (0.5,), "std": (0.25,), "interpolation": "bicubic",
        "crop_pct": 1.0, "resize_size": 60, "classes": ("a", "b"), "source": {"s": 1},
    }  # fmt: skip
    d["source"]["s"] = 2
    assert cfg.source == {"s": 1}  # a copy


USER_MODULE = """
from torch import nn
from attnviz.models import TinyResNet

NOT_CALLABLE = 3

def returns_a_dict():
    return {"weights": 1}

def needs_an_argument(width):
    return nn.Linear(width, 2)

def raises():
    raise RuntimeError("no GPU here")

def plain():
    return nn.Linear(4, 2)

def tiny():
    return TinyResNet("se", num_classes=3)
"""


def test_python_loader_messages_and_configs(tmp_path, monkeypatch):
    name = "attnviz_surface_user_models"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    messages = {
        f"{name}:returns_a_dict": f"python:{name}:returns_a_dict: returns_a_dict() returned "
        "dict, not a torch.nn.Module",
        f"{name}:NOT_CALLABLE": f"python:{name}:NOT_CALLABLE: NOT_CALLABLE is not callable",
        f"{name}:missing": f"python:{name}:missing: {name} has no attribute 'missing'",
        f"{name}:needs_an_argument": f"python:{name}:needs_an_argument: calling "
        "needs_an_argument() failed (TypeError: needs_an_argument() missing 1 required "
        "positional argument: 'width'); the factory must take no arguments and return a "
        "torch.nn.Module",
        f"{name}:raises": f"python:{name}:raises: calling raises() failed (RuntimeError: no GPU "
        "here); the factory must take no arguments and return a torch.nn.Module",
        "no_such_module_xyz:f": "python:no_such_module_xyz:f: cannot import 'no_such_module_xyz' "
        "(No module named 'no_such_module_xyz')",
        name: f"python spec must be 'python:package.module:factory', got '{name}'",
    }
    for target, message in messages.items():
        with pytest.raises(ValueError) as info:
            load_model(f"python:{target}")
        assert str(info.value) == message
    source = {"weights": None, "weights_sha256": None}
    model, cfg = load_model(f"python:{name}:plain")
    assert isinstance(model, nn.Linear)
    assert cfg.to_dict() == {
        **PreprocessConfig().to_dict(),
        "source": {"spec": f"python:{name}:plain", **source},
    }
    # a model with a timm-style pretrained_cfg: its data config (64 px, mean / std, crop 1)
    model, cfg = load_model(f"python:{name}:tiny")
    assert cfg.to_dict() == {
        "input_size": (3, 64, 64), "mean": MEAN, "std": STD, "interpolation": "bilinear",
        "crop_pct": 1.0, "resize_size": None, "classes": (),
        "source": {"spec": f"python:{name}:tiny", **source},
    }  # fmt: skip


def test_timm_paths_build_the_named_model_with_its_options(monkeypatch, tmp_path):
    import timm
    from timm.data import resolve_data_config

    calls = []

    def fake_create(name, pretrained, kwargs):
        calls.append((name, pretrained, dict(kwargs)))
        kw = {k: v for k, v in kwargs.items() if k != "img_size"}
        return timm.create_model(name, pretrained=False, **kw)

    def no_probe(*args, **kwargs):
        raise AssertionError("the hub was probed although HF_HUB_OFFLINE is set")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(loading, "_create_timm", fake_create)
    monkeypatch.setattr(loading, "_hub_unreachable", no_probe)
    model, cfg = load_model("timm:resnet18", pretrained=True, num_classes=7, input_size=(96, 128))
    assert calls == [("resnet18", True, {"num_classes": 7, "img_size": (96, 128)})]
    assert model.num_classes == 7 and not model.training
    dc = resolve_data_config({}, model=timm.create_model("resnet18"))
    assert cfg.to_dict() == {
        "input_size": (3, 96, 128),
        "mean": tuple(dc["mean"]),
        "std": tuple(dc["std"]),
        "interpolation": dc["interpolation"],
        "crop_pct": float(dc["crop_pct"]),
        "resize_size": None,
        "classes": (),
        "source": {"spec": "timm:resnet18", "weights": "hf-hub/timm:resnet18",
                   "weights_sha256": None},
    }  # fmt: skip
    # online with a reachable hub: probed, then the same call
    calls.clear()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(loading, "_hub_unreachable", lambda: None)
    load_model("timm:resnet18", pretrained=True)
    assert calls == [("resnet18", True, {})]
    # without pretrained weights, and with a local file (which wins over pretrained=True):
    # the same name, never a download
    calls.clear()
    model, cfg = load_model("timm:resnet18", num_classes=3)
    path = tmp_path / "r18.safetensors"
    save_file(model.state_dict(), str(path))
    _, cfg_file = load_model("timm:resnet18", weights=path, pretrained=True, num_classes=3)
    assert calls == [("resnet18", False, {"num_classes": 3})] * 2
    assert cfg.source == {"spec": "timm:resnet18", "weights": None, "weights_sha256": None}
    assert cfg_file.source == {"spec": "timm:resnet18", "weights": str(path),
                               "weights_sha256": _sha256(path)}  # fmt: skip


# --------------------------------------------------------------------------- tiny factories
WIDE = {"widths": (8, 16, 24, 40), "depths": (3, 1, 1, 2), "stem_width": 12,
        "zero_init_residual": True}  # fmt: skip


@pytest.mark.parametrize("name", sorted(MORE_MODELS))
def test_more_tiny_factories_pass_their_keyword_arguments_on(name):
    torch.manual_seed(0)
    model = create_tiny(name, num_classes=5, **WIDE)
    assert model.config == {
        "attn": "mix" if name == "mix_tiny" else None,
        "num_classes": 5,
        "widths": [8, 16, 24, 40],
        "depths": [3, 1, 1, 2],
        "attn_kwargs": None,
        "stem_width": 12,
        "zero_init_residual": True,
    }
    assert model.stem[0].out_channels == 12 and model.fc.in_features == 40
    assert len(model.layer1) == 3 and len(model.layer4) == 2
    assert all(not b.conv2[1].weight.detach().any() for b in model.layer4)
    out = model.eval()(torch.rand(2, 3, 40, 56))
    assert out.shape == (2, 5)
    if name == "mix_tiny":
        assert type(model) is MixTinyResNet
        assert [type(b.attn).__name__ for b in model.layer1] == ["SCSE"] * 3


# --------------------------------------------------------------------------- seed bundles
def test_bundle_lines_entry_and_files(runs, tmp_path, capsys):
    out_sgd = runs["train plain_tiny sgd"][0]
    out_adamw = runs["train se_tiny adamw"][0]  # seed 0: the bundled model itself, skipped
    dest = tmp_path / "seeds"
    empty = tmp_path / "not_started"
    empty.mkdir()
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    entry = _entry(out_sgd, "plain_tiny")
    other = {"file": "x.safetensors", "seed": 4}
    (unfinished / "manifest.json").write_text(
        json.dumps({"models": {"plain_tiny": entry, "someone_elses": other}})
    )
    # nothing finished: one line per folder on stderr, no manifest left behind
    assert seeds.bundle([empty, unfinished, out_adamw], dest) == []
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"{empty}: no manifest.json yet (no training finished)\n"
        f"plain_tiny@seed3: training not finished in {unfinished}, skipped\n"
    )
    assert not dest.exists() or not (dest / "manifest.json").exists()
    # the finished seed-3 training, through the module's command line
    assert seeds.main([str(out_sgd), "--out", str(dest)]) == 0
    new = json.loads((dest / "manifest.json").read_text())["models"]["plain_tiny@seed3"]
    path = dest / "plain_tiny-seed3.safetensors"
    stored, source = load_file(str(path)), load_file(str(out_sgd / "plain_tiny.safetensors"))
    assert all(stored[k].dtype == torch.float16 for k, v in source.items() if v.is_floating_point())
    assert all(torch.equal(stored[k], v.half() if v.is_floating_point() else v)
               for k, v in source.items())  # fmt: skip
    test = entry["test_data"]
    check = {**test, "n_per_class": 20}
    want = {
        **{k: v for k, v in entry.items() if k not in ("file", "sha256", "size_bytes")},
        "file": "plain_tiny-seed3.safetensors",
        "sha256": _sha256(path),
        "size_bytes": path.stat().st_size,
        "dtype": "float16",
        "source_sha256": entry["sha256"],
        "source_size_bytes": (out_sgd / "plain_tiny.safetensors").stat().st_size,
        "source_test_accuracy": entry["test_accuracy"],
        "test_accuracy": _checkpoint_scores(path, "plain_tiny", test, entry["classes"])["accuracy"],
        "test_accuracy_note": "re-measured on the stored float16 weights loaded as float32",
        "check": {
            "n_per_class": 20,
            "accuracy": _checkpoint_scores(path, "plain_tiny", check, entry["classes"])["accuracy"],
        },
    }
    assert new == want
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in dest.iterdir()) == ["manifest.json", path.name]
    line = (
        f"plain_tiny@seed3: {want['size_bytes']} bytes, held-out accuracy "
        f"{want['test_accuracy']} (float32 source {entry['test_accuracy']})\n"
    )
    summary = f"1 seed replicates bundled in {dest}: plain_tiny@seed3\n"
    assert capsys.readouterr() == (line + summary, "")
    # again: the same entry, not rebuilt
    before = (dest / "manifest.json").read_text()
    assert seeds.bundle([out_sgd], dest) == ["plain_tiny@seed3"]
    assert capsys.readouterr() == (line, "")
    assert (dest / "manifest.json").read_text() == before


# --------------------------------------------------------------------------- baselines
def test_baseline_descriptions():
    assert {kind: describe(kind) for kind in sorted(BASELINES)} == {
        "permuted": "the trained weights shuffled within each tensor",
        "untrained": "the same architecture at random initialisations",
    }
    with pytest.raises(KeyError):
        describe("pretrained")
