"""The bundled tiny models: manifest, checksums, sizes, and re-measured accuracy."""

from __future__ import annotations

from functools import cache

import pytest
import torch

from attnviz.data import ShapesDataset
from attnviz.models import TINY_MODELS, create_tiny, load_model, read_manifest
from attnviz.models.loading import assets_dir, sha256_file
from attnviz.models.train import dataset_tensors, predict

BUNDLED = (
    "sk_tiny",
    "se_tiny",
    "cbam_tiny",
    "gc_tiny",
    "nl_tiny",
    "nl_tiny_gaussian",
    "nl_tiny_dot",
    "nl_tiny_concat",
    "sa_tiny",
    "danet_tiny",
    "mix_tiny",
    "plain_tiny",
)
MAX_BYTES = 5 * 1024 * 1024


def _manifest_models() -> dict:
    try:
        return read_manifest()["models"]
    except FileNotFoundError:
        return {}


MODELS = _manifest_models()


@cache
def _check_split(n_per_class: int, size: int, seed: int, scale_range: tuple) -> tuple:
    ds = ShapesDataset(n_per_class, size=size, seed=seed, scale_range=scale_range)
    x, y, _ = dataset_tensors(ds)
    return x, y


def test_all_bundled_models_in_manifest() -> None:
    missing = [m for m in BUNDLED if m not in MODELS]
    assert not missing, f"not in assets/models/manifest.json: {missing}"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bundled_model(name: str) -> None:
    entry = MODELS[name]
    path = assets_dir() / entry["file"]
    assert path.suffix == ".safetensors" and path.stat().st_size <= MAX_BYTES
    assert sha256_file(path) == entry["sha256"]
    for key in ("architecture", "config", "seed", "train_data", "test_data", "command", "epochs"):
        assert key in entry, key
    assert entry["train_data"]["seed"] != entry["test_data"]["seed"]
    model, cfg = load_model(name)
    assert not model.training and cfg.source["weights_sha256"] == entry["sha256"]
    check = entry["check_data"]
    # the check split is a prefix of the held-out split (samples are seeded by (seed, index))
    assert check["seed"] == entry["test_data"]["seed"]
    assert check["n_per_class"] <= entry["test_data"]["n_per_class"]
    x, y = _check_split(
        check["n_per_class"], check["size"], check["seed"], tuple(check["scale_range"])
    )
    with torch.no_grad():
        acc = float((predict(model, x) == y).float().mean())
    assert abs(acc - entry["check_accuracy"]) <= 0.02, (acc, entry["check_accuracy"])


def test_registry_builds_every_model() -> None:
    x = torch.zeros(2, 3, 64, 64)
    for name in BUNDLED:
        model = create_tiny(name).eval()
        assert model(x).shape == (2, 10), name
    assert set(BUNDLED) <= set(TINY_MODELS)
    names = dict(create_tiny("sk_tiny").named_modules())
    assert "layer4.1.conv1.select" in names  # SK_5_2
    assert "layer2.1.affinity" in dict(create_tiny("nl_tiny").named_modules())  # NL_3_2
    assert "layer1.0.attn.spatial.gate" in dict(create_tiny("cbam_tiny").named_modules())
