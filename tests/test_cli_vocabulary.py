"""One CLI vocabulary, one-line errors with exit codes, and an output folder that loses nothing
(issue 10, points 5 and 6)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from attnviz.cli import build_parser
from attnviz.commands._common import OutputFolder

ANALYSIS_COMMANDS = ("sweep", "excitation", "compare-attribution", "queries")
SHARED = (
    "--model",
    "--weights",
    "--images",
    "--out",
    "--sites",
    "--device",
    "--input-size",
    "--batch-size",
    "--workers",
    "--limit",
    "--resume",
    "--overwrite",
    "--strict",
    "--no-progress",
    "--debug",
    "--baseline",
    "--seeds",
)


def _subparser(name: str):
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices[name]


@pytest.mark.parametrize("command", ANALYSIS_COMMANDS)
def test_every_analysis_command_speaks_the_shared_vocabulary(command):
    sub = _subparser(command)
    options = {o: a for a in sub._actions for o in a.option_strings}
    for flag in SHARED:
        assert flag in options, f"{command} lacks {flag}"
        assert options[flag].help, f"{command} {flag} has no help text"
    assert "--units" not in options and "--site" not in options and "--queries" not in options


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--scales", "nan"], "scales must be finite numbers >= 1.0, got nan"),
        (["--scales", "inf"], "scales must be finite numbers >= 1.0, got inf"),
        (["--scales", "0.5"], "scales must be finite numbers >= 1.0"),
        (["--limit", "-1"], "must be >= 1, got -1"),
        (["--batch-size", "0"], "must be >= 1, got 0"),
        (["--input-size", "0", "0"], "must be >= 1, got 0"),
        (["--workers", "-2"], "must be >= 0, got -2"),
        (["--device", "cuda"], "no CUDA GPU"),
        (["--site", "SK_2_1"], "unrecognized arguments: --site"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(argv, message, cli, shapes_folder, tmp_path):
    out = tmp_path / "out"
    res = cli("sweep", "--model", "sk_tiny", "--images", shapes_folder, "--out", out, *argv)
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("attnviz sweep: error: "), res.err
    assert message in lines[0]
    assert "Traceback" not in res.err
    assert not (out / "result").exists()


def _weights_files(tmp: Path) -> dict:
    (tmp / "empty.pth").write_bytes(b"")
    (tmp / "bad.safetensors").write_text("garbage")
    (tmp / "text.pth").write_text("not a checkpoint")
    (tmp / "folder.pth").mkdir()
    return {
        "empty.pth": "is empty",
        "bad.safetensors": "cannot read",
        "text.pth": "not a torch checkpoint",
        "folder.pth": "is a folder",
        "missing.pth": "not found",
    }


def test_bad_weights_and_specs_are_one_line_runtime_errors(cli, shapes_folder, tmp_path):
    cases = [(["--weights", tmp_path / f], msg) for f, msg in _weights_files(tmp_path).items()]
    cases += [
        (["--model", "python:os:system"], "must take no arguments and return a torch.nn.Module"),
        (["--model", "python:no_such_module_xyz:make"], "cannot import 'no_such_module_xyz'"),
        (["--model", "python:os:path"], "not callable"),
    ]
    for extra, message in cases:
        argv = ["excitation", "--images", shapes_folder, "--out", tmp_path / "o", "--no-progress"]
        if "--model" not in extra:
            argv += ["--model", "se_tiny"]
        res = cli(*argv, *extra)
        assert res.code == 1, (extra, res.err)
        lines = res.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("attnviz excitation: error: "), res.err
        assert message in lines[0], (extra, lines[0])


def test_python_spec_from_the_working_directory(cli, shapes_folder, tmp_path, monkeypatch):
    (tmp_path / "attnviz_test_factory_mod.py").write_text(
        "from attnviz.models import create_tiny\n\ndef make():\n    return create_tiny('se_tiny')\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    res = cli(
        "excitation",
        "--model",
        "python:attnviz_test_factory_mod:make",
        "--images",
        shapes_folder,
        "--out",
        tmp_path / "o",
        "--no-progress",
        "--input-size",
        "64",
        "64",
    )
    assert res.code == 0, res.err
    assert str(tmp_path) not in sys.path  # the working directory was only borrowed
    sys.modules.pop("attnviz_test_factory_mod", None)


def test_out_checks_happen_before_any_work(cli, shapes_folder, tmp_path):
    (tmp_path / "a_file").write_text("mine")
    res = cli(
        "excitation", "--model", "se_tiny", "--images", shapes_folder, "--out", tmp_path / "a_file"
    )
    assert res.code == 1 and "is a file, not a folder" in res.err
    assert (tmp_path / "a_file").read_text() == "mine"
    res = cli(
        "excitation",
        "--model",
        "se_tiny",
        "--images",
        shapes_folder,
        "--out",
        shapes_folder / "disc" / "out",
    )
    assert res.code == 1 and "is inside the image folder" in res.err
    assert not (shapes_folder / "disc" / "out").exists()
    res = cli(
        "excitation",
        "--model",
        "se_tiny",
        "--images",
        shapes_folder,
        "--out",
        "/proc/attnviz-no/out",
    )
    assert res.code == 1 and "cannot write to --out" in res.err


def test_a_locked_out_is_refused(cli, shapes_folder, tmp_path):
    out = tmp_path / "out"
    with OutputFolder(out):
        res = cli("excitation", "--model", "se_tiny", "--images", shapes_folder, "--out", out)
        assert res.code == 1 and "in use by another running attnviz" in res.err
        assert not (out / "result").exists()
    res = cli(
        "excitation",
        "--model",
        "se_tiny",
        "--images",
        shapes_folder,
        "--out",
        out,
        "--no-progress",
        "--limit",
        "4",
    )
    assert res.code == 0, res.err
    # the lock file stays (removing a locked file would let two writers in: issue 23), empty
    assert (out / ".attnviz.lock").read_text() == ""


def test_rerun_keeps_user_files_and_removes_only_its_own_stale_figures(
    cli, shapes_folder, tmp_path
):
    out = tmp_path / "out"
    base = [
        "excitation",
        "--model",
        "se_tiny",
        "--images",
        shapes_folder,
        "--out",
        out,
        "--no-progress",
        "--limit",
        "6",
    ]
    assert cli(*base).code == 0
    figures = out / "figures"
    assert (figures / "fig6_excitation_by_class.png").exists()
    (figures / "my_notes.png").write_bytes(b"x")
    (out / "result" / "my.csv").write_text("x")
    (out / "checkpoint").mkdir()
    (out / "checkpoint" / "mine.txt").write_text("x")
    stale = figures / "old_attnviz_figure.png"
    stale.write_bytes(b"x")
    listing = figures / ".attnviz-figures.json"
    listing.write_text(listing.read_text().replace("[", '["old_attnviz_figure.png", ', 1))
    assert cli(*base).code == 0
    assert not stale.exists()  # listed by our own earlier run: removed
    assert (figures / "my_notes.png").exists() and (out / "result" / "my.csv").exists()
    assert (out / "checkpoint" / "mine.txt").exists()  # never the user's files


def test_ctrl_c_prints_how_to_resume_and_keeps_the_checkpoint(
    cli, shapes_folder, tmp_path, monkeypatch
):
    import attnviz.models as models

    real = models.load_model

    def interrupting(*a, **k):
        model, cfg = real(*a, **k)
        calls = []

        def hook(*_):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt

        model.register_forward_hook(hook)
        return model, cfg

    monkeypatch.setattr(models, "load_model", interrupting)
    out = tmp_path / "out"
    res = cli(
        "excitation",
        "--model",
        "se_tiny",
        "--images",
        shapes_folder,
        "--out",
        out,
        "--batch-size",
        "4",
        "--checkpoint-every",
        "1",
        "--no-progress",
    )
    assert res.code == 130
    assert len(res.err.strip().splitlines()) == 1
    assert "interrupted after 4 of 20 images" in res.err and "--resume" in res.err
    assert (out / "checkpoint" / "excitation_profile-rank0-of1.npz").exists()
    monkeypatch.setattr(models, "load_model", real)
    res = cli(
        "excitation",
        "--model",
        "se_tiny",
        "--images",
        shapes_folder,
        "--out",
        out,
        "--batch-size",
        "4",
        "--no-progress",
    )
    assert res.code == 1 and "--resume" in res.err and "--overwrite" in res.err
    res = cli(
        "excitation",
        "--model",
        "se_tiny",
        "--images",
        shapes_folder,
        "--out",
        out,
        "--batch-size",
        "4",
        "--no-progress",
        "--resume",
    )
    assert res.code == 0, res.err
    assert not (out / "checkpoint").exists()


def test_debug_shows_the_traceback(cli, shapes_folder, tmp_path):
    argv = [
        "excitation",
        "--model",
        "python:os:system",
        "--images",
        shapes_folder,
        "--out",
        tmp_path / "o",
    ]
    quiet = cli(*argv)
    assert quiet.code == 1 and "Traceback" not in quiet.err
    with pytest.raises(ValueError, match="must take no arguments"):
        cli(*argv, "--debug")  # the exception propagates: Python prints its traceback


@pytest.mark.subprocess
def test_a_closed_pipe_is_not_a_traceback():
    """``attnviz sites --json | head -c 0``: the reader is gone before the output comes."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "attnviz", "sites", "--model", "sk_tiny", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # before the model is even loaded: every write hits a closed pipe
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert err.strip() == ""  # like head's other writers: no traceback, no error line


def test_weights_are_recorded_and_used(cli, shapes_folder, tmp_path, tiny_weights):
    import hashlib

    from attnviz import ScaleSweepResult

    base = [
        "sweep",
        "--model",
        "sk_tiny",
        "--images",
        shapes_folder,
        "--no-progress",
        "--no-figures",
        "--limit",
        "4",
    ]
    assert cli(*base, "--out", tmp_path / "bundled").code == 0
    assert cli(*base, "--out", tmp_path / "mine", "--weights", tiny_weights).code == 0
    bundled = ScaleSweepResult.load(tmp_path / "bundled" / "result")
    mine = ScaleSweepResult.load(tmp_path / "mine" / "result")
    assert mine.meta["weights_sha256"] == hashlib.sha256(tiny_weights.read_bytes()).hexdigest()
    assert mine.meta["weights_sha256"] != bundled.meta["weights_sha256"]
    assert mine.meta["weights"] == str(tiny_weights)
    a, b = bundled.d_mean["SK_2_1"], mine.d_mean["SK_2_1"]
    assert not np.allclose(a, b)  # the scaled first conv changes the attention
