"""Train a bundled tiny model on the generated shapes dataset (CPU, deterministic).

    python -m attnviz.models.train sk_tiny --out assets/models
    attnviz train sk_tiny ...

Recipe (the defaults; ``assets/models/README.md`` has the numbers):

* **fresh images every epoch.** The training set is one long stream of generated images,
  :class:`~attnviz.data.ShapesDataset` with ``n_per_class = epochs * n_train`` and seed
  ``seed``; epoch ``e`` draws the samples ``e * 10 * n_train`` .. ``(e + 1) * 10 * n_train - 1``
  (samples are seeded by (seed, index), so no image is ever shown twice and the stream cannot be
  overfitted). Light augmentation on top: random horizontal / vertical flips and transposes
  (every class is invariant to them);
* AdamW, peak learning rate 3e-3, weight decay 0.05 on conv / linear weights only (not on
  BN, biases or scalar gates), batch 32; one-cycle schedule: linear warm-up over the first
  ``--warmup`` (10 %) of the steps, then cosine decay to zero; label smoothing 0.1;
  25 epochs x 2,000 fresh images = 50,000 images (``--optimizer sgd`` gives SGD with Nesterov
  momentum 0.9 instead);
* held-out split: ``n_test`` per class, seed ``seed + 10000`` (disjoint from the training stream),
  scored overall, per class and per object-size bin.

Determinism: everything is seeded from ``--seed`` (model init, shuffling, augmentation, data),
``torch.use_deterministic_algorithms(True)`` is on and training runs on a fixed number of
threads (``--threads``, default 1: floating-point reductions depend on the thread count). On the
same machine, torch version and thread count, retraining with the manifest's ``command``
reproduces the ``.safetensors`` file bit for bit.

Writes ``<out>/<arch>.safetensors`` and updates ``<out>/manifest.json`` atomically (temporary
file + ``os.replace``, under an advisory lock so parallel trainings do not lose entries).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
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

__all__ = [
    "IMAGE_SIZE",
    "MEAN",
    "STD",
    "SCALE_RANGE",
    "dataset_tensors",
    "evaluate",
    "normalize",
    "predict",
    "train",
]

SCALE_RANGE = (0.15, 0.75)  # object side / image side of the training (and held-out) data
SCALE_BINS = (0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75)  # per-scale accuracy bins
TRAIN_SEED_OFFSET = 0  # train data seed = seed + 0
TEST_SEED_OFFSET = 10_000  # held-out data seed = seed + 10000 (never overlaps training)
CHECK_PER_CLASS = 20  # printed after every epoch: a prefix of the held-out split
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


def dataset_tensors(
    ds: ShapesDataset, start: int = 0, stop: int | None = None
) -> tuple[Tensor, Tensor, np.ndarray]:
    """(uint8 images (N, 3, H, W), int64 labels, float scales) of samples ``start..stop-1``
    (default: all) of a generated dataset."""
    stop = len(ds) if stop is None else stop
    images, labels, scales = [], [], []
    for i in range(start, stop):
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


def stream_chunk(
    ds: ShapesDataset, start: int, stop: int, cache_dir: str | Path | None
) -> tuple[Tensor, Tensor]:
    """Samples ``start..stop-1`` of ``ds`` as (uint8 images, labels), kept in ``cache_dir`` (if
    given). A sample depends only on (seed, index, size, scale range), not on ``len(ds)``, so
    trainings with the same seed share the cached chunks; the cache never changes results."""
    if cache_dir is None:
        return dataset_tensors(ds, start, stop)[:2]
    lo, hi = ds.scale_range
    path = Path(cache_dir) / f"stream-s{ds.size}-seed{ds.seed}-{lo}-{hi}-{start}-{stop}.pt"
    if path.exists():
        x, y = torch.load(path, weights_only=True)
        return x, y
    x, y, _ = dataset_tensors(ds, start, stop)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save((x, y), tmp)
    os.replace(tmp, path)
    return x, y


def normalize(x_uint8: Tensor) -> Tensor:
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x_uint8.float() / 255.0 - mean) / std


def augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random horizontal/vertical flips and transposes (the classes are invariant to them)."""
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


def scale_bin_edges(scale_range: tuple[float, float]) -> list[float]:
    """Edges of the per-scale accuracy bins: :data:`SCALE_BINS` inside ``scale_range``."""
    lo, hi = scale_range
    inner = [e for e in SCALE_BINS if lo < e < hi]
    return [lo, *inner, hi]


def score(
    correct: np.ndarray, labels: np.ndarray, scales: np.ndarray, classes: list[str],
    scale_range: tuple[float, float],
) -> dict[str, Any]:  # fmt: skip
    """Accuracy overall, per class and per object-size bin of per-sample ``correct`` flags."""
    edges = scale_bin_edges(scale_range)
    by_scale = {}
    for k, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        last = k == len(edges) - 2
        sel = (scales >= a) & ((scales <= b) if last else (scales < b))
        by_scale[f"{a:.2f}-{b:.2f}"] = round(float(correct[sel].mean()), 4) if sel.any() else None
    by_class = {
        name: round(float(correct[labels == c].mean()), 4) for c, name in enumerate(classes)
    }
    return {
        "accuracy": round(float(correct.mean()), 4),
        "accuracy_by_class": by_class,
        "accuracy_by_scale": by_scale,
    }


def evaluate(
    model: nn.Module, ds: ShapesDataset, cache_dir: str | Path | None = None
) -> dict[str, Any]:
    """Accuracy on ``ds``: overall, per class and per object-size bin (:func:`score`)."""
    x, y, scales = cached_tensors(ds, cache_dir)
    correct = (predict(model, x) == y).numpy()
    return score(correct, y.numpy(), scales, ds.classes, ds.scale_range)


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
        "--batch-size", str(args.batch_size), "--optimizer", args.optimizer,
        "--lr", str(args.lr),
        "--weight-decay", str(args.weight_decay), "--warmup", str(args.warmup),
        "--label-smoothing", str(args.label_smoothing),
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


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv / linear weights only (not on BN, biases or scalar gates)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """``"adamw"`` (betas 0.9, 0.999) or ``"sgd"`` (Nesterov momentum 0.9), weight decay on
    conv / linear weights only."""
    groups = param_groups(model, weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    raise ValueError(f"unknown optimizer {name!r}: use 'adamw' or 'sgd'")


def one_cycle(total_steps: int, warmup: float) -> Any:
    """LR factor per step: linear warm-up over ``warmup`` of the steps, then cosine to zero."""
    n_warm = max(1, int(round(warmup * total_steps)))

    def factor(step: int) -> float:
        if step < n_warm:
            return (step + 1) / n_warm
        t = (step - n_warm) / max(1, total_steps - n_warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return factor


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train ``args.arch`` and write its checkpoint and manifest entry; return the entry."""
    t0, c0 = time.perf_counter(), time.process_time()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    seed_everything(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # one stream of fresh images: epoch e uses samples [e * per_epoch, (e + 1) * per_epoch)
    train_ds = ShapesDataset(
        args.epochs * args.n_train,
        size=IMAGE_SIZE,
        seed=args.seed + TRAIN_SEED_OFFSET,
        scale_range=SCALE_RANGE,
    )
    test_ds = ShapesDataset(
        args.n_test, size=IMAGE_SIZE, seed=args.seed + TEST_SEED_OFFSET, scale_range=SCALE_RANGE
    )
    per_epoch = args.n_train * train_ds.num_classes
    n_check = min(CHECK_PER_CLASS, args.n_test) * test_ds.num_classes
    x_test, y_test, s_test = cached_tensors(test_ds, args.cache_dir)

    model = create_tiny(args.arch, num_classes=train_ds.num_classes)
    model = model.to(memory_format=torch.channels_last)  # faster CPU convolutions
    opt = make_optimizer(model, args.optimizer, args.lr, args.weight_decay)
    steps_per_epoch = per_epoch // args.batch_size
    total_steps = args.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, one_cycle(total_steps, args.warmup))
    gen = torch.Generator().manual_seed(args.seed)
    t_data = 0.0
    for epoch in range(args.epochs):
        td = time.perf_counter()
        x_train, y_train = stream_chunk(
            train_ds, epoch * per_epoch, (epoch + 1) * per_epoch, args.cache_dir
        )
        t_data += time.perf_counter() - td
        model.train()
        perm = torch.randperm(per_epoch, generator=gen)
        total, n = 0.0, 0
        for s in range(steps_per_epoch):
            idx = perm[s * args.batch_size : (s + 1) * args.batch_size]
            xb = normalize(augment(x_train[idx], gen)).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), y_train[idx], label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            n += len(idx)
        check = float((predict(model, x_test[:n_check]) == y_test[:n_check]).float().mean())
        print(
            f"[{args.arch}] epoch {epoch + 1}/{args.epochs} loss {total / n:.4f} "
            f"check accuracy {check:.3f} lr {sched.get_last_lr()[0]:.4f} "
            f"({time.perf_counter() - t0:.0f}s, CPU {time.process_time() - c0:.0f}s, "
            f"data {t_data:.0f}s)",
            flush=True,
        )

    model = model.to(memory_format=torch.contiguous_format)  # evaluate as users will load it
    correct = (predict(model, x_test) == y_test).numpy()
    result = score(correct, y_test.numpy(), s_test, test_ds.classes, test_ds.scale_range)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"[{args.arch}] held-out accuracy {result['accuracy']:.4f} "
        f"({wall:.0f}s wall, {cpu:.0f}s CPU)",
        flush=True,
    )

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
        "factory": f"attnviz.models.zoo:TINY_MODELS[{args.arch!r}]",
        "config": config,
        "file": path.name,
        "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size,
        "num_params": sum(p.numel() for p in model.parameters()),
        "classes": train_ds.classes,
        "seed": args.seed,
        "train_data": {
            "dataset": "attnviz.data.ShapesDataset", **train_ds.params(),
            "fresh_per_epoch": per_epoch,
            "note": "a stream of fresh images: epoch e uses samples "
                    "[e * fresh_per_epoch, (e + 1) * fresh_per_epoch); none repeats",
        },
        "train_object_size_range": list(SCALE_RANGE),
        "test_data": {"dataset": "attnviz.data.ShapesDataset", **test_ds.params()},
        "test_accuracy": result["accuracy"],
        "test_accuracy_by_class": result["accuracy_by_class"],
        "test_accuracy_by_scale": result["accuracy_by_scale"],
        "test_accuracy_by_scale_note": "bins of the object size (object side / image side)",
        "epochs": args.epochs,
        "train_images": args.epochs * per_epoch,
        "batch_size": args.batch_size,
        "steps": total_steps,
        "optimizer": {
            "name": type(opt).__name__, "lr": args.lr,
            **{k: opt.defaults[k] for k in ("betas", "eps", "momentum", "nesterov")
               if k in opt.defaults},
            "weight_decay": args.weight_decay, "weight_decay_on": "conv and linear weights",
            "schedule": f"linear warm-up ({args.warmup} of the steps), then cosine to 0",
            "label_smoothing": args.label_smoothing,
        },
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
        "train_time_s": round(wall, 1),
        "train_cpu_time_s": round(cpu, 1),
        "train_time_data_generation_s": round(t_data, 1),
        "train_time_note": "wall and CPU time of the training process on one torch thread "
                           "(held-out evaluation and data generation, or reading it from "
                           "--cache-dir, included); wall time depends on the machine's load",
        "data_cache": args.cache_dir is not None,
    }  # fmt: skip
    update_manifest(out, args.arch, entry)
    print(f"[{args.arch}] wrote {path} sha256 {entry['sha256']}", flush=True)
    return entry


def model_config(model: nn.Module) -> dict[str, Any]:
    """Constructor kwargs of a TinyResNet, as stored in the manifest."""
    return dict(model.config) if hasattr(model, "config") else {}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", choices=sorted(TINY_MODELS), help="tiny model to train")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--seed", type=int, default=0, help="seeds model, shuffling and data")
    p.add_argument(
        "--n-train", type=int, default=200, help="fresh training images per class and epoch"
    )
    p.add_argument("--n-test", type=int, default=100, help="held-out images per class")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1, help="torch threads (fixed: reproducible)")
    p.add_argument("--out", default=str(default_out()), help="checkpoint directory")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="keep the generated images here between runs (does not change results)",
    )


def _cli(args: argparse.Namespace) -> int:
    train(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m attnviz.models.train`` (``attnviz train`` adds the same
    arguments through :func:`add_arguments`: see :mod:`attnviz.commands.train`)."""
    p = argparse.ArgumentParser(
        prog="python -m attnviz.models.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return _cli(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
