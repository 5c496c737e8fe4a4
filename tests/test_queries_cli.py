"""``attnviz queries``: the result equals the analysis run directly, one forward per batch,
bad images skipped, one-line errors, several models in one table."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from attnviz.analysis.query_independence import QueryIndependenceResult, query_independence
from attnviz.analysis.query_maps import grid_queries, query_maps
from attnviz.cli import main
from attnviz.models import create_tiny, load_model

FIGURES = ("query_maps", "query_distances")  # GCNet Table 1: summary.txt and the report


@pytest.fixture()
def weights(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    model = create_tiny("nl_tiny")
    for m in model.modules():  # the W_z BN scale starts at 0: give o_i something to measure
        if type(m).__name__ == "NonLocalBlock":
            torch.nn.init.normal_(m.W_z[1].weight, 0.0, 1.0)
    path = tmp_path / "nl_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _write_images(root, n: int, shape=(70, 80, 3), seed: int = 0):
    root.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(root / f"img{i}.png")
    return root


@pytest.fixture()
def image_dir(tmp_path):
    root = _write_images(tmp_path / "images", 3)
    (root / "empty.png").write_bytes(b"")
    (root / "text.jpg").write_text("not an image")
    return root


def _by_hand(path, pre) -> torch.Tensor:
    """nl_tiny's evaluation input of a 70x80 image without attnviz or timm: resize the
    shorter side to 64 (the long side truncated: 73), centre 64x64 crop, normalise."""
    assert tuple(pre.input_size) == (3, 64, 64) and pre.crop_pct == 1.0
    img = Image.open(path).convert("RGB").resize((73, 64), Image.BILINEAR).crop((4, 0, 68, 64))
    arr = (np.asarray(img, np.float64) / 255.0 - np.array(pre.mean)) / np.array(pre.std)
    return torch.from_numpy(arr).permute(2, 0, 1).float()


def test_queries_command_writes_result_figures_and_summary(tmp_path, weights, image_dir, capsys):
    out = tmp_path / "out"
    rc = main(
        ["queries", "--model", "nl_tiny", "--weights", str(weights), "--images", str(image_dir),
         "--out", str(out), "--n-queries", "3", "--no-progress", "--figure-images", "2",
         "--exact"]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "skipped empty.png: empty file" in printed
    assert "skipped text.jpg: not an image" in printed
    result = QueryIndependenceResult.load(out / "result")
    manifest = json.loads((out / "result" / "manifest.json").read_text())
    reasons = {s["file"]: s["reason"] for s in manifest["skipped"]}
    assert reasons == {"empty.png": "empty file", "text.jpg": "not an image"}
    assert result.ids == ["img0.png", "img1.png", "img2.png"] and result.n_images == 3
    assert manifest["model"] == "nl_tiny" and manifest["meta"]["run"]["n_images"] == 3
    assert manifest["meta"]["params"]["exact"] is True and (result.jsd_se == 0).all()
    assert (out / "summary.txt").read_text() == result.summary().rstrip() + "\n"
    assert result.summary().splitlines()[0] in printed
    # the same analysis run directly on the same images, prepared by hand
    model, pre = load_model("nl_tiny", weights=weights)
    xs = torch.stack([_by_hand(image_dir / f"img{i}.png", pre) for i in range(3)])
    direct = query_independence(model, xs, exact=True, progress=False)  # as --exact
    frame = pd.read_csv(out / "result" / "statistics.csv")
    assert list(frame["site"]) == ["NL_3_2"] and int(frame.loc[0, "n_images"]) == 3
    for m in ("cos_input", "cos_output", "cos_att", "jsd_att"):
        np.testing.assert_allclose(result.values[m], direct.values[m], atol=1e-5)
        assert frame.loc[0, f"{m}_mean"] == pytest.approx(direct.values[m][:, 0].mean(), abs=1e-5)
    # the figure's maps: 3 evenly spread query cells of the first 2 images, as query_maps
    maps = result.query_maps()
    assert len(maps) == 2 and maps[0].n_queries == 3
    cells = grid_queries((16, 16), 3)
    for j, kept in enumerate(maps):
        np.testing.assert_array_equal(kept.query_cells, cells)
        one = query_maps(model, xs[j], queries=cells, query_space="cell")
        np.testing.assert_allclose(kept.grid_maps, one.grid_maps, atol=1e-5)
    listed = json.loads((out / "figures" / ".attnviz-figures.json").read_text())
    assert sorted(listed) == sorted(f"{n}.{e}" for n in FIGURES for e in ("png", "svg"))
    for name in listed:
        assert (out / "figures" / name).stat().st_size > 1000
    assert (out / "viewer" / "manifest.json").is_file()  # every query's maps, for the viewer
    assert not (out / "checkpoint").exists()
    assert (out / ".attnviz.lock").read_text() == ""  # kept, released (issue 23)


def test_queries_command_runs_one_forward_per_batch(tmp_path, weights, monkeypatch):
    """Statistics and figure maps from the same forward: the old command ran three."""
    import attnviz.models

    images = _write_images(tmp_path / "five", 5, shape=(64, 64, 3), seed=1)
    batches: list[int] = []
    real_load = attnviz.models.load_model

    def counting_load(*args, **kwargs):
        model, config = real_load(*args, **kwargs)
        model.register_forward_hook(lambda m, inputs, output: batches.append(len(inputs[0])))
        return model, config

    monkeypatch.setattr(attnviz.models, "load_model", counting_load)
    out = tmp_path / "out"
    rc = main(
        ["queries", "--model", "nl_tiny", "--weights", str(weights), "--images", str(images),
         "--out", str(out), "--sites", "NL_3_2", "--batch-size", "2", "--n-queries", "4",
         "--figure-images", "3", "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    # 5 images, batch size 2: one forward per batch, then one of the first image for the HTML
    # viewer's maps of every query cell (OUT/viewer/)
    assert batches == [2, 2, 1, 1]
    result = QueryIndependenceResult.load(out / "result")
    assert result.n_images == 5 and [s["alias"] for s in result.sites] == ["NL_3_2"]
    assert len(result.query_maps()) == 3 and result.query_maps()[0].n_queries == 4
    assert (out / "figures" / "query_maps.png").exists()


def test_queries_command_reports_bad_input(tmp_path, weights, capsys):
    base = ["queries", "--model", "nl_tiny", "--weights", str(weights), "--no-progress"]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "broken.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "o"
    rc = main([*base, "--images", str(broken), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1  # found at run time
    assert err.startswith("attnviz queries: error: no usable image") and "broken.png" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not [p for p in ("result", "figures", "summary.txt") if (out / p).exists()]

    out = tmp_path / "o2"
    rc = main([*base, "--images", str(tmp_path / "missing"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("attnviz queries: error: ") and "missing" in err
    assert len(err.strip().splitlines()) == 1
    assert not [p for p in ("result", "figures", "summary.txt") if (out / p).exists()]

    # bad usage, found from the arguments alone: exit 2 before any work or output folder
    good = tmp_path / "good"
    good.mkdir()
    out = tmp_path / "o3"
    rc = main([*base, "--images", str(good), "--out", str(out), "--n-queries", "17"])
    err = capsys.readouterr().err
    assert rc == 2 and "attnviz queries: error: --n-queries 17" in err
    rc = main(["queries", "--model", "nl_tiny", "nl_tiny_dot", "--weights", str(weights),
               "--images", str(good), "--out", str(out)])  # fmt: skip
    assert rc == 2 and "--weights needs a single --model" in capsys.readouterr().err
    for old in (["--queries", "3"], ["--n-queries", "0"]):  # --queries is now --n-queries
        with pytest.raises(SystemExit) as exit_:
            main([*base, "--images", str(good), "--out", str(out), *old])
        assert exit_.value.code == 2
        assert old[0] in capsys.readouterr().err
    assert not out.exists()


def test_several_models_give_one_table_beside_the_paper(tmp_path, image_dir, capsys):
    from attnviz.models import bundled_models

    missing = {"nl_tiny", "nl_tiny_dot"} - set(bundled_models())
    assert not missing, f"bundled checkpoints missing: {sorted(missing)}"
    out = tmp_path / "multi"
    rc = main(
        ["queries", "--model", "nl_tiny", "--model", "nl_tiny_dot", "--images", str(image_dir),
         "--out", str(out), "--limit", "3", "--no-progress", "--figure-images", "1"]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out / "table1.csv")
    assert list(table["model"]) == ["nl_tiny", "nl_tiny_dot", "GCNet paper"]
    assert list(table["instantiation"]) == ["embedded_gaussian", "dot_product", "embedded_gaussian"]
    assert np.isnan(table.loc[1, "jsd_att"]) and not np.isnan(table.loc[0, "jsd_att"])
    for name in ("nl_tiny", "nl_tiny_dot"):
        per_model = pd.read_csv(out / name / "result" / "statistics.csv")
        assert per_model.loc[0, "cos_att_mean"] == pytest.approx(
            table.loc[table["model"] == name, "cos_att"].item()
        )
        result = QueryIndependenceResult.load(out / name / "result")
        # --limit takes the first 3 files: empty.png (skipped), img0.png and img1.png
        assert result.model == name and result.ids == ["img0.png", "img1.png"]
        assert result.skipped == [("empty.png", "empty file")]
        assert (out / name / "summary.txt").read_text() == result.summary().rstrip() + "\n"
        assert (out / name / "figures" / "query_maps.svg").stat().st_size > 1000
    md = (out / "table1.md").read_text()
    assert "| nl_tiny_dot | NL_3_2 | dot_product | 2 |" in md and "| n/a |" in md
    assert "| GCNet paper |" in md and "0.402" in md
    assert md in printed
    # the degeneracy beside the statistics: entropy and effective keys only for distributions
    assert "row entropy (nats) / eff. keys / argmax keys" in md
    assert table.loc[0, "eff_keys"] >= 1 and np.isnan(table.loc[1, "eff_keys"])
    assert table.loc[1, "argmax_keys"] >= 1
    assert bool(table.loc[0, "near_one_hot"]) == (table.loc[0, "eff_keys"] < 2)
