"""Mutation survivors of analysis/, the runner, distributed and the commands (issue 26, item 2).

Each test kills a class of bug a surviving mutant showed; every expected value is computed here
independently of the code under test."""

from __future__ import annotations

import argparse
import csv
import math
import re
import socket
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
import torch

from attnviz.models.tiny import create_tiny
from attnviz.results import Result


# ----------------------------------------------------------------------------- analysis
def test_ablation_summary_without_accuracy_uses_p_true():
    """A result whose originals carry no accuracy (no labels) still summarises on dP."""
    from attnviz.analysis.ablation import AblationResult

    rng = np.random.default_rng(0)
    changes = {f"g|zero|{m}": rng.normal(size=6) for m in ("p_true", "logit_true", "kl")}
    changes["g|zero|agreement"] = rng.random(6)
    p0 = rng.random(6)
    res = AblationResult(
        changes=changes, scopes={"g": "site"}, groups={"g": ["A"]}, original={"p_true": p0},
        n_images=6,
    )  # fmt: skip
    text = res.summary()
    assert text.startswith(f"Ablation on model: 6 images, original P(target) {p0.mean():.3f};")
    assert "accuracy" not in text.splitlines()[0]
    mean = changes["g|zero|p_true"].mean()
    assert f"g zero dp_true {mean:+.4f}" in text


def test_gradcam_comparison_layer_per_model_and_num_classes():
    """``layer={name: layer}`` picks each model's own layer; meta records the class count."""
    from attnviz.analysis.attribution import gradcam_comparison

    torch.manual_seed(0)
    models = {
        n: create_tiny(n, num_classes=5, zero_init_residual=False)
        for n in ("plain_tiny", "cbam_tiny")
    }
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    res = gradcam_comparison(
        models, x, layer={"plain_tiny": "layer3", "cbam_tiny": "layer4"}, keep_maps=1,
        progress=False,
    )  # fmt: skip
    assert res.layers == ["layer3", "layer4"]
    with torch.no_grad():
        grids = []
        for name, layer in (("plain_tiny", "layer3"), ("cbam_tiny", "layer4")):
            m = models[name].eval()
            feats = []
            h = m.get_submodule(layer).register_forward_hook(lambda _m, _a, o, f=feats: f.append(o))
            m(x)
            h.remove()
            grids.append(list(feats[0].shape[-2:]))
    assert res.gradcam_grids == grids and grids[0] != grids[1]
    assert res.meta["num_classes"] == 5  # tensor inputs: no class names to count instead


@pytest.fixture(scope="module")
def nl_model():
    torch.manual_seed(0)
    return create_tiny("nl_tiny", num_classes=3, zero_init_residual=False)


def test_query_maps_may_use_every_cell_of_the_grid(nl_model):
    """n_queries equal to the query grid's cell count is allowed (2x2 grid at 8 px)."""
    from attnviz.analysis.query_independence import query_independence

    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    res = query_independence(nl_model, x, n_queries=4, map_images=1, progress=False)
    maps = res.query_maps()[0]
    assert maps.n_queries == 4
    # the default metric is GCNet's (1 - cos) / 2, computed here by hand
    g = maps.rows().astype(np.float64)
    want = np.array(
        [[(1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) / 2 for b in g] for a in g]
    )
    np.fill_diagonal(want, 0.0)
    np.testing.assert_allclose(maps.pairwise_distances(), want, atol=1e-12)


@dataclass
class _Effects(Result):
    """A result that is only an effect table."""

    kind: ClassVar[str] = "test_effects_mutants"
    values: dict[str, float]

    def effects(self) -> pd.DataFrame:
        rows = [{"site": k, "effect": v, "se": 0.1, "n": 10} for k, v in self.values.items()]
        return pd.DataFrame(rows)

    def to_frame(self) -> pd.DataFrame:
        return self.effects()

    def summary(self) -> str:
        return self.to_frame().to_string()

    def _payload(self):
        return {}, {}, {"values": self.values}

    @classmethod
    def _restore(cls, manifest: dict[str, Any], arrays: dict[str, np.ndarray]):
        return cls(values=manifest["values"])


def test_replicates_two_seeds_and_one_seed_columns():
    """Two agreeing seeds make the sign hold; with one seed the s.d. is a float NaN."""
    from attnviz.analysis.replicates import ReplicatesResult

    two = ReplicatesResult(
        _Effects({"A": 0.5, "B": -0.2}), {"seed1": _Effects({"A": 0.3, "B": 0.1})}
    ).to_frame().set_index("site")  # fmt: skip
    assert two.loc["A", "seeds"] == 2 and bool(two.loc["A", "sign_holds"])
    assert not bool(two.loc["B", "sign_holds"])
    assert two.loc["A", "seed_sd"] == pytest.approx(np.std([0.5, 0.3], ddof=1))
    one = ReplicatesResult(_Effects({"A": 0.5, "B": -0.2})).to_frame()
    sd = one["seed_sd"].to_numpy()
    assert sd.dtype == np.float64 and np.isnan(sd).all()
    assert not one["sign_holds"].any()


@pytest.mark.parametrize(
    "grid, top_k",
    [(4, 0.75), ((2, 3), 0.6), (5, 1.0), ((4, 4), 0.2), (10, 0.5)],
)
def test_top_k_iou_chance_when_regions_must_overlap(grid, top_k):
    """Regions larger than half the grid always overlap: the exact hypergeometric mean."""
    from attnviz.analysis.stats import top_k_iou_chance

    n_cells = grid if isinstance(grid, int) else math.prod(grid)
    n = max(1, math.ceil(top_k * n_cells - 1e-9))
    want = sum(
        math.comb(n, x) * math.comb(n_cells - n, n - x) / math.comb(n_cells, n) * x / (2 * n - x)
        for x in range(0, n + 1)
    )
    assert top_k_iou_chance(grid, top_k) == pytest.approx(want, rel=1e-9)


# ----------------------------------------------------------------------------- runner, dist
def test_checkpoint_creates_missing_parent_folders(tmp_path):
    from attnviz.analysis.runner import State, _save_checkpoint, read_checkpoint

    path = tmp_path / "a" / "b" / "c" / "run.npz"
    _save_checkpoint(path, {"position": 3}, State())
    meta, _ = read_checkpoint(path)
    assert meta == {"position": 3}


def test_init_from_env_on_cuda_selects_nccl_and_the_local_device(monkeypatch):
    import torch.distributed as dist

    from attnviz import distributed

    calls: dict[str, Any] = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.update(device=i))
    monkeypatch.setattr(dist, "init_process_group", lambda backend: calls.update(backend=backend))
    assert distributed.init_from_env("cuda") is True
    assert calls == {"device": 1, "backend": "nccl"}
    calls.clear()
    assert distributed.init_from_env("cpu") is True
    assert calls == {"backend": "gloo"}


def test_shutdown_without_a_group_is_a_no_op_and_ends_a_group():
    import torch.distributed as dist

    from attnviz.distributed import shutdown

    assert not dist.is_initialized()
    shutdown()  # nothing to destroy: no error
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{port}")
    try:
        shutdown()
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- commands
def test_excitation_replicates_reuse_the_trained_result_and_the_seed(
    cli, shapes_folder, tmp_path, monkeypatch
):
    """--baseline runs the analysis once per baseline (the trained result is reused) with
    the same --seed."""
    import attnviz.analysis.excitation as exc

    seeds = []
    real = exc.excitation_profile

    def spy(*a, **kw):
        seeds.append(kw.get("seed"))
        return real(*a, **kw)

    monkeypatch.setattr(exc, "excitation_profile", spy)
    out = tmp_path / "out"
    r = cli(
        "excitation", "--model", "se_tiny", "--images", shapes_folder, "--out", out,
        "--limit", "4", "--permutations", "5", "--seed", "3", "--baseline", "untrained:1",
        "--no-progress",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert seeds == [3, 3]
    assert (out / "replicates").is_dir()


def test_compare_attribution_sites_message(cli, tmp_path):
    r = cli(
        "compare-attribution", "--model", "sk_tiny", "--model", "se_tiny", "--sites", "all",
        "--images", tmp_path, "--out", tmp_path / "out",
    )  # fmt: skip
    assert r.code == 2
    assert r.err.strip().endswith(
        "--sites selects the attention sites of one --model (its gates against Grad-CAM); "
        "the comparison across models reads no sites"
    )


def test_data_scale_range_reaches_the_dataset(cli, tmp_path):
    root = tmp_path / "d"
    r = cli(
        "data",
        "make-shapes",
        root,
        "--n-per-class",
        "2",
        "--size",
        "64",
        "--scale-range",
        "0.3",
        "0.32",
    )
    assert r.code == 0, r.err
    with open(root / "records.csv", newline="") as fh:
        scales = [float(row["scale"]) for row in csv.DictReader(fh)]
    assert len(scales) == int(re.search(r"wrote (\d+) images", r.out).group(1)) > 4
    assert all(0.3 - 1e-9 <= s <= 0.32 + 1e-9 for s in scales)


def test_queries_demo_prints_each_metric(tmp_path, monkeypatch, capsys):
    from attnviz.commands import queries
    from attnviz.data import ShapesDataset, write_image_folder

    images = write_image_folder(ShapesDataset(1, size=64, seed=5), tmp_path / "img")
    monkeypatch.setattr(queries, "DEMO_MODELS", ("nl_tiny",))
    text = queries.demo(tmp_path / "demo", images)
    table = pd.read_csv(tmp_path / "demo" / "table1.csv")
    row = table.iloc[0]
    want = "  ".join(
        f"{m}=n/a" if pd.isna(row[m]) else f"{m}={row[m]:.3f}" for m in queries_metrics()
    )
    assert f"  {row['model']:<16} {row['instantiation']:<18} {want}" in text.splitlines()
    # each model's query viewer, where the report finds it (one place: save_viewer)
    from attnviz.analysis.query_maps import QueryMapsResult
    from attnviz.report import VIEWER_DIR

    viewer = QueryMapsResult.load(tmp_path / "demo" / "nl_tiny" / VIEWER_DIR)
    assert viewer.meta["model"] == "nl_tiny" and len(viewer.maps) == len(viewer.query_cells) > 1


def queries_metrics() -> tuple[str, ...]:
    from attnviz.plot.queries import TABLE_METRICS

    return TABLE_METRICS


def test_markdown_table_default_three_digits():
    from attnviz.commands.queries import markdown_table

    table = pd.DataFrame(
        [
            {"model": "m", "site": "NL_1", "instantiation": "eg", "n_images": 2,
             "cos_input": 0.123456, "cos_output": 0.5, "cos_att": 0.98765, "jsd_att": 0.01234}
        ]
    )  # fmt: skip
    md = markdown_table(table)
    cells = [c.strip() for c in md.splitlines()[2].strip("|").split("|")]
    assert cells[4:8] == ["0.123", "0.500", "0.988", "0.012"]


def test_sites_failure_message_without_a_hint(cli, monkeypatch):
    from attnviz.commands import sites

    def broken(model, size):
        raise ValueError("boom at this size")

    monkeypatch.setattr(sites, "site_table", broken)
    r = cli("sites", "sk_tiny")
    assert r.code == 1
    line = r.err.strip().splitlines()[-1]
    assert re.search(r"sk_tiny cannot take input \d+x\d+ \(boom at this size\)$", line), line


def test_sweep_figure_item_without_usable_image(tmp_path):
    from attnviz.commands.sweep import _figure_item
    from attnviz.data import ShapesDataset, write_image_folder
    from attnviz.errors import AttnvizError

    images = write_image_folder(ShapesDataset(1, size=64, seed=1), tmp_path / "img")
    args = argparse.Namespace(figure_image="0", out=tmp_path / "out", max_pixels=10)
    with pytest.raises(AttnvizError, match=r"^no usable image for the Fig\. 3 views$"):
        _figure_item(args, images, None, (1.0,))


# ----------------------------------------------------------------------------- runner
def test_match_classes_leaves_an_unlabelled_source_alone():
    from types import SimpleNamespace

    from attnviz.analysis.runner import _match_classes

    source = SimpleNamespace(class_names=["ring", "disc"], labels=None)
    _match_classes(source, SimpleNamespace(classes=["disc", "ring"]))
    assert source.labels is None and source.class_names == ["ring", "disc"]
    labelled = SimpleNamespace(class_names=["disc", "ring"], labels=[1, 0])
    _match_classes(labelled, SimpleNamespace(classes=["ring", "disc"]))
    assert labelled.labels == [0, 1] and labelled.class_names == ["ring", "disc"]


def test_state_sum_default_is_float64():
    from attnviz.analysis.runner import State

    got = State().sum("missing", 1)
    assert got.dtype == np.float64 and got == 1.0
