"""Training-seed replicates of the bundled tiny models: storage, loading, bundling.

Seed 0 of a bundled model is the model in ``assets/models`` itself. Further seeds (the same
recipe, ``python -m attnviz.models.train NAME --seed K``: another initialisation, data stream
and data order) are stored compactly in ``assets/models/seeds/``:

* ``<name>-seed<K>.safetensors``: the weights in float16 (about half the float32 size);
  integer buffers unchanged; loaded back as float32;
* ``manifest.json``: ``{"models": {"<name>@seed<K>": entry}}``, the training's own entry
  (architecture, config, classes, seed, data, command, times) plus ``file``, ``sha256``,
  ``size_bytes``, ``dtype``, ``source_sha256`` / ``source_test_accuracy`` (the float32 file
  the training wrote and its accuracy), ``test_accuracy`` re-measured on the *stored* weights
  (float16 -> float32) on the entry's held-out split, and ``check``: the accuracy on the
  first ``CHECK_PER_CLASS`` images per class of a fresh held-out set (a fast test).

Load with ``load_model("sk_tiny@seed1")`` or ``load_model("sk_tiny", seed=1)``;
:func:`seeds_of` lists a model's seeds (0 first). Bundle finished trainings with

    python -m attnviz.models.seeds /tmp/seeds/seed1 /tmp/seeds/seed2 [--out assets/models/seeds]

which converts every model whose training has finished (its file matches its manifest entry)
and is not bundled yet (or whose source changed); rerun it when more have finished.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .loading import (
    SEED_DIR,
    load_seed,
    seed_key,
    seed_manifest,
    seeds_dir,
    seeds_of,
    sha256_file,
    split_seed,
)
from .zoo import TINY_MODELS

__all__ = [
    "SEED_DIR",
    "bundle",
    "load_seed",
    "seed_key",
    "seed_manifest",
    "seeds_dir",
    "seeds_of",
    "split_seed",
]

CHECK_PER_CLASS = 20  # the fast test's held-out images per class (200 images)


# ----------------------------------------------------------------------------- accuracy
def held_out_accuracy(model: nn.Module, test: dict[str, Any], n_per_class: int) -> float:
    """Accuracy of ``model`` on ``n_per_class`` images per class of the held-out split
    described by a manifest's ``test_data``."""
    from ..data.shapes import ShapesDataset
    from .train import dataset_tensors, predict

    ds = ShapesDataset(
        n_per_class, size=test["size"], seed=test["seed"], scale_range=tuple(test["scale_range"])
    )
    x, y, _ = dataset_tensors(ds)
    with torch.no_grad():
        return round(float((predict(model, x) == y).float().mean()), 4)


# ----------------------------------------------------------------------------- bundling
def _bundle_one(
    name: str, entry: dict[str, Any], source: Path, out: Path, old: dict[str, Any] | None
) -> dict[str, Any] | None:
    from safetensors.torch import load_file, save_file

    src = source / entry["file"]
    if not src.is_file() or sha256_file(src) != entry.get("sha256"):
        return None  # unfinished (or changed under us): not bundled
    if old is not None and old.get("source_sha256") == entry["sha256"]:
        return old  # already bundled from this very file
    seed = int(entry["seed"])
    out.mkdir(parents=True, exist_ok=True)
    state = load_file(str(src))
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    file = f"{name}-seed{seed}.safetensors"
    tmp = out / f".{file}.tmp"
    save_file(half, str(tmp))
    tmp.chmod(0o644)  # as the other assets (the writer may create it 0600)
    tmp.replace(out / file)
    model = TINY_MODELS[name](num_classes=entry["config"]["num_classes"])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in half.items()})
    model.eval()
    test = entry["test_data"]
    new = {
        **{k: v for k, v in entry.items() if k not in ("file", "sha256", "size_bytes")},
        "file": file,
        "sha256": sha256_file(out / file),
        "size_bytes": (out / file).stat().st_size,
        "dtype": "float16",
        "source_sha256": entry["sha256"],
        "source_size_bytes": src.stat().st_size,
        "source_test_accuracy": entry.get("test_accuracy"),
        "test_accuracy": held_out_accuracy(model, test, int(test["n_per_class"])),
        "test_accuracy_note": "re-measured on the stored float16 weights loaded as float32",
        "check": {
            "n_per_class": CHECK_PER_CLASS,
            "accuracy": held_out_accuracy(model, test, CHECK_PER_CLASS),
        },
    }
    return new


def bundle(sources: list[str | Path], out: str | Path | None = None) -> list[str]:
    """Bundle every finished training under ``sources`` (folders each holding a training
    ``manifest.json``) into ``out`` (default ``assets/models/seeds``); returns the keys bundled
    now or already. Seed-0 entries (the bundled models themselves) are skipped."""
    out = Path(out or seeds_dir())
    manifest = seed_manifest(out)
    done: list[str] = []
    for source in map(Path, sources):
        path = source / "manifest.json"
        if not path.is_file():
            print(f"{source}: no manifest.json yet (no training finished)", file=sys.stderr)
            continue
        for name, entry in json.loads(path.read_text()).get("models", {}).items():
            if name not in TINY_MODELS or int(entry.get("seed", 0)) == 0:
                continue
            key = seed_key(name, int(entry["seed"]))
            new = _bundle_one(name, entry, source, out, manifest["models"].get(key))
            if new is None:
                print(f"{key}: training not finished in {source}, skipped", file=sys.stderr)
                continue
            manifest["models"][key] = new
            done.append(key)
            print(
                f"{key}: {new['size_bytes']} bytes, held-out accuracy {new['test_accuracy']} "
                f"(float32 source {new['source_test_accuracy']})"
            )
    if not done and not (out / "manifest.json").exists():
        return done  # nothing finished yet: leave no empty manifest behind
    manifest["models"] = dict(sorted(manifest["models"].items()))
    tmp = out / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(out / "manifest.json")
    return done


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m attnviz.models.seeds``."""
    p = argparse.ArgumentParser(
        prog="python -m attnviz.models.seeds",
        description="Bundle finished seed trainings (float16) into assets/models/seeds.",
    )
    p.add_argument("sources", nargs="+", help="training output folders (each with manifest.json)")
    p.add_argument("--out", default=None, help="default: assets/models/seeds")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    done = bundle(args.sources, args.out)
    print(f"{len(done)} seed replicates bundled in {args.out or seeds_dir()}: {', '.join(done)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
