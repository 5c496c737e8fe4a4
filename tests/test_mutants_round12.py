"""Tests for survivors of the twelfth held-out round of the sampled mutation run (capture,
runner and results, analysis, report and viewer, commands; TESTING.md, "Whole package by
sampling"): the Grad-CAM layer of a model without named stages, the per-head seeds of the
sampled JSD, one image of a batch given to ``query_maps``, the whole messages of a missing
label and of a failed main rank, an empty listed file name, a checkpoint's state info with
NumPy values and its elapsed time, the module types of given adapters, SK's split input, and
``attnviz queries`` beside another analysis in one folder."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_mutants_round11 import interrupted_checkpoint
from torch import nn

import attnviz


def test_the_default_gradcam_layer_is_the_last_conv_of_a_model_without_named_stages():
    from attnviz.analysis.attribution import default_gradcam_layer

    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Sequential(nn.Conv2d(4, 5, 1))
    )
    assert default_gradcam_layer(model) == "3.0"


def test_per_head_statistics_sample_their_pairs_with_the_seed_and_head():
    """Above ``exact_rows`` the JSD is sampled; head h uses the seed ``(*seed, h)``, the same
    pairs on every run (a run is reproducible), other pairs for another seed."""
    from attnviz.analysis._sites import TokenLayout, with_head_mean
    from attnviz.analysis.query_independence import token_statistics
    from attnviz.analysis.stats import attention_statistics

    g = torch.Generator().manual_seed(3)
    att = torch.softmax(3 * torch.randn(2, 1 + 12, 1 + 12, generator=g), -1)  # class + 3x4
    layout = TokenLayout(1, 1, (3, 4), (3, 4), ("class",))
    opts = dict(exact_rows=4, pairs=16)
    first = token_statistics(None, None, att, layout, seed=(7,), **opts)
    again = token_statistics(None, None, att, layout, seed=(7,), **opts)
    other = token_statistics(None, None, att, layout, seed=(8,), **opts)
    assert first == again and first != other
    rows = with_head_mean(att.float())[:, 1:]
    for h in range(3):  # two heads and their mean
        want = attention_statistics(rows[h], seed=(7, h), **opts)
        assert first[h]["jsd_att"] == want["jsd_att"]


def test_query_maps_of_a_batch_read_its_first_image():
    """Given a batch, ``query_maps`` runs the model once, on the first image only."""
    from attnviz.analysis.query_maps import query_maps

    model, _ = attnviz.load_model("nl_tiny")
    x = torch.randn(3, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    forwards = []
    handle = model.register_forward_hook(lambda m, a, o: forwards.append(len(a[0])))
    try:
        batch = query_maps(model, x, queries=[(1, 2)], query_space="cell")
    finally:
        handle.remove()
    assert forwards == [1]  # one forward of the one image
    first = query_maps(model, x[0], queries=[(1, 2)], query_space="cell")
    np.testing.assert_array_equal(batch.maps, first.maps)
    assert batch.maps.shape[0] == 1


def test_a_missing_label_with_target_label_is_refused_whole():
    from attnviz.analysis.attribution import attention_vs_attribution

    model, _ = attnviz.load_model("cbam_tiny")
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError) as err:
        attention_vs_attribution(model, x, target="label", progress=False)
    assert str(err.value) == "target='label' but some images have no label"


def test_a_rank_whose_main_rank_failed_says_so_whole(monkeypatch):
    from attnviz import distributed
    from attnviz.commands._common import on_main_rank
    from attnviz.errors import OutputError

    monkeypatch.setattr(distributed, "all_reduce_max", lambda value: 1)  # rank 0 failed
    with pytest.raises(OutputError) as err:
        on_main_rank(False, lambda: None)
    assert str(err.value) == "rank 0 failed while writing the outputs (see its error)"


def test_an_empty_name_is_not_a_plain_file_name(tmp_path):
    from attnviz.results import _plain_name, remove_listed_files

    assert not _plain_name("") and _plain_name("a.csv")
    (tmp_path / "a.csv").write_text("x")
    with pytest.warns(UserWarning, match=r"ignored '' in .*: not a plain file name"):
        remove_listed_files(tmp_path, ["", "a.csv"], keep=set(), listing=tmp_path / "m.json")
    assert not (tmp_path / "a.csv").exists()


def test_a_checkpoint_keeps_numpy_values_of_the_state_info_and_its_elapsed_time(
    tmp_path, monkeypatch
):
    """``State.arrays`` writes ``info`` as JSON with the results' encoder (NumPy integers,
    arrays); the checkpoint's ``seconds`` are the time the run has taken (a fake clock that
    moves 1 s per call: positive, not the negative of a sign slip)."""
    from attnviz.analysis import runner
    from attnviz.analysis.runner import State, read_checkpoint
    from attnviz.data.sources import to_pil

    state = State()
    state.info["grid"] = (np.int64(3), np.int64(4))
    state.info["cells"] = np.arange(4).reshape(2, 2)
    back = State.from_arrays(state.arrays())
    assert back.info == {"grid": [3, 4], "cells": [[0, 1], [2, 3]]}

    clock = iter(range(1000))
    monkeypatch.setattr(runner.time, "perf_counter", lambda: float(next(clock)))
    model, cfg = attnviz.load_model("se_tiny")
    images = [to_pil(torch.rand(3, 32, 32)) for _ in range(6)]
    ckpt = interrupted_checkpoint(
        model, images, stop_at=3, preprocess=cfg, batch_size=2, progress=False,
        checkpoint=tmp_path, checkpoint_every=1,
    )  # fmt: skip
    meta, _ = read_checkpoint(ckpt)
    assert 0 < meta["seconds"] < 1000


def test_supported_module_types_of_given_adapters():
    from attnviz.capture.registry import registered_adapters, supported_module_types

    adapters = list(registered_adapters().values())
    every = supported_module_types()
    assert every == sorted(a.module_type for a in adapters) and len(every) > 20
    two = [SimpleNamespace(module_type="b.B"), SimpleNamespace(module_type="a.A")]
    assert supported_module_types(two) == ["a.A", "b.B"]


@pytest.mark.parametrize("split", [True, False])
def test_sk_branch_kernels_record_whether_the_input_is_split(split):
    from timm.layers import SelectiveKernel

    from attnviz.analysis.scale_sweep import _branch_kernels
    from attnviz.capture import find_sites

    model = nn.Sequential(SelectiveKernel(8, 8, kernel_size=[3, 5], split_input=split))
    (site,) = find_sites(model)
    kernels, got = _branch_kernels(model, site)
    assert got is split and len(kernels) == 2


def test_queries_beside_another_analysis_write_their_own_subfolder(cli, tmp_path):
    """An output folder that holds an excitation result: ``attnviz queries`` writes its
    result, figures and viewer under ``OUT/query_independence/`` and leaves the other alone."""
    from attnviz.analysis.excitation import ExcitationProfileResult, excitation_profile
    from attnviz.data import ShapesDataset, write_image_folder

    images = write_image_folder(ShapesDataset(1, size=64, seed=3), tmp_path / "img")
    model, cfg = attnviz.load_model("se_tiny")
    out = tmp_path / "out"
    excitation_profile(model, images, preprocess=cfg, progress=False).save(out / "result")
    before = (out / "result" / "manifest.json").read_bytes()
    r = cli("queries", "--model", "nl_tiny", "--images", images, "--out", out,
            "--no-progress", "--figure-images", "1")  # fmt: skip
    assert r.code == 0, r.err
    assert (out / "query_independence" / "result" / "manifest.json").is_file()
    assert (out / "query_independence" / "viewer" / "manifest.json").is_file()
    assert (out / "result" / "manifest.json").read_bytes() == before
    assert ExcitationProfileResult.load(out / "result").n_images == 10


def test_query_baselines_are_prepared_as_the_trained_run(cli, tmp_path):
    """``--input-size`` changes the preprocessing of the run: its baselines (replicate runs)
    get the same preprocessing, not the model's default (a 48 x 40 view, not 64 x 64)."""
    from attnviz.analysis.replicates import ReplicatesResult
    from attnviz.data import ShapesDataset, write_image_folder

    images = write_image_folder(ShapesDataset(1, size=64, seed=3), tmp_path / "img")
    r = cli("queries", "--model", "nl_tiny", "--images", images, "--out", tmp_path / "o",
            "--input-size", "48", "40", "--limit", "2", "--figure-images", "0",
            "--baseline", "untrained:1", "--no-progress")  # fmt: skip
    assert r.code == 0, r.err
    rep = ReplicatesResult.load(tmp_path / "o" / "replicates")
    trained = rep.trained.meta["run"]["preprocess"]
    assert list(trained["input_size"]) == [3, 48, 40]
    (baseline,) = rep.baselines.values()  # one untrained model
    assert baseline.meta["run"]["preprocess"] == trained


def test_the_sweep_renders_its_scenes_in_the_object_sizes_of_the_model_it_runs(
    cli, tmp_path, monkeypatch
):
    """``--shapes N``: the scenes' object sizes are those the model was trained on (its own
    manifest entry; every bundled model has the default range today, so a spy checks which
    model is asked for, and the range reaches the scenes)."""
    import attnviz.data.shapes as shapes
    from attnviz.analysis.scale_sweep import ScaleSweepResult

    asked = []

    def spy(model="sk_tiny"):
        asked.append(model)
        return (0.2, 0.7)

    monkeypatch.setattr(shapes, "train_object_size_range", spy)
    r = cli("sweep", "--model", "sk_tiny", "--shapes", "2", "--out", tmp_path / "o",
            "--no-figures", "--no-progress")  # fmt: skip
    assert r.code == 0, r.err
    assert asked == ["sk_tiny"]
    result = ScaleSweepResult.load(tmp_path / "o" / "result")
    assert result.meta["scenes"]["object_range"] == [0.2, 0.7]


def test_a_module_without_recorded_context_has_an_empty_one():
    """``site_context`` of a module no adapter recorded facts for is ``{}`` (its docstring),
    so an adapter's ``site_context(m).get(...)`` falls back to its default."""
    from attnviz.capture.registry import site_context

    assert site_context(nn.Linear(2, 2)) == {}
