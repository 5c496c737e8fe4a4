"""Tests for survivors of the eleventh held-out round of the sampled mutation run (every area;
TESTING.md, "Whole package by sampling"): the full-map size warning given once, the cache's
byte count, a capture of an intervened site reading what was written, a written attention in
the module's own dtype, the sweep command's refusal of two sources, the interception left at
once when a forward raises, a process group the user started, the sampled JSD's plain standard
error, query maps saved before prefix tokens existed; read after the round: class folders the
model does not know, the demo's image set reused, a checkpoint lacking one of its keys, and the
report's labels of folders given as relative paths. (The query inspector's overlay style is in
``tests/test_widgets.py``, the analyses that keep no maps in ``tests/test_keep_no_maps.py``.)"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from test_engine import _StopAfter
from test_mutants_round10 import PositionSoftmax, _first_softmax, position_softmax_adapter
from torch import nn

import attnviz
from attnviz.capture import Intercepted, register_adapter, unregister_adapter
from attnviz.capture import core as capture_core
from attnviz.capture.policies import Policy


def test_the_full_map_size_warning_is_given_once_per_capture(monkeypatch):
    monkeypatch.setattr(capture_core, "FULL_MAP_WARN_BYTES", 100)
    model, _ = attnviz.load_model("nl_tiny")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with attnviz.capture(model) as cache, torch.no_grad():
            for _ in range(3):
                model(torch.randn(1, 3, 32, 32))
    assert len(cache) > 0
    assert [w.category for w in caught].count(ResourceWarning) == 1


def test_the_cache_counts_its_bytes_exactly():
    model, _ = attnviz.load_model("se_tiny")
    with attnviz.capture(model, io=True) as cache, torch.no_grad():
        model(torch.randn(2, 3, 20, 12))
    want = sum(cache[n].numel() * 4 for n in cache)
    want += sum(cache.inputs(n).numel() * 4 + cache.outputs(n).numel() * 4 for n in cache)
    assert cache.nbytes() == want > 0


@pytest.fixture()
def adapter():
    with position_softmax_adapter():
        yield


def test_a_capture_entered_before_an_intervention_reads_what_was_written(adapter):
    """A capture entered outside an intervention records the attention the intervention wrote
    (uniform 1 / HW), not the softmax the module computed."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), PositionSoftmax(4)).eval()
    x = torch.randn(2, 3, 5, 7)
    with torch.no_grad(), attnviz.capture(model) as cache:
        with attnviz.intervene(model, {"all": "uniform"}):
            model(x)
    (name,) = list(cache)
    torch.testing.assert_close(cache[name], torch.full((2, 5, 7), 1 / 35))


class _OnesInFloat32(Policy):
    name = "ones_float32"

    def apply(self, att, ctx):
        return torch.ones(att.shape, dtype=torch.float32)


def test_written_attention_takes_the_modules_dtype():
    """A bfloat16 model given a float32 replacement: the module goes on in bfloat16."""
    model, _ = attnviz.load_model("se_tiny")
    model = model.to(torch.bfloat16)  # a copy of its own: load_model builds a new one
    x = torch.randn(2, 3, 24, 16, dtype=torch.bfloat16)
    with torch.no_grad(), attnviz.intervene(model, {"all": _OnesInFloat32()}):
        y = model(x)
    assert y.dtype == torch.bfloat16


def test_sweep_refuses_two_sources_with_its_whole_message(cli, tmp_path):
    r = cli("sweep", "--model", "sk_tiny", "--images", tmp_path, "--shapes", "4",
            "--out", tmp_path / "o")  # fmt: skip
    assert r.code == 2
    assert r.err.strip().splitlines()[-1] == (
        "attnviz sweep: error: give exactly one of --images DIR and --shapes N"
    )
    assert not (tmp_path / "o").exists()


class _RaisesAfterSoftmax(PositionSoftmax):
    def forward(self, x):
        super().forward(x)
        raise RuntimeError("after the softmax")


def test_a_forward_that_raises_leaves_the_interception_at_once():
    """The post-hook that leaves a site's torch-function mode runs when the forward raises
    too: the mode is gone at once, not only when the context exits."""
    register_adapter(_RaisesAfterSoftmax, kind="gc", read=Intercepted(("softmax",), _first_softmax))
    try:
        model = nn.Sequential(nn.Conv2d(3, 4, 1), _RaisesAfterSoftmax(4)).eval()
        with attnviz.capture(model):
            with pytest.raises(RuntimeError, match="after the softmax"):
                model(torch.randn(1, 3, 4, 4))
            assert torch._C._len_torch_function_stack() == 0
            assert torch.softmax(torch.zeros(3), 0).sum() == 1  # plain torch again
    finally:
        unregister_adapter(_RaisesAfterSoftmax)
    assert torch._C._len_torch_function_stack() == 0


def test_a_process_group_the_user_started_is_not_attnvizs_to_start_or_end(monkeypatch, tmp_path):
    """Under torchrun with the group already initialised (by the user's own script),
    ``init_from_env`` reports that it started nothing, so attnviz does not destroy it."""
    import torch.distributed as dist

    from attnviz.distributed import init_from_env

    monkeypatch.setenv("WORLD_SIZE", "2")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)  # fmt: skip
    try:
        assert init_from_env() is False
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_from_env() is False and not dist.is_initialized()


def test_sampled_jsd_without_control_is_the_plain_mean_and_standard_error():
    """``_sampled_pairs(control=False)``: the mean JSD of the seeded pairs and its standard
    error s / sqrt(pairs) with the n - 1 sample deviation, against NumPy by hand."""
    import math

    import numpy as np

    from attnviz.analysis.stats import _sampled_pairs

    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(7, 5, generator=g), dim=1)
    h = -(p * p.log()).sum(1)
    mean, se = _sampled_pairs(p, h, 40, False, 3, control=False)
    rng = np.random.default_rng(3)
    i = rng.integers(0, 7, 40)
    j = (i + rng.integers(1, 7, 40)) % 7
    q = p.double().numpy()

    def entropy(r):
        return -(r * np.log(r)).sum(-1)

    jsd = entropy((q[i] + q[j]) / 2) - (entropy(q[i]) + entropy(q[j])) / 2
    assert mean == pytest.approx(jsd.mean(), rel=1e-5)
    assert se == pytest.approx(jsd.std(ddof=1) / math.sqrt(40), rel=1e-4)


def test_query_maps_saved_before_prefix_tokens_existed_load_with_none(tmp_path):
    """A manifest without ``prefix_names`` (written before token sites had prefix rows) loads
    as a result with no prefix tokens, everything else as saved."""
    import json

    import numpy as np

    from attnviz.analysis.query_maps import QueryMapsResult, query_maps

    model, _ = attnviz.load_model("nl_tiny")
    res = query_maps(model, torch.rand(3, 32, 48), queries=[(1, 2), (3, 0)])
    folder = res.save(tmp_path / "maps")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest.pop("prefix_names") == []
    (folder / "manifest.json").write_text(json.dumps(manifest))
    back = QueryMapsResult.load(folder)
    assert back.prefix_names == []
    np.testing.assert_array_equal(back.maps, res.maps)


def test_class_folders_the_model_does_not_know_keep_their_labels_with_a_warning():
    """A folder ``zebra`` that is not among the model's classes: the labels stay in the
    folders' order (no remapping is possible) and the warning names the unknown folder."""
    from types import SimpleNamespace

    from attnviz.analysis.runner import _match_classes

    source = SimpleNamespace(class_names=["disc", "zebra"], labels=[1, 0, 1])
    with pytest.warns(UserWarning, match=r"class folders \['zebra'\] are not among"):
        _match_classes(source, SimpleNamespace(classes=["ring", "disc", "square"]))
    assert source.labels == [1, 0, 1] and source.class_names == ["disc", "zebra"]


def test_the_demo_writes_its_image_set_once_and_reuses_it(tmp_path, monkeypatch):
    """A second ``demo_images`` call returns the folder the first wrote, without rendering
    (the image set is deterministic, and rendering it again could not replace the folder)."""
    import attnviz.data
    from attnviz.commands.demo import demo_images

    first = demo_images(tmp_path, 1, 7)
    listing = sorted(p.relative_to(first) for p in first.rglob("*"))
    assert first.name == "shapes-1x10-seed7" and (first / "records.csv").is_file()

    def no_render(*args, **kwargs):
        raise AssertionError("rendered again")

    monkeypatch.setattr(attnviz.data, "write_image_folder", no_render)
    assert demo_images(tmp_path, 1, 7) == first
    assert sorted(p.relative_to(first) for p in first.rglob("*")) == listing
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary folder left


def interrupted_checkpoint(model, images, *, stop_at: int, **options) -> Path:
    """The checkpoint an excitation run of ``model`` leaves when a Ctrl-C comes in its
    ``stop_at``-th forward (``options``: the runner's, with ``checkpoint=`` a folder)."""
    from attnviz.analysis.excitation import excitation_profile
    from attnviz.errors import Interrupted

    handle = model.register_forward_hook(_StopAfter(stop_at))
    try:
        with pytest.raises(Interrupted):
            excitation_profile(model, images, **options)
    finally:
        handle.remove()
    (ckpt,) = Path(options["checkpoint"]).glob("*.npz")
    return ckpt


@pytest.mark.parametrize("key", ["fingerprint", "position", "skipped", "seconds"])
def test_a_checkpoint_lacking_a_key_is_refused_in_one_line(key, shapes_folder, tmp_path):
    """Every runner writes the four keys of ``CHECKPOINT_KEYS``; a checkpoint without one
    (damaged, or not the runner's) is refused by name, not read with a made-up default."""
    import numpy as np

    from attnviz.analysis.excitation import excitation_profile
    from attnviz.analysis.runner import CHECKPOINT_KEYS, read_checkpoint
    from attnviz.errors import CheckpointError

    assert key in CHECKPOINT_KEYS
    model, cfg = attnviz.load_model("se_tiny")
    opts = dict(
        preprocess=cfg, batch_size=4, progress=False, checkpoint=tmp_path, checkpoint_every=1
    )
    ckpt = interrupted_checkpoint(model, shapes_folder, stop_at=3, **opts)
    meta, _ = read_checkpoint(ckpt)
    assert sorted(meta) == sorted(CHECKPOINT_KEYS) and meta["position"] == 8  # two batches of 4
    with np.load(ckpt, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    del meta[key]
    arrays["checkpoint"] = np.asarray(json.dumps(meta))
    np.savez(ckpt, **arrays)
    with pytest.raises(CheckpointError) as err:
        excitation_profile(model, shapes_folder, resume=True, **opts)
    assert str(err.value) == (
        f"cannot resume from {ckpt}: it lacks {key}; run with --overwrite to start over"
    )


def test_the_report_labels_each_analysis_by_its_path_below_the_folder_given(tmp_path, monkeypatch):
    """Folders given as ``.``, ``b/..`` or an absolute path: each analysis is labelled by
    its path below the folder it was found under (the folder's own name when it is one)."""
    import re

    from attnviz.analysis.query_independence import query_independence
    from attnviz.report import build_report

    model, _ = attnviz.load_model("nl_tiny")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    result = query_independence(model, x, progress=False)
    for sub in ("a/one", "a/two", "b"):
        result.save(tmp_path / sub / "result")
    monkeypatch.chdir(tmp_path)

    def labels(*paths: str) -> list[str]:
        return re.findall(r'<li><a href="#a\d+">([^<]*)</a></li>', build_report(paths))

    assert labels(".") == ["a/one", "a/two", "b"]
    assert labels("b/../a", "b") == ["one", "two", "b"]
    assert labels(str(tmp_path / "a" / "two")) == ["two"]
