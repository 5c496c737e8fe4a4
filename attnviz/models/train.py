"""Train a bundled tiny model on the generated shapes dataset (CPU, deterministic).

    python -m attnviz.models.train sk_tiny --epochs 8 --seed 0 --out assets/models
    attnviz train sk_tiny ...

Determinism: everything is seeded from ``--seed`` (model init, shuffling, augmentation; the
data come from :class:`~attnviz.data.ShapesDataset` seeded by the dataset seeds),
``torch.use_deterministic_algorithms(True)`` is on and training runs on a fixed number of
threads (``--threads``, default 1: floating-point reductions depend on the thread count, and one
thread lets two trainings run side by side on a 2-core machine). On the same machine, torch
version and thread count, retraining reproduces the ``.safetensors`` file bit for bit.

Writes ``<out>/<arch>.safetensors`` and updates ``<out>/manifest.json`` atomically (temporary
file + ``os.replace``, under an advisory lock so parallel trainings do not lose entries).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from ..data.shapes import ShapesDataset
from .loading import sha256_file
from .zoo import IMAGE_SIZE, MEAN, STD, TINY_MODELS, create_tiny

__all__ = ["IMAGE_SIZE", "MEAN", "STD", "SCALE_RANGE", "dataset_tensors", "predict", "train"]

SCALE_RANGE = (0.15, 0.75)
TRAIN_SEED_OFFSET = 0  # train data seed = seed + 0
TEST_SEED_OFFSET = 10_000  # held-out data seed = seed + 10000 (never overlaps training)
CHECK_PER_CLASS = 30  # the tests re-measure accuracy on this prefix of the held-out split
MANIFEST = "manifest.json"


def repo_root() -> Path:
    """The repository root (the parent of the ``attnviz`` package; installed editable)."""
    return Path(__file__).resolve().parents[2]


def default_out() -> Path:
    return repo_root() / "assets" / "models"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def dataset_tensors(ds: ShapesDataset) -> tuple[Tensor, Tensor, np.ndarray]:
    """(uint8 images (N, 3, H, W), int64 labels, float scales) of a generated dataset."""
    images, labels, scales = [], [], []
    for i in range(len(ds)):
        arr, _, rec = ds._draw(i)
        images.append(arr)
        labels.append(rec.label)
        scales.append(rec.scale)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64), np.asarray(scales)


def cached_tensors(
    ds: ShapesDataset, cache_dir: str | Path | None
) -> tuple[Tensor, Tensor, np.ndarray]:
    """:func:`dataset_tensors`, kept in ``cache_dir`` (if given) between runs.

    The samples depend only on the dataset parameters, so the cache never changes results.
    """
    if cache_dir is None:
        return dataset_tensors(ds)
    lo, hi = ds.scale_range
    path = Path(cache_dir) / f"shapes-n{ds.n_per_class}-s{ds.size}-seed{ds.seed}-{lo}-{hi}.pt"
    if path.exists():
        x, y, scales = torch.load(path, weights_only=True)
        return x, y, scales.numpy()
    x, y, scales = dataset_tensors(ds)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save((x, y, torch.from_numpy(scales)), tmp)
    os.replace(tmp, path)
    return x, y, scales


def normalize(x_uint8: Tensor) -> Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x_uint8.float() / 255.0 - mean) / std


def augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random horizontal/vertical flips and 90-degree rotations (the classes are invariant)."""
    b = x.shape[0]
    flip_h = torch.rand(b, generator=gen) < 0.5
    flip_v = torch.rand(b, generator=gen) < 0.5
    rot = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip_h.view(b, 1, 1, 1), x.flip(3), x)
    x = torch.where(flip_v.view(b, 1, 1, 1), x.flip(2), x)
    return torch.where(rot.view(b, 1, 1, 1), x.transpose(2, 3), x)


@torch.no_grad()
def predict(model: nn.Module, x_uint8: Tensor, batch_size: int = 250) -> Tensor:
    model.eval()
    preds = [
        model(normalize(x_uint8[i : i + batch_size])).argmax(1)
        for i in range(0, len(x_uint8), batch_size)
    ]
    return torch.cat(preds)


def evaluate(
    model: nn.Module, ds: ShapesDataset, cache_dir: str | Path | None = None
) -> dict[str, Any]:
    """Accuracy on ``ds``, overall, on its check prefix and by object-scale tercile."""
    x, y, scales = cached_tensors(ds, cache_dir)
    correct = (predict(model, x) == y).numpy()
    n_check = CHECK_PER_CLASS * ds.num_classes
    lo, hi = ds.scale_range
    edges = np.linspace(lo, hi, 4)
    by_scale = {}
    for a, b in zip(edges[:-1], edges[1:]):
        sel = (scales >= a) & (scales <= b)
        by_scale[f"{a:.2f}-{b:.2f}"] = round(float(correct[sel].mean()), 4)
    return {
        "accuracy": round(float(correct.mean()), 4),
        "check_accuracy": round(float(correct[:n_check].mean()), 4),
        "accuracy_by_scale": by_scale,
    }


def train_command(args: argparse.Namespace) -> str:
    out = Path(args.out).resolve()
    try:
        out_s = str(out.relative_to(repo_root()))
    except ValueError:
        out_s = str(out)
    parts = [
        "python", "-m", "attnviz.models.train", args.arch,
        "--epochs", str(args.epochs), "--seed", str(args.seed),
        "--n-train", str(args.n_train), "--n-test", str(args.n_test),
        "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--threads", str(args.threads), "--out", out_s,
    ]  # fmt: skip
    return shlex.join(parts)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def update_manifest(out: Path, name: str, entry: dict[str, Any]) -> Path:
    """Set ``manifest[name] = entry`` atomically (temp file + os.replace, under a lock)."""
    path = out / MANIFEST
    with _locked(out):
        manifest = json.loads(path.read_text()) if path.exists() else {}
        manifest.setdefault("models", {})[name] = entry
        manifest["models"] = dict(sorted(manifest["models"].items()))
        fd, tmp = tempfile.mkstemp(dir=out, prefix=".manifest-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(manifest, fh, indent=2)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    return path


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train ``args.arch`` and write its checkpoint and manifest entry; return the entry."""
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    seed_everything(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    train_ds = ShapesDataset(
        args.n_train, size=IMAGE_SIZE, seed=args.seed + TRAIN_SEED_OFFSET, scale_range=SCALE_RANGE
    )
    test_ds = ShapesDataset(
        args.n_test, size=IMAGE_SIZE, seed=args.seed + TEST_SEED_OFFSET, scale_range=SCALE_RANGE
    )
    x_train, y_train, _ = cached_tensors(train_ds, args.cache_dir)

    check_ds = ShapesDataset(
        CHECK_PER_CLASS, size=IMAGE_SIZE, seed=test_ds.seed, scale_range=SCALE_RANGE
    )
    x_check, y_check, _ = cached_tensors(check_ds, args.cache_dir)
    model = create_tiny(args.arch, num_classes=train_ds.num_classes)
    model = model.to(memory_format=torch.channels_last)  # faster CPU convolutions
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps_per_epoch = len(x_train) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.2
    )
    gen = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        total, n = 0.0, 0
        for s in range(steps_per_epoch):
            idx = perm[s * args.batch_size : (s + 1) * args.batch_size]
            xb = normalize(augment(x_train[idx], gen)).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), y_train[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            n += len(idx)
        check = float((predict(model, x_check) == y_check).float().mean())
        print(
            f"[{args.arch}] epoch {epoch + 1}/{args.epochs} loss {total / n:.4f} "
            f"check accuracy {check:.3f} ({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )

    model = model.to(memory_format=torch.contiguous_format)  # evaluate as users will load it
    result = evaluate(model, test_ds, args.cache_dir)
    wall = time.perf_counter() - t0
    print(f"[{args.arch}] test accuracy {result['accuracy']:.4f} ({wall:.0f}s)", flush=True)

    path = out / f"{args.arch}.safetensors"
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".safetensors.tmp")
    # one metadata key only: safetensors writes metadata in hash-map order, so several keys
    # would make the file bytes (and sha256) differ between otherwise identical runs
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    config = model_config(model)
    entry = {
        "architecture": type(model).__name__,
        "factory": f"attnviz.models.tiny:TINY_MODELS[{args.arch!r}]",
        "config": config,
        "file": path.name,
        "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size,
        "num_params": sum(p.numel() for p in model.parameters()),
        "classes": train_ds.classes,
        "seed": args.seed,
        "train_data": {"dataset": "attnviz.data.ShapesDataset", **train_ds.params()},
        "test_data": {"dataset": "attnviz.data.ShapesDataset", **test_ds.params()},
        "check_data": {"dataset": "attnviz.data.ShapesDataset", **check_ds.params()},
        "test_accuracy": result["accuracy"],
        "check_accuracy": result["check_accuracy"],
        "test_accuracy_by_scale": result["accuracy_by_scale"],
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": {"name": "AdamW", "lr": args.lr, "weight_decay": 0.05,
                      "schedule": "OneCycleLR(pct_start=0.2)", "label_smoothing": 0.05},
        "augmentation": "random h/v flips and transposes",
        "command": train_command(args),
        "preprocessing": {
            "input_size": [3, IMAGE_SIZE, IMAGE_SIZE],
            "mean": list(MEAN),
            "std": list(STD),
            "interpolation": "bilinear",
            "crop_pct": 1.0,
        },
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "threads": args.threads,
        "deterministic_algorithms": True,
        "train_wall_time_s": round(wall, 1),
    }  # fmt: skip
    update_manifest(out, args.arch, entry)
    print(f"[{args.arch}] wrote {path} sha256 {entry['sha256']}", flush=True)
    return entry


def model_config(model: nn.Module) -> dict[str, Any]:
    """Constructor kwargs of a TinyResNet, as stored in the manifest."""
    return dict(model.config) if hasattr(model, "config") else {}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", choices=sorted(TINY_MODELS), help="tiny model to train")
    p.add_argument("--epochs", type=int, default=7)
    p.add_argument("--seed", type=int, default=0, help="seeds model, shuffling and data")
    p.add_argument("--n-train", type=int, default=300, help="training images per class")
    p.add_argument("--n-test", type=int, default=100, help="held-out images per class")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (AdamW)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (fixed: reproducible)")
    p.add_argument("--out", default=str(default_out()), help="checkpoint directory")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="keep generated datasets here between runs (does not change results)",
    )


def _cli(args: argparse.Namespace) -> int:
    train(args)
    return 0


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``attnviz train ARCH ...`` to an argparse CLI."""
    p = subparsers.add_parser(
        "train",
        help="train a bundled tiny model on generated data (CPU, deterministic)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=_cli)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m attnviz.models.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    return _cli(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
