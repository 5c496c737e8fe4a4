"""Class tests for plot and command mutants of the issue-26 sample (plot + commands).

Catches: a path that ignores part of its input or an option (the STN figure's batch count
must be the smallest of inputs / outputs / grids / ``max_images``, its axis limits must
widen to a grid that leaves the image; a user-chosen non-patching policy keeps its own
legend label and colour in the patching figure; the queries command must pass the model
name to its figures), text nothing else pins whole (every cell of ``markdown_table``: the
"(se X)" on the sampled JSD only, n/a, the one-hot flag) and the ``--out`` folder checks
(rerun into an existing folder, missing parents, refusal inside an image folder only).
Figures are checked by their artists against hand computations of grid lines and limits.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.colors import to_hex

import attnviz.plot
from attnviz.plot import modules as pm
from tests.test_plot_digest import _Ablation


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


# ----------------------------------------------------------------------------- STN batch count
@pytest.mark.parametrize(
    ("n_in", "n_grid", "n_out", "max_images", "rows"),
    [(3, 3, 2, 4, 2), (2, 3, 3, 4, 2), (3, 1, 3, 4, 1), (3, 3, 3, 2, 2), (3, 3, 3, 4, 3)],
)
def test_stn_rows_are_the_smallest_batch(n_in, n_grid, n_out, max_images, rows):
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.random((n_in, 3, 12, 20))).float()
    # image 0's grid runs off the right edge, image 1's off the left and top edges
    thetas = [[[1.2, 0.1, 0.25], [0.0, 0.6, -0.25]], [[0.5, 0.0, -0.6], [0.0, 1.3, -0.3]]]
    theta = torch.tensor([thetas[k % 2] for k in range(n_grid)])
    grid = F.affine_grid(theta, [n_grid, 3, 7, 9], align_corners=False)
    out = torch.from_numpy(rng.random((n_out, 3, 7, 9))).float()
    fig = pm.plot_stn_sampling(x, grid, out, step=3, max_images=max_images)
    assert len(fig.axes) == 2 * rows
    plural = "s" if rows != 1 else ""
    assert f"\n{rows} image{plural}; every 3th grid line" in fig._suptitle.get_text()
    # every row's polylines: rows 0, 3, 6 then columns 0, 3, 6, 8 of the grid, in pixels
    g = grid.numpy().astype(np.float64)
    for i in range(rows):
        u = ((g[i, ..., 0] + 1) * 20 - 1) / 2
        v = ((g[i, ..., 1] + 1) * 12 - 1) / 2
        want = [np.c_[u[r], v[r]] for r in (0, 3, 6)] + [
            np.c_[u[:, c], v[:, c]] for c in (0, 3, 6, 8)
        ]
        ax = fig.axes[2 * i]
        xlim = (min(-0.5, u.min() - 0.5), max(19.5, u.max() + 0.5))
        ylim = (max(11.5, v.max() + 0.5), min(-0.5, v.min() - 0.5))
        np.testing.assert_allclose(ax.get_xlim(), xlim, rtol=1e-6)
        np.testing.assert_allclose(ax.get_ylim(), ylim, rtol=1e-6)
        lines = ax.lines
        assert len(lines) == len(want)
        for ln, w in zip(lines, want):
            np.testing.assert_allclose(ln.get_xydata(), w, rtol=1e-6, atol=1e-6)
        shown = fig.axes[2 * i + 1].images[0].get_array()
        assert shown.shape[:2] == (7, 9)


# ----------------------------------------------------------------------------- patching legend
def test_patching_keeps_the_label_of_a_chosen_non_patch_policy():
    policies = ["patch:1.0x>2.0x", "zero", "patch:other>2.0x", "patch:other>"]
    result = _Ablation(policies, ["SK_1", "all"], "site")
    fig = attnviz.plot.plot_patching(result, policies=policies)
    leg = fig.axes[0].get_legend()
    assert [t.get_text() for t in leg.get_texts()] == [
        "from the 1.0x rendering of the same scene",
        "zero",
        "from another scene at 2.0x",
        "from another scene",
    ]
    assert leg.get_title().get_text() == "SK selection patched into 2.0x"
    tab = matplotlib.colormaps["tab10"]
    want = [to_hex(tab(k)) for k in (0, 7, 1, 2)]
    got = [to_hex(h.get_facecolor()) for h in leg.legend_handles]
    assert got == want


# ----------------------------------------------------------------------------- command figures
def test_query_figures_name_the_model_in_every_title():
    """The command passes the result's model to each figure (the maps' own meta has none)."""
    from attnviz.analysis.query_independence import QueryIndependenceResult
    from attnviz.commands.queries import query_figures

    rng = np.random.default_rng(0)
    result = QueryIndependenceResult(
        model="nl_tiny", sites=[], metrics=[], values={},
        map_site={"alias": "NL_1", "kind": "nl", "query_grid": [3, 5], "is_distribution": True},
        map_cells=np.array([[0, 1], [2, 4]]),
        map_images=rng.integers(0, 256, (1, 20, 32, 3), dtype=np.uint8),
        map_grid_maps=rng.random((1, 2, 3, 5)).astype(np.float32),
    )  # fmt: skip
    figures = query_figures(result)
    assert sorted(figures) == ["query_distances", "query_maps"]
    assert (
        figures["query_maps"]
        ._suptitle.get_text()
        .startswith("nl_tiny: attention maps of different query points at NL_1")
    )
    assert figures["query_distances"].axes[0].get_title() == (
        "nl_tiny: distances between query maps\nat NL_1, one image; no error bars"
    )


def test_output_folder_accepts_an_existing_folder_and_makes_missing_parents(tmp_path):
    """Rerunning into the same --out (and a first run into a new nested one) must work."""
    from attnviz.commands._common import output_folder

    nested = tmp_path / "a" / "b"
    for _ in range(2):  # the second entry finds the folder (and its lock file) there
        with output_folder(nested) as out:
            assert out.path == nested
            assert nested.is_dir()
    assert sorted(p.name for p in nested.iterdir()) == [".attnviz.lock"]


def test_markdown_table_whole_rows_with_the_se_on_the_jsd_cell_only():
    """Every cell of two rows: mean ± std, the sampled JSD's "(se X)" (and on no other
    metric), n/a for a missing value, the degeneracy cell with its one-hot flag."""
    import pandas as pd

    from attnviz.commands.queries import markdown_table

    rows = [
        {"model": "m", "site": "NL_1", "instantiation": "eg", "n_images": 5,
         "cos_input": 0.25, "cos_input_std": 0.125, "cos_output": 0.5, "cos_output_std": 0.0625,
         "cos_att": 0.75, "cos_att_std": 0.03125, "jsd_att": 0.0625, "jsd_att_std": 0.015625,
         "jsd_att_se": 0.0014, "row_entropy": 1.5, "eff_keys": 4.25, "argmax_keys": 3.0,
         "near_one_hot": False},
        {"model": "m", "site": "NL_2", "instantiation": "dot", "n_images": float("nan"),
         "cos_input": float("nan"), "cos_input_std": 0.5, "cos_output": 0.125,
         "cos_output_std": float("nan"), "cos_att": 1.0, "cos_att_std": 0.0, "jsd_att": 0.5,
         "jsd_att_std": 0.25, "jsd_att_se": 0.0, "row_entropy": 0.0625, "eff_keys": 1.0625,
         "argmax_keys": 1.0, "near_one_hot": True},
    ]  # fmt: skip
    lines = markdown_table(pd.DataFrame(rows)).splitlines()
    assert lines[1] == "|---|---|---|---|---|---|---|---|---|"
    assert lines[2:] == [
        "| m | NL_1 | eg | 5 | 0.250 ± 0.125 | 0.500 ± 0.062 | 0.750 ± 0.031 | "
        "0.062 ± 0.016 (se 1.4e-03) | 1.50 / 4.25 / 3 |",
        "| m | NL_2 | dot |  | n/a | 0.125 | 1.000 ± 0.000 | 0.500 ± 0.250 | "
        "0.06 / 1.06 / 1 near one-hot |",
    ]


def test_output_folder_refuses_only_a_folder_inside_an_image_folder(tmp_path):
    from attnviz.commands._common import OutputError, output_folder

    images = tmp_path / "images"
    images.mkdir()
    for bad in (images, images / "out"):
        with pytest.raises(OutputError, match="is inside the image folder"):
            with output_folder(bad, [images]):
                pass
    assert not (images / "out").exists()
    with output_folder(tmp_path / "images_out", [images]) as out:  # a sibling, name-prefixed
        assert out.path.is_dir()
