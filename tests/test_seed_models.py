"""The bundled training-seed replicates (assets/models/seeds): files, manifest, and the
held-out accuracy re-measured on the stored float16 weights (200 images each: fast)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from attnviz.models import load_model, read_manifest
from attnviz.models.loading import seed_manifest, seeds_dir, seeds_of, sha256_file
from attnviz.models.seeds import CHECK_PER_CLASS, held_out_accuracy

SEEDS = seed_manifest()["models"]
MAX_BYTES = 3 * 1024 * 1024  # float16: about half the float32 file


def test_seed_manifest_names_its_entries_consistently():
    for key, entry in SEEDS.items():
        name, _, tail = key.partition("@")
        assert tail == f"seed{entry['seed']}" and entry["seed"] != 0
        assert entry["file"] == f"{name}-seed{entry['seed']}.safetensors"
        assert entry["seed"] in seeds_of(name)
    assert not {p.name for p in seeds_dir().glob("*.safetensors")} - {
        e["file"] for e in SEEDS.values()
    }, "a seed file without a manifest entry"


@pytest.mark.parametrize("key", sorted(SEEDS))
def test_bundled_seed(key: str) -> None:
    entry = SEEDS[key]
    name, seed = key.split("@")[0], int(entry["seed"])
    path = seeds_dir() / entry["file"]
    assert path.stat().st_size == entry["size_bytes"] <= MAX_BYTES
    assert sha256_file(path) == entry["sha256"]
    floats = {v.dtype for v in load_file(str(path)).values() if v.is_floating_point()}
    assert floats == {torch.float16} and entry["dtype"] == "float16"
    assert f" --seed {seed} " in entry["command"]
    assert entry["command"].startswith(f"python -m attnviz.models.train {name} ")
    assert entry["test_data"]["seed"] == 10000 + seed  # the seed's own held-out split
    assert entry["config"] == read_manifest()["models"][name]["config"]  # same architecture
    # the stored weights' accuracy, re-measured on the first 20 images per class
    model, cfg = load_model(key)
    assert cfg.source["seed"] == seed and not model.training
    check = entry["check"]
    assert check["n_per_class"] == CHECK_PER_CLASS
    assert held_out_accuracy(model, entry["test_data"], CHECK_PER_CLASS) == check["accuracy"]
    # fp16 ~ fp32: at most 5 of the 1,000 held-out images change (4 for ion_tiny@seed1, whose
    # first IRNN sweep reaches |h| ~ 200, where float16 keeps 3 significant digits)
    assert abs(entry["test_accuracy"] - entry["source_test_accuracy"]) <= 0.005
