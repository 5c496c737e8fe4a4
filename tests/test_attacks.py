"""Regression tests of the attacks of issue 23, one (or more) per numbered break: each failed
before its fix. The full list of attacks and their results is in TESTING.md."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import attnviz
from attnviz.commands import _common
from attnviz.commands._common import OutputFolder
from attnviz.errors import OutputError

TESTS = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_bounded(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run ``argv`` in its own process group; a hang past ``timeout`` kills the whole group
    (torchrun and its ranks) and fails the test."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"hung for {timeout:.0f} s (killed): {' '.join(argv[:8])}\n{err[-2000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


# --------------------------------------------------------------- 1. torchrun deadlocks
TWO_RANK = {  # name -> CLI arguments (all with figures; queries with its viewer)
    "sweep": ["sweep", "--model", "sk_tiny", "--scales", "1.0", "1.5"],
    "queries": ["queries", "--model", "nl_tiny", "--figure-images", "1", "--n-queries", "2"],
    "excitation": ["excitation", "--model", "se_tiny", "--permutations", "10"],
    "attribution": ["compare-attribution", "--model", "cbam_tiny", "--figure-images", "1"],
    "gradcam": [
        "compare-attribution",
        "--model",
        "cbam_tiny",
        "--model",
        "se_tiny",
        "--figure-images",
        "1",
    ],
    "ablate": [
        "ablate",
        "--model",
        "se_tiny",
        "--scopes",
        "stage",
        "--policy",
        "remove",
        "shuffle",
    ],
    # token attention: a random-weight timm ViT (its figure on rank 0 alone, too)
    "rollout": ["rollout", "--model", "vit_tiny_patch16_224", "--figure-images", "1"],
    "queries-vit": ["queries", "--model", "vit_tiny_patch16_224", "--figure-images", "1"],
}
N_IMAGES = 4
# the real 2-rank run: one form of every command (the several-model form of
# compare-attribution makes the same collective calls: test_1_every_rank_makes_the_same_...)
REAL_RUN = ("sweep", "queries", "excitation", "attribution", "ablate")


def _one_process_references(images: Path) -> dict:
    """What one process computes for each command of TWO_RANK: (result, figure names)."""
    from attnviz.analysis import (
        attention_vs_attribution,
        excitation_profile,
        query_independence,
        scale_sweep,
    )
    from attnviz.commands.compare_attribution import attribution_figures
    from attnviz.commands.excitation import excitation_figures
    from attnviz.commands.queries import query_figures
    from attnviz.commands.sweep import sweep_figures
    from attnviz.models import load_model

    def opts(config):
        return {"preprocess": config, "limit": N_IMAGES, "progress": False, "batch_size": 1}

    refs = {}
    model, cfg = load_model("sk_tiny")
    sweep = scale_sweep(model, images, scales=[1.0, 1.5], **opts(cfg))
    refs["sweep"] = (sweep, [*sweep_figures(sweep), "fig3_views"])
    model, cfg = load_model("nl_tiny")
    queries = query_independence(
        model, images, model_name="nl_tiny", n_queries=2, map_images=1, **opts(cfg)
    )
    refs["queries"] = (queries, query_figures(queries), model, cfg)
    model, cfg = load_model("se_tiny")
    excitation = excitation_profile(model, images, permutations=10, **opts(cfg))
    refs["excitation"] = (excitation, excitation_figures(excitation))
    model, cfg = load_model("cbam_tiny")
    attribution = attention_vs_attribution(model, images, keep_maps=1, **opts(cfg))
    refs["attribution"] = (attribution, attribution_figures(attribution, 1))
    from attnviz.analysis.ablation import ablation
    from attnviz.commands.ablate import ablation_figures

    model, cfg = load_model("se_tiny")
    ablated = ablation(
        model, images, policies=["remove", "shuffle"], scopes=("stage",), **opts(cfg)
    )
    ablated.meta["model"] = "se_tiny"
    refs["ablate"] = (ablated, ablation_figures(ablated))
    return refs


@pytest.mark.slow
def test_1_every_command_under_two_ranks_with_figures_and_viewer(shapes_folder, tmp_path):
    """Break 1: rank 0's figure / viewer steps ran the runner's all_gather alone while rank 1
    waited in a barrier: a hang. Every command, figures and viewer included, now finishes
    under 2 ranks (a hang is killed and fails) with the result of one process."""
    from test_engine import assert_same_result

    from attnviz.report import load_result

    runs = [
        [*argv, "--images", str(shapes_folder), "--out", str(tmp_path / name),
         "--limit", str(N_IMAGES), "--batch-size", "1", "--no-progress"]
        for name, argv in TWO_RANK.items() if name in REAL_RUN
    ]  # fmt: skip
    two = _run_bounded(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_port", str(_free_port()), str(TESTS / "two_rank_driver.py"),
            json.dumps(runs),
        ],
        timeout=420,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    refs = _one_process_references(shapes_folder)
    for name, ref in refs.items():
        out = tmp_path / name
        result = load_result(out / "result")
        assert result.meta["run"]["world_size"] == 2, name
        # the ranks' batches hold other images, so float32 convolutions round differently
        assert_same_result(ref[0], result, atol=1e-5)
        listed = json.loads((out / "figures" / ".attnviz-figures.json").read_text())
        assert sorted(listed) == sorted(f"{s}.{e}" for s in ref[1] for e in ("png", "svg"))
        assert all((out / "figures" / f).stat().st_size > 0 for f in listed), name
        assert (out / "summary.txt").read_text().strip(), name
        assert not (out / "checkpoint").exists(), name
    from attnviz.viewer import viewer_maps

    result, _, model, cfg = refs["queries"]
    image = shapes_folder / result.ids[0]
    expected = viewer_maps(model, image, site=result.map_site["name"], preprocess=cfg)
    assert_same_result(expected, load_result(tmp_path / "queries" / "viewer"))


@pytest.mark.parametrize("name", sorted(TWO_RANK))
def test_1_every_rank_makes_the_same_collective_calls(name, monkeypatch, shapes_folder, tmp_path):
    """The deadlock of break 1, found deterministically in one process: run a command as
    rank 0 and as rank 1 of a pretended 2-rank group (collectives recorded, not sent) and
    compare the two sequences of collective calls. Before the fix rank 0 alone called
    all_gather_object for the viewer (queries) and for the Fig. 3 sweep (sweep)."""
    import matplotlib.figure
    import torch.distributed as dist

    from attnviz.analysis import runner
    from attnviz.cli import main

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, path, **k: None)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(runner, "world_size", lambda: 1)  # each pretend rank reads all images
    monkeypatch.setattr(runner, "rank", lambda: 0)
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a: None)
    calls: list[str] = []

    def gather(out, obj, *a, **k):
        calls.append("all_gather_object")
        out[:] = [obj, obj]

    monkeypatch.setattr(dist, "all_gather_object", gather)
    monkeypatch.setattr(dist, "all_reduce", lambda *a, **k: calls.append("all_reduce"))
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: calls.append("barrier"))
    seen = {}
    for r in (1, 0):
        monkeypatch.setattr(dist, "get_rank", lambda *a, r=r: r)
        calls.clear()
        argv = [*TWO_RANK[name], "--images", str(shapes_folder), "--out", str(tmp_path / name),
                "--limit", "2", "--no-progress"]  # fmt: skip
        assert main(argv) == 0
        seen[r] = list(calls)
    assert seen[0] == seen[1], seen
    assert (tmp_path / name / "figures" / ".attnviz-figures.json").is_file()
    if name == "queries":
        assert (tmp_path / name / "viewer" / "manifest.json").is_file()


def test_1_local_only_makes_this_process_act_alone(monkeypatch):
    """The rule behind break 1: inside local_only() the runner neither shards nor gathers."""
    import torch.distributed as dist

    from attnviz import distributed

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(dist, "get_rank", lambda *a: 1)
    assert distributed.is_distributed() and distributed.rank() == 1
    with distributed.local_only():
        with distributed.local_only():
            assert distributed.world_size() == 1 and distributed.rank() == 0
        assert not distributed.is_distributed()
        assert distributed.all_gather_objects("x") == ["x"]
    assert distributed.world_size() == 2


def test_1_a_failure_on_rank_0_reaches_every_rank(monkeypatch):
    """on_main_rank: rank 0's error is re-raised there, and the other ranks fail in one line
    instead of waiting for ever."""
    from attnviz import distributed

    monkeypatch.setattr(distributed, "all_reduce_max", lambda v: 1)  # rank 0 failed
    with pytest.raises(OutputError, match="rank 0 failed"):
        _common.on_main_rank(False, lambda: 1)

    def boom():
        assert not distributed.is_distributed()
        raise RuntimeError("figure failed")

    with pytest.raises(RuntimeError, match="figure failed"):
        _common.on_main_rank(True, boom)


# --------------------------------------------------------------- 2. symlink as the lock
def test_2_a_symlink_lock_file_is_refused_and_its_target_untouched(tmp_path):
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("precious\n")
    (out / ".attnviz.lock").symlink_to(victim)
    with pytest.raises(OutputError, match="not a plain file") as err:
        OutputFolder(out).__enter__()
    assert "\n" not in str(err.value)
    assert victim.read_text() == "precious\n" and (out / ".attnviz.lock").is_symlink()


@pytest.mark.parametrize("kind", ["fifo", "folder", "hard link"])
def test_2_a_lock_file_that_is_not_a_plain_file_of_its_own_is_refused(tmp_path, kind):
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("precious\n")
    lock = out / ".attnviz.lock"
    if kind == "fifo":
        os.mkfifo(lock)
    elif kind == "folder":
        lock.mkdir()
    else:
        os.link(victim, lock)
    with pytest.raises(OutputError, match="not a plain file"):
        OutputFolder(out).__enter__()
    assert victim.read_text() == "precious\n"


# --------------------------------------------------------------- 3. lock release race
def _race(monkeypatch, tmp_path, between):
    """B opens the lock file; before B's flock, ``between(out)`` runs (A leaves, C enters).
    Returns B's error (None if B got in too)."""
    out = tmp_path / "out"
    a = OutputFolder(out).__enter__()
    real = _common.fcntl.flock
    state = {"armed": True}

    def flock(fd, op):
        if state["armed"] and op & _common.fcntl.LOCK_EX:
            state["armed"] = False
            between(out, a)
        return real(fd, op)

    monkeypatch.setattr(_common.fcntl, "flock", flock)
    try:
        OutputFolder(out).__enter__()
    except OutputError as exc:
        return exc
    return None


def test_3_a_waiting_writer_never_enters_beside_a_new_one(monkeypatch, tmp_path):
    """Break 3: A unlinked the lock file, then unlocked; B (which had opened the old file)
    locked the unlinked inode while C created a new file and locked it: two writers."""
    holders = []

    def a_leaves_c_enters(out, a):
        a.__exit__(None, None, None)
        holders.append(OutputFolder(out).__enter__())

    err = _race(monkeypatch, tmp_path, a_leaves_c_enters)
    assert holders and err is not None and "in use by another running attnviz" in str(err)
    holders[0].__exit__(None, None, None)


def test_3_a_lock_on_a_replaced_file_is_dropped_and_retried(monkeypatch, tmp_path):
    """If the file B opened is removed and replaced before B locks it (e.g. by an older
    attnviz), B re-checks the inode after flock, retries on the new file and is refused."""
    holders = []

    def replaced(out, a):
        a.__exit__(None, None, None)
        os.unlink(out / ".attnviz.lock")
        holders.append(OutputFolder(out).__enter__())

    err = _race(monkeypatch, tmp_path, replaced)
    assert holders and err is not None and "in use by another running attnviz" in str(err)
    holders[0].__exit__(None, None, None)


def test_3_threads_never_hold_one_out_together(tmp_path):
    out = tmp_path / "out"
    inside, overlaps = [0], []
    guard = threading.Lock()

    def worker():
        for _ in range(40):
            try:
                with OutputFolder(out):
                    with guard:
                        inside[0] += 1
                        overlaps.append(inside[0])
                    with guard:
                        inside[0] -= 1
            except OutputError:
                pass

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps and max(overlaps) == 1


# --------------------------------------------------------------- 4. another analysis, same OUT
def test_4_another_analysis_into_the_same_out_keeps_the_first(cli, shapes_folder, tmp_path):
    """Break 4: `sweep` after `excitation` into one OUT removed the excitation's result and
    figures. Each analysis now owns its files: the second goes to OUT/<analysis>/."""
    from attnviz.report import find_analyses

    out = tmp_path / "X"
    common = ["--images", shapes_folder, "--out", out, "--limit", "4", "--no-progress"]
    assert cli("excitation", "--model", "se_tiny", "--permutations", "0", *common).code == 0
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    figures = json.loads((out / "figures" / ".attnviz-figures.json").read_text())
    assert len(figures) == 10
    run = cli("sweep", "--model", "sk_tiny", "--no-figures", *common)
    assert run.code == 0, run.err
    assert f"wrote {out / 'scale_sweep' / 'result'}" in run.out
    after = {p: p.read_bytes() for p in before if p.is_file()}
    lock = out / ".attnviz.lock"
    assert {k: v for k, v in after.items() if k != lock} == {
        k: v for k, v in before.items() if k != lock
    }
    assert attnviz.ScaleSweepResult.load(out / "scale_sweep" / "result").n_images == 4
    assert attnviz.ExcitationProfileResult.load(out / "result").n_images == 4
    assert find_analyses([out]) == [out, out / "scale_sweep"]
    # each reruns into its own place
    assert cli("sweep", "--model", "sk_tiny", "--no-figures", *common).code == 0
    assert not (out / "excitation_profile").exists()
    assert sorted(p.name for p in (out / "scale_sweep").iterdir()) == ["result", "summary.txt"]


def test_4_result_save_never_removes_another_kinds_files(tmp_path):
    from attnviz.analysis.query_maps import QueryMapsResult

    (tmp_path / "manifest.json").write_text(
        json.dumps({"kind": "excitation_profile", "files": ["excitation.csv", "manifest.json"]})
    )
    (tmp_path / "excitation.csv").write_text("a\n")
    assert QueryMapsResult.kind != "excitation_profile"
    from attnviz.results import _files_of_earlier_save

    assert _files_of_earlier_save(tmp_path, QueryMapsResult.kind) == []
    assert _files_of_earlier_save(tmp_path, "excitation_profile") == ["excitation.csv"]


# --------------------------------------------------------------- 5. '..' in attnviz's own list
def test_5_a_crafted_figure_list_is_ignored_with_warnings_never_raises(tmp_path):
    """Break 5: '..' in the figure list passed the name filter and unlink() raised
    IsADirectoryError after the analysis, on this and every later run."""
    import matplotlib.pyplot as plt

    out = tmp_path / "out"
    figures = out / "figures"
    figures.mkdir(parents=True)
    (figures / "sub").mkdir()
    (tmp_path / "outside.png").write_bytes(b"x")
    (figures / "link.png").symlink_to(tmp_path / "outside.png")
    (figures / "old.png").write_bytes(b"x")  # a plain file it listed: removed
    crafted = ["..", ".", "", "/etc/passwd", "../outside.png", "sub", "link.png", 7, "old.png"]
    (figures / ".attnviz-figures.json").write_text(json.dumps(crafted))
    for _ in range(2):  # and the next run into that OUT works too
        with OutputFolder(out) as folder, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fig = plt.figure()
            written = folder.save_figures({"f": fig}, formats=("png",))
        assert [p.name for p in written] == ["f.png"]
    assert (tmp_path / "outside.png").read_bytes() == b"x" and (figures / "sub").is_dir()
    assert (figures / "link.png").is_symlink() and not (figures / "old.png").exists()
    assert json.loads((figures / ".attnviz-figures.json").read_text()) == ["f.png"]
    texts = [str(w.message) for w in caught]
    assert texts == []  # the second run reads its own clean list
    (figures / ".attnviz-figures.json").write_text(json.dumps(crafted))
    with OutputFolder(out) as folder, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folder.save_figures({"f": plt.figure()}, formats=("png",))
    texts = [str(w.message) for w in caught]
    assert len(texts) == 8 and all("\n" not in t for t in texts)
    assert any("'..'" in t for t in texts) and any("sub" in t for t in texts)


def test_5_a_crafted_result_manifest_is_ignored_too(tmp_path):
    from attnviz.analysis.query_maps import QueryMapsResult
    from attnviz.results import remove_listed_files

    folder = tmp_path / "result"
    folder.mkdir()
    (folder / "mine.csv").write_text("x")
    (folder / "d").mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        remove_listed_files(
            folder, ["..", "d", "/tmp", "mine.csv", "keep.csv"], keep={"keep.csv"},
            listing=folder / "manifest.json",
        )  # fmt: skip
    assert not (folder / "mine.csv").exists() and (folder / "d").is_dir()
    assert len(caught) == 3
    assert QueryMapsResult.kind  # the Result.save path uses the same function


# --------------------------------------------------------------- 6. report trusts folders
EVIL_SVG = """<?xml version="1.0"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"
 onload="alert('onload')" width="10" height="10">
<script>alert('script')</script>
<style>@import url(http://evil.example/a.css); *{fill:url(http://evil.example/p)}</style>
<defs><path id="p1" d="M0 0L1 1"/></defs>
<use xlink:href="#p1"/><use href="http://evil.example/x.svg#p"/>
<a xlink:href="javascript:alert('a')"><rect width="5" height="5"/></a>
<rect width="5" height="5" onclick="alert('click')" style="fill:url(http://evil.example/q)"/>
<rect width="5" height="5" fill="url(#p1)"/>
<image xlink:href="http://evil.example/i.png" width="1" height="1"/>
<image href="data:image/svg+xml;base64,PHN2Zy8+" width="1" height="1"/>
<image href="data:image/png;base64,iVBORw0KGgo=" width="1" height="1"/>
<foreignObject><div xmlns="http://www.w3.org/1999/xhtml"><script>alert(1)</script></div>
</foreignObject>
<text x="0" y="5">&lt;/svg&gt;&lt;script&gt;alert('text')&lt;/script&gt;</text>
</svg>
"""


@pytest.fixture()
def received(tmp_path):
    """A result folder as received from someone: a real result, a hostile SVG, a figure
    list naming files outside, a summary with markup, a symlink out, and a query viewer."""
    from attnviz.models import load_model
    from attnviz.viewer import viewer_maps

    root = tmp_path / "received"
    folder = root / "analysis"
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(image)
    model, cfg = load_model("nl_tiny")
    maps = viewer_maps(model, image, preprocess=cfg, max_cells=16)
    maps.meta["model"] = "nl_tiny</h2><script>alert('model')</script>"
    maps.save(folder / "result")
    maps.save(folder / "viewer")
    figures = folder / "figures"
    figures.mkdir()
    (figures / "evil.svg").write_text(EVIL_SVG)
    (tmp_path / "outside.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg">OUTSIDE</svg>')
    (figures / "link.svg").symlink_to(tmp_path / "outside.svg")
    listing = ["evil.svg", "link.svg", "../../../outside.svg", str(tmp_path / "outside.svg")]
    (figures / ".attnviz-figures.json").write_text(json.dumps(listing))
    (folder / "summary.txt").write_text("</pre><script>alert('summary')</script>")
    return root


def test_6_report_sanitises_svg_refuses_outside_files_and_escapes(received):
    """Break 6: an SVG in a received folder was inlined verbatim (script, external href) and
    a figure list naming paths outside OUT was read."""
    from attnviz.report import build_report

    page = build_report([received], title="<script>alert('title')</script>")
    assert "OUTSIDE" not in page  # nothing read outside the folder given
    assert "<script>alert" not in page and "</h2><script>" not in page  # every text escaped
    static = re.sub(r"<script>.*?</script>", "", page, flags=re.S)  # all but the viewer's
    assert not re.search(r"\son\w+\s*=", static)  # no event handler attribute
    for bad in ("evil.example", "javascript:", "foreignObject", "@import", "svg+xml"):
        assert bad not in page, bad
    assert 'href="#a0f0-p1"' in page and "url(#a0f0-p1)" in page  # local references kept
    assert "data:image/png;base64,iVBORw0KGgo=" in page
    assert "&lt;/svg&gt;&lt;script&gt;" in page
    # the only executable scripts are the page's own (the viewer), each allowed by its hash
    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    assert len(scripts) == 1 and "attnvizQueryViewer" in scripts[0]
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', page)
    assert csp and page.index(csp.group(0)) < page.index("<title>")
    policy = dict(p.strip().split(" ", 1) for p in csp.group(1).split(";"))
    assert policy["default-src"] == "'none'" and policy["img-src"] == "data:"
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert policy["script-src"] == f"'sha256-{digest}'"
    assert "unsafe-inline" not in policy["script-src"]


def test_6_report_refuses_a_result_folder_linked_from_outside(tmp_path, received):
    from attnviz.report import find_analyses

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "linked").symlink_to(received / "analysis", target_is_directory=True)
    assert find_analyses([mine]) == []
    assert find_analyses([received]) == [received / "analysis"]


def test_6_a_malformed_or_entity_svg_is_left_out_in_one_line(received):
    from attnviz.report import build_report
    from attnviz.sanitise import UnsafeSvgError, sanitise_svg

    bomb = '<!DOCTYPE s [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]><svg>&b;</svg>'
    with pytest.raises(UnsafeSvgError, match="entities"):
        sanitise_svg(bomb, "x")
    figures = received / "analysis" / "figures"
    (figures / "evil.svg").write_text(bomb)
    page = build_report([received])
    assert "figure evil left out" in page and "aaaa" not in page


# --------------------------------------------------------------- 7. smaller things
def test_7_a_non_utf8_first_image_still_gets_its_viewer(tmp_path):
    from attnviz.analysis import query_independence
    from attnviz.commands.queries import save_viewer, viewer_result
    from attnviz.models import load_model

    folder = tmp_path / "images" / "disc"
    folder.mkdir(parents=True)
    name = os.fsdecode(os.fsencode(folder) + b"/a_\xff.png")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(name)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(folder / "z.png")
    model, cfg = load_model("nl_tiny")
    result = query_independence(
        model, tmp_path / "images", map_images=1, preprocess=cfg, progress=False
    )
    assert result.ids[0] == "disc/a_\\xff.png"
    path = save_viewer(tmp_path / "out", viewer_result(model, tmp_path / "images", result, cfg))
    assert path is not None and (path / "manifest.json").is_file()


def test_7_the_class_folder_warning_is_one_clean_line(tmp_path):
    images = tmp_path / "images"
    for cls in ("disc", "zebra"):
        (images / cls).mkdir(parents=True)
        Image.new("RGB", (64, 64), (200, 10, 10)).save(images / cls / "a.png")
    run = _run_bounded(
        [sys.executable, "-m", "attnviz", "sweep", "--model", "sk_tiny", "--images",
         str(images), "--out", str(tmp_path / "out"), "--no-figures", "--no-progress"],
        timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines == [
        "attnviz: warning: class folders ['zebra'] are not among the model's classes; labels "
        "follow the folders' alphabetical order, which need not be the model's output order"
    ]


def test_7_resume_with_nothing_to_resume_says_so(cli, shapes_folder, tmp_path):
    run = cli("sweep", "--model", "sk_tiny", "--images", shapes_folder, "--out", tmp_path / "o",
              "--limit", "2", "--no-figures", "--no-progress", "--resume")  # fmt: skip
    assert run.code == 0, run.err
    said = [line for line in run.err.splitlines() if "nothing to resume" in line]
    assert len(said) == 1 and "starting a fresh run" in said[0]


# --------------------------------------------------------------- 8. decompression bombs
def _bomb_png(path: Path, side: int) -> None:
    """A valid grey PNG of side x side zero pixels, a few hundred KB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    packer, row = zlib.compressobj(9), bytes(side + 1)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def test_8_a_bomb_under_pils_limit_is_skipped_before_decoding(tmp_path, monkeypatch):
    """Break 8: a small 13,000 x 13,000 PNG (under PIL's hard limit) was decoded silently."""
    from attnviz.data.images import load_image

    bomb = tmp_path / "bomb.png"
    _bomb_png(bomb, 13_000)
    assert bomb.stat().st_size < 1_000_000
    from PIL import ImageFile

    decoded = []
    real = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda s: decoded.append(1) or real(s))
    image, reason = load_image(bomb)
    assert image is None and not decoded
    assert reason == "too large: 13000x13000 = 169 Mpx (max 50 Mpx; see --max-pixels)"


def test_8_max_pixels_on_every_analysis_command_and_in_the_api(cli, tmp_path):
    from attnviz.cli import build_parser
    from attnviz.data.images import MAX_PIXELS
    from attnviz.data.sources import image_source

    assert _common.MAX_PIXELS == MAX_PIXELS == 50_000_000
    parser = build_parser()
    for argv in TWO_RANK.values():
        args = parser.parse_args([*argv, "--images", "i", "--out", "o", "--max-pixels", "99"])
        assert args.max_pixels == 99
    assert cli("excitation", "--model", "se_tiny", "--images", "i", "--out", "o",
               "--max-pixels", "0").code == 2  # fmt: skip
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 64)).save(images / "small.png")
    Image.new("RGB", (200, 100)).save(images / "big.png")
    source = image_source(images, max_pixels=10_000)
    assert source.load(source.ids.index("big.png"))[2].startswith("too large: 200x100")
    assert source.load(source.ids.index("small.png"))[0] is not None
    assert image_source(images, max_pixels=None).load(0)[0] is not None
    with pytest.raises(ValueError, match="max_pixels"):
        image_source(images, max_pixels=0)
    run = cli("sweep", "--model", "sk_tiny", "--images", images, "--out", tmp_path / "o",
              "--no-figures", "--no-progress", "--max-pixels", "10000")  # fmt: skip
    assert run.code == 0, run.err
    assert "skipped big.png: too large: 200x100 = 0.02 Mpx (max 0.01 Mpx; see --max-pixels)" in (
        run.out
    )


def test_8_the_fig3_image_of_the_sweep_is_capped_too(tmp_path):
    """The sweep's Fig. 3 image was opened with PIL directly: a bomb there was decoded even
    though the analysis skipped it. It now takes the next usable image."""
    import argparse

    from attnviz.commands.sweep import _figure_item
    from attnviz.models import load_model

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (200, 100)).save(images / "a_big.png")
    Image.new("RGB", (64, 64)).save(images / "b_small.png")
    _, cfg = load_model("sk_tiny")
    args = argparse.Namespace(figure_image="0", out=str(tmp_path / "o"), max_pixels=10_000)
    item, views = _figure_item(args, images, cfg, [1.0, 1.5])
    assert item == [images / "b_small.png"] and len(views) == 2
