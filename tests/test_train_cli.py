"""``attnviz train`` with a tiny configuration (one epoch of 20 images, 10 held out): the file
it writes loads into the architecture, its manifest entry describes it, and it is
deterministic (two runs, same bytes)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file
from torch_state import kept_global_state

from attnviz.models.tiny import create_tiny

TINY = ["--epochs", "1", "--n-train", "2", "--n-test", "1", "--batch-size", "8"]


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_state():
    """train() sets deterministic algorithms and the thread count for its process: put the
    test process's settings back afterwards."""
    with kept_global_state():
        yield


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from attnviz.cli import main

    runs = []
    for k in range(2):
        out = tmp_path_factory.mktemp(f"train{k}")
        assert main(["train", "se_tiny", *TINY, "--seed", "3", "--out", str(out)]) == 0
        runs.append(out)
    return runs


def test_train_writes_a_loadable_checkpoint_and_its_manifest_entry(trained, capsys):
    out = trained[0]
    path = out / "se_tiny.safetensors"
    state = load_file(str(path))
    model = create_tiny("se_tiny", num_classes=10)
    missing, unexpected = model.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    entry = json.loads((out / "manifest.json").read_text())["models"]["se_tiny"]
    assert entry["file"] == "se_tiny.safetensors"
    assert entry["sha256"] == _sha256(path) and entry["size_bytes"] == path.stat().st_size
    assert entry["num_params"] == sum(p.numel() for p in model.parameters())
    assert entry["epochs"] == 1 and entry["batch_size"] == 8 and entry["seed"] == 3
    assert entry["train_images"] == 20 and entry["steps"] == 2  # 2 per class x 10, 20 // 8
    assert entry["train_data"]["seed"] != entry["test_data"]["seed"]
    assert entry["test_data"]["n_per_class"] == 1
    assert 0.0 <= entry["test_accuracy"] <= 1.0 and len(entry["classes"]) == 10
    assert entry["command"].startswith("python -m attnviz.models.train se_tiny ")
    assert "--epochs 1" in entry["command"] and "--seed 3" in entry["command"]
    assert entry["preprocessing"]["input_size"] == [3, 64, 64]
    # the held-out accuracy in the manifest is the checkpoint's accuracy on its test data
    from attnviz.data import ShapesDataset
    from attnviz.models.train import dataset_tensors, normalize

    td = entry["test_data"]
    ds = ShapesDataset(
        td["n_per_class"], size=td["size"], seed=td["seed"], scale_range=tuple(td["scale_range"])
    )
    x, y, _ = dataset_tensors(ds)
    model.eval()
    with torch.no_grad():
        pred = model(normalize(x)).argmax(1)
    assert entry["test_accuracy"] == pytest.approx(float((pred == y).float().mean()))


def test_train_is_deterministic(trained):
    a, b = (out / "se_tiny.safetensors" for out in trained)
    assert _sha256(a) == _sha256(b)
    ea, eb = (json.loads((o / "manifest.json").read_text())["models"]["se_tiny"] for o in trained)
    assert ea["sha256"] == eb["sha256"] and ea["test_accuracy"] == eb["test_accuracy"]


def test_train_keeps_other_manifest_entries(tmp_path):
    from attnviz.cli import main

    manifest = {"models": {"someone_elses": {"file": "x.safetensors", "sha256": "0" * 64}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert main(["train", "plain_tiny", *TINY, "--out", str(tmp_path)]) == 0
    models = json.loads((tmp_path / "manifest.json").read_text())["models"]
    assert models["someone_elses"] == manifest["models"]["someone_elses"]
    assert sorted(models) == ["plain_tiny", "someone_elses"]


def test_train_rejects_an_unknown_architecture(capsys):
    from attnviz.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "no_such_tiny", *TINY])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_train_options_reach_the_training_and_the_manifest(tmp_path):
    """--optimizer / --lr / --weight-decay / --warmup / --label-smoothing / --threads are
    recorded; --cache-dir keeps the generated images and never changes the result."""
    from attnviz.cli import main

    opts = ["--optimizer", "sgd", "--lr", "0.02", "--weight-decay", "0.001", "--warmup", "0.5",
            "--label-smoothing", "0", "--threads", "1"]  # fmt: skip
    shas = []
    for k, cache in enumerate((tmp_path / "cache", tmp_path / "cache", None)):
        out = tmp_path / f"run{k}"
        extra = [] if cache is None else ["--cache-dir", str(cache)]
        assert main(["train", "plain_tiny", *TINY, *opts, *extra, "--out", str(out)]) == 0
        entry = json.loads((out / "manifest.json").read_text())["models"]["plain_tiny"]
        shas.append(entry["sha256"])
        opt = entry["optimizer"]
        assert opt["name"] == "SGD" and opt["lr"] == 0.02 and opt["weight_decay"] == 0.001
        assert "0.5" in opt["schedule"] and opt["label_smoothing"] == 0.0
        assert entry["threads"] == 1 and entry["data_cache"] is (cache is not None)
        assert "--optimizer sgd" in entry["command"]
    assert any((tmp_path / "cache").iterdir())
    assert len(set(shas)) == 1  # fresh, cached and uncached runs give the same bytes
    # another optimizer gives other weights
    assert main(["train", "plain_tiny", *TINY, "--out", str(tmp_path / "adamw")]) == 0
    adamw = json.loads((tmp_path / "adamw" / "manifest.json").read_text())["models"]
    assert adamw["plain_tiny"]["sha256"] != shas[0]
