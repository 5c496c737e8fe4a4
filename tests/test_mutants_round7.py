"""Tests for the survivors of the seventh held-out round of the sampled mutation run (TESTING.md,
"Whole package by sampling"). The classes they catch: an error message no test read whole (a
user adapter's ``read``, SwiftFormer's call count), a refused file name (a NUL byte), an option
a command passes on to a step only some runs take (``--weights`` to ``sites``, ``--input-size``
equal to a fixed model's own, replicates of a multi-model comparison), a record of a loader
or of training (a digest, the CPU time), a factory's default, and a figure's layout engine."""

from __future__ import annotations

import contextlib
import io
import json
import time

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from torch import nn

from attnviz.cli import main


# ----------------------------------------------------------------------------- capture
def test_register_adapter_refuses_a_read_of_another_type_with_one_message():
    import attnviz

    with pytest.raises(TypeError) as err:
        attnviz.register_adapter(nn.Identity, kind="se", read=3)
    assert str(err.value) == (
        "read must be a submodule path (str), a Computed(...) or Intercepted(...)"
    )


def test_swiftformer_attention_normalising_other_than_three_times_is_one_clear_error():
    from attnviz.capture.adapters.timm_swiftformer import _scores
    from attnviz.capture.registry import Intercepted

    taps = {Intercepted.key("normalize"): [torch.zeros(1, 4, 1)] * 2}
    with pytest.raises(RuntimeError) as err:
        _scores(nn.Identity(), taps, (torch.zeros(1, 8, 2, 2),), None, None)
    assert str(err.value) == "EfficientAdditiveAttention normalised 2 times, not 3"


def test_the_builtin_adapters_load_every_module_of_their_package(monkeypatch):
    """Afresh (the flag is set once per process, before any mutant could act): each public
    module of ``attnviz.capture.adapters`` is imported, in name order."""
    import importlib
    import pkgutil
    import sys

    from attnviz.capture import registry

    package = importlib.import_module("attnviz.capture.adapters")
    names = sorted(i.name for i in pkgutil.iter_modules(package.__path__))
    public = [n for n in names if not n.startswith("_")]
    imported = []
    real = importlib.import_module
    monkeypatch.setattr(registry, "_BUILTINS_LOADED", False)
    monkeypatch.setattr(
        registry.importlib, "import_module", lambda name: imported.append(name) or real(name)
    )
    registry._ensure_builtin_adapters()
    assert registry._BUILTINS_LOADED is True
    assert imported == [
        "attnviz.capture.adapters",
        *(f"attnviz.capture.adapters.{n}" for n in public),
    ]
    assert len(public) > 40 and all(f"attnviz.capture.adapters.{n}" in sys.modules for n in public)
    registry._ensure_builtin_adapters()  # once only
    assert len(imported) == 1 + len(public)


# ----------------------------------------------------------------------------- runner
@pytest.mark.parametrize("name", ["a\0b", "\0", "x.csv\0.png"])
def test_a_file_name_with_a_nul_byte_is_not_a_plain_name(name):
    from attnviz.results import _plain_name

    assert not _plain_name(name)
    assert _plain_name(name.replace("\0", "_"))


# ----------------------------------------------------------------------------- commands
def test_sites_reads_the_weights_it_is_given(tmp_path, capsys):
    empty = tmp_path / "w.safetensors"
    empty.write_bytes(b"")
    assert main(["sites", "se_tiny", "--weights", str(empty)]) != 0
    err = capsys.readouterr().err
    assert "is empty" in err and str(empty) in err


def test_sites_takes_a_fixed_size_model_at_its_own_size(capsys):
    """botnet26t_256 is fixed to 256 x 256 (its pretrained config): asked for exactly that, it
    runs; asked for another size, it is refused before the model runs."""
    assert main(["sites", "botnet26t_256", "--input-size", "256", "256", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["input_size"] == [3, 256, 256] and out["sites"]
    assert main(["sites", "botnet26t_256", "--input-size", "128", "256"]) == 1
    assert "takes only its own input size 256x256, not 128x256" in capsys.readouterr().err


@pytest.mark.parametrize("models", [["cbam_tiny"], ["cbam_tiny", "se_tiny"]])
def test_the_attribution_comparisons_run_their_untrained_replicates(cli, tmp_path, models):
    """One model (attention against Grad-CAM) and several (Grad-CAM across models)."""
    images = tmp_path / "images"
    assert cli("data", "make-shapes", images, "--n-per-class", "1", "--size", "64").code == 0
    out = tmp_path / "out"
    r = cli(
        "compare-attribution", *[a for m in models for a in ("--model", m)], "--images", images,
        "--out", out, "--limit", "3", "--figure-images", "1", "--no-progress",
        "--baseline", "untrained:1",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert (out / "replicates").is_dir() and any((out / "replicates").iterdir())


def test_the_query_analysis_runs_its_untrained_replicates(cli, tmp_path):
    images = tmp_path / "images"
    assert cli("data", "make-shapes", images, "--n-per-class", "1", "--size", "64").code == 0
    out = tmp_path / "out"
    r = cli(
        "queries", "--model", "nl_tiny", "--images", images, "--out", out, "--limit", "2",
        "--figure-images", "1", "--no-progress", "--baseline", "untrained:1",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert (out / "replicates").is_dir() and any((out / "replicates").iterdir())


# ----------------------------------------------------------------------------- models
def test_a_python_factory_with_local_weights_records_their_digest(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from attnviz.models.loading import load_model, sha256_file

    (tmp_path / "round7_factory.py").write_text(
        "import torch\n\ndef build():\n    return torch.nn.Linear(3, 2)\n"
    )
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "lin.safetensors"
    save_file({"weight": torch.ones(2, 3), "bias": torch.zeros(2)}, str(path))
    model, cfg = load_model("python:round7_factory:build", weights=path)
    assert cfg.source == {
        "spec": "python:round7_factory:build",
        "weights": str(path),
        "weights_sha256": sha256_file(path),
    }
    assert torch.equal(model.weight, torch.ones(2, 3))


def test_the_stage3_block_factory_gives_ten_classes_by_default():
    from attnviz.models.tiny_more import tiny_with_stage3_block

    model = tiny_with_stage3_block("sa")()
    assert model.fc.out_features == 10


def test_the_attention_options_of_a_tiny_sk_network_reach_its_sk_convolutions():
    """``attn_kwargs`` configure every SK unit (three paths and 4 groups here)."""
    from attnviz.models.tiny import SKConv, TinyResNet

    model = TinyResNet("sk", num_classes=3, attn_kwargs={"num_paths": 3, "groups": 4}).eval()
    sk = [m for m in model.modules() if isinstance(m, SKConv)]
    assert len(sk) == 8
    reference = SKConv(16, 16, num_paths=3, groups=4)
    assert [tuple(p.shape) for p in sk[0].parameters()] == [
        tuple(p.shape) for p in reference.parameters()
    ]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_training_records_the_cpu_time_of_the_run_alone(tmp_path):
    """``train_cpu_time_s`` is the CPU time of this training, not the process's total."""
    from torch_state import kept_global_state

    out = tmp_path / "out"
    argv = ["train", "plain_tiny", "--epochs", "1", "--n-train", "1", "--n-test", "1",
            "--batch-size", "8", "--out", str(out)]  # fmt: skip
    with kept_global_state(), contextlib.redirect_stdout(io.StringIO()):
        before = time.process_time()
        assert main(argv) == 0
        spent = time.process_time() - before
    entry = json.loads((out / "manifest.json").read_text())["models"]["plain_tiny"]
    assert 0 <= entry["train_cpu_time_s"] <= round(spent, 1) + 0.1


# ----------------------------------------------------------------------------- viewer
@pytest.mark.parametrize("pyplot", [True, False])
def test_the_query_inspector_figure_uses_the_constrained_layout(pyplot):
    """Both figures: the pyplot one (ipympl in a live kernel; any backend builds it) and the
    plain one."""
    from types import SimpleNamespace

    import matplotlib.pyplot as plt
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    from attnviz.widgets import QueryInspector

    owner = SimpleNamespace()
    fig = QueryInspector._new_figure(owner, pyplot)
    try:
        assert isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)
        assert tuple(fig.get_size_inches()) == (7.0, 3.6)
        assert [owner._ax_map, owner._ax_mean] == fig.axes
    finally:
        plt.close(fig)


def test_the_demo_joins_its_parts_in_the_summary_and_names_the_failed_ones(
    tmp_path, monkeypatch, capsys
):
    """Two made-up parts, one failing: the summary has one section per part, in order, each
    with its text; the exit code is 1 and stderr names the failed part."""
    import re
    import sys
    from types import SimpleNamespace

    import attnviz.commands.demo as demo

    def bad(out, images):
        raise ValueError("the part broke")

    monkeypatch.setitem(sys.modules, "round7_good", SimpleNamespace(demo=lambda o, i: "good text"))
    monkeypatch.setitem(sys.modules, "round7_bad", SimpleNamespace(demo=bad))
    parts = [("good", "round7_good", (0, 3)), ("bad", "round7_bad", (0, 4))]
    monkeypatch.setattr(demo, "DEMO_PARTS", parts)
    assert main(["demo", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "ValueError: the part broke" in err
    assert re.search(r"^attnviz demo: error: part\(s\) failed: bad(, report)?$", err, re.M), err
    summary = (tmp_path / "summary.md").read_text()
    pattern = (
        r"# attnviz demo\n\n"
        r"## good\n\ngood text\n\n\(\d+\.\d s; images 3; files in .*good\)\n\n"
        r"## bad\n\nFAILED \(traceback above\)\n\n\(\d+\.\d s; images 4; files in .*bad\)\n"
    )
    assert re.fullmatch(pattern, summary), summary


# ----------------------------------------------------------------------------- data, plot, API
def test_a_strip_that_is_not_n_square_views_is_refused_with_its_sizes():
    from PIL import Image

    from attnviz.data.shapes import split_strip

    with pytest.raises(ValueError) as err:
        split_strip(Image.new("RGB", (100, 32)), 3)
    assert str(err.value) == "expected 3 square views side by side (96 x 32), got 100 x 32"


@pytest.mark.parametrize("compare_at", ["coarser", "input"])
def test_the_attention_vs_grad_cam_caption_says_where_the_maps_were_compared(compare_at):
    import matplotlib.pyplot as plt

    from attnviz.analysis.attribution import attention_vs_attribution
    from attnviz.models.tiny import create_tiny
    from attnviz.plot import plot_attention_vs_gradcam

    torch.manual_seed(0)
    model = create_tiny("cbam_tiny", num_classes=3).eval()
    r = attention_vs_attribution(
        model, torch.randn(2, 3, 64, 64), compare_at=compare_at, keep_maps=1, progress=False
    )
    fig = plot_attention_vs_gradcam(r)
    try:
        text = " ".join(t.get_text() for t in fig.texts) + (
            fig._suptitle.get_text() if fig._suptitle else ""
        )
        where = {"coarser": "coarser grid", "input": "input size"}[compare_at]
        assert f"IoU of the top 20% at the {where}" in text, text
    finally:
        plt.close(fig)


def test_every_lazy_name_of_the_package_imports_on_first_use(monkeypatch):
    """``attnviz.X`` for every name of ``_LAZY``, computed afresh (a name used once is cached
    in the module, so this test removes the cached value first)."""
    import importlib

    import attnviz

    for name, module in attnviz._LAZY.items():
        monkeypatch.delitem(vars(attnviz), name, raising=False)
        assert getattr(attnviz, name) is getattr(importlib.import_module(module), name), name


# ----------------------------------------------------------------------------- found by make test
def test_a_finished_run_removes_the_temporary_checkpoint_a_killed_run_left(tmp_path):
    """A SIGKILL during the atomic write of a checkpoint leaves ``.<name>.tmp-XXXX`` beside it
    (the kill skips the clean-up). The resumed run, once finished, removes its own checkpoint
    files and those temporaries; another analysis's files and the user's stay."""
    from attnviz.commands._common import OutputFolder

    out = OutputFolder(tmp_path)
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    mine = ["scale_sweep-rank0-of1.npz", ".scale_sweep-rank0-of1.npz.tmp-k1x2_9",
            ".scale_sweep-rank1-of2.npz.tmp-abc"]  # fmt: skip
    kept = ["excitation-rank0-of1.npz", ".excitation-rank0-of1.npz.tmp-z", "notes.txt",
            ".scale_sweep.tmp-x", "scale_sweep-rank0-of1.npz.bak"]  # fmt: skip
    for name in mine + kept:
        (folder / name).write_bytes(b"x")
    out.remove_checkpoint("scale_sweep")
    assert sorted(p.name for p in folder.iterdir()) == sorted(kept)
    for name in kept:
        (folder / name).unlink()
    (folder / mine[1]).write_bytes(b"x")  # only a temporary left: the folder goes too
    out.remove_checkpoint("scale_sweep")
    assert not folder.exists()
