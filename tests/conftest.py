"""Fixtures shared by the tests: generated image folders, a folder of bad images, a CLI runner,
weights files of a tiny model."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# one intra-op thread in every process the tests start too (notebook kernels, CLI subprocesses,
# torchrun ranks): two pytest workers on two cores, each with two OpenMP threads, made a notebook
# kernel's forwards 12x slower than with one
os.environ.setdefault("OMP_NUM_THREADS", "1")

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from golden_testing import golden_updates  # noqa: F401  (a fixture: the golden files' regeneration)
from PIL import Image
from torch_state import restore_torch_state  # noqa: F401  (a fixture: state train() changes)

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def shapes_folder(tmp_path_factory) -> Path:
    """20 generated 64-px images, 2 per class, in class subfolders (read-only for tests)."""
    from attnviz.data import ShapesDataset, write_image_folder

    root = tmp_path_factory.mktemp("shapes") / "images"
    write_image_folder(ShapesDataset(2, size=64, seed=4242), root)
    return root


BAD_FILES = {
    "disc/bad_empty.png": "empty file",
    "disc/bad_text.jpg": "not an image",
    "ring/bad_truncated.png": "truncated or corrupt image",
    "ring/bad_tiny.png": "too small",
}


def write_bad_images(root: Path) -> dict[str, str]:
    """Two good images per class (disc, ring), the bad files of ``BAD_FILES``, and one good
    image whose file name is not valid UTF-8. Returns {relative id: expected reason}."""
    rng = np.random.default_rng(0)
    for cls in ("disc", "ring"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(2):
            arr = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"good_{i}.png")
    (root / "disc" / "bad_empty.png").write_bytes(b"")
    (root / "disc" / "bad_text.jpg").write_text("not an image at all")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    (root / "ring" / "bad_truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "ring" / "bad_tiny.png")
    name = os.fsencode(root / "ring") + b"/good_\xff.png"
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(os.fsdecode(name))
    return dict(BAD_FILES)


@pytest.fixture()
def bad_images(tmp_path) -> Path:
    """A folder with good images, bad files and a non-UTF-8 file name (see write_bad_images)."""
    root = tmp_path / "mixed"
    write_bad_images(root)
    return root


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture()
def cli(capsys):
    """Run ``attnviz ARGS...`` in-process: ``cli("sweep", "--model", ...) -> CliResult``."""
    from attnviz.cli import main

    def run(*argv) -> CliResult:
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture()
def tiny_weights(tmp_path) -> Path:
    """The bundled sk_tiny's weights with its first conv scaled by 0.5, as .safetensors."""
    from safetensors.torch import save_file

    from attnviz.models import load_model

    model, _ = load_model("sk_tiny")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first = next(k for k in state if k.endswith("weight") and state[k].dim() == 4)
    state[first] = state[first] * 0.5
    path = tmp_path / "sk_tiny_scaled.safetensors"
    save_file(state, str(path))
    return path


@pytest.fixture(autouse=True)
def _close_figures():
    """Plot functions make pyplot figures (they show in notebooks): close them after a test."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


class _AnalysisFolders(dict):
    """Result folders by name, each written by the CLI when first asked for."""

    RUNS = {
        "sweep": ["sweep", "--model", "sk_tiny"],
        "excitation": ["excitation", "--model", "se_tiny"],
        "queries": ["queries", "--model", "nl_tiny", "--figure-images", "2"],
        "attribution": ["compare-attribution", "--model", "cbam_tiny", "--figure-images", "2"],
        "gradcam": [
            "compare-attribution",
            "--model",
            "cbam_tiny",
            "--model",
            "se_tiny",
            "--figure-images",
            "2",
        ],  # fmt: skip
    }

    def __init__(self, root: Path, images: Path):
        super().__init__()
        self.root, self.images = root, images

    def __missing__(self, name: str) -> Path:
        from attnviz.cli import main

        folder = self.root / name
        argv = [*self.RUNS[name], "--images", str(self.images), "--out", str(folder)]
        assert main([*argv, "--limit", "8", "--no-progress"]) == 0, name
        self[name] = folder
        return folder

    def all(self) -> dict:
        return {name: self[name] for name in self.RUNS}


@pytest.fixture(scope="session")
def analysis_folders(tmp_path_factory, shapes_folder) -> _AnalysisFolders:
    """Result folders written by the CLI on the bundled tiny models (8 images: 4 classes x 2),
    made on first use: ``analysis_folders["queries"]`` -> OUT (result/, figures/, viewer/);
    names: sweep, excitation, queries, attribution, gradcam; ``.all()`` makes every one."""
    return _AnalysisFolders(tmp_path_factory.mktemp("analyses"), shapes_folder)


@pytest.fixture(scope="session")
def built_once(tmp_path_factory, worker_id):
    """``built_once(name, build)``: ``build(folder)`` runs once per test run, in whichever
    xdist worker asks first; the others wait on a file lock and get the same folder (the
    pytest-xdist recipe for session data: the workers share the base temp's parent)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if worker_id != "master" else base

    def once(name: str, build) -> Path:
        folder = shared / name
        failed = shared / f"{name}.failed"
        with FileLock(str(shared / f"{name}.lock")):
            if failed.exists():  # built once and failed: the same failure, without rebuilding
                pytest.fail(failed.read_text(encoding="utf-8"), pytrace=False)
            if not (folder / ".built").exists():
                folder.mkdir(exist_ok=True)
                try:
                    build(folder)
                except BaseException as exc:
                    failed.write_text(f"{name} failed in another test: {exc}", encoding="utf-8")
                    raise
                (folder / ".built").touch()
        return folder

    return once
