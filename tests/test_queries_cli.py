"""``attnviz queries``: statistics files equal the analysis run directly; bad images skipped."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from attnviz.analysis.query_independence import QueryIndependenceResult, query_independence
from attnviz.analysis.query_maps import prepare_image
from attnviz.cli import main
from attnviz.models import create_tiny, load_model


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


@pytest.fixture()
def image_dir(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        arr = rng.integers(0, 255, (70, 80, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / f"img{i}.png")
    (root / "empty.png").write_bytes(b"")
    (root / "text.jpg").write_text("not an image")
    return root


def test_queries_command_writes_statistics_and_figures(tmp_path, weights, image_dir, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "queries",
            "--model",
            "nl_tiny",
            "--weights",
            str(weights),
            "--images",
            str(image_dir),
            "--out",
            str(out),
            "--queries",
            "3",
            "--no-progress",
            "--figure-images",
            "2",
        ]
    )
    assert rc == 0
    captured = capsys.readouterr()
    assert "empty file" in captured.err and "not an image" in captured.err
    skipped = pd.read_csv(out / "skipped.csv")
    assert sorted(skipped["reason"]) == ["empty file", "not an image"]
    # the same analysis run directly on the same preprocessed images
    model, pre = load_model("nl_tiny", weights=weights)
    xs = [
        prepare_image(Image.open(image_dir / f"img{i}.png").convert("RGB"), pre)[0]
        for i in range(3)
    ]
    assert xs[0].shape == (3, 64, 64)
    direct = query_independence(model, xs, progress=False)
    frame = pd.read_csv(out / "statistics.csv")
    assert list(frame["site"]) == ["NL_3_2"] and int(frame.loc[0, "n_images"]) == 3
    for m in ("cos_input", "cos_output", "cos_att", "jsd_att"):
        assert frame.loc[0, f"{m}_mean"] == pytest.approx(direct.values[m][:, 0].mean(), abs=1e-9)
    payload = json.loads((out / "statistics.json").read_text())
    assert payload["sites"][0]["cos_att_mean"] == pytest.approx(frame.loc[0, "cos_att_mean"])
    assert QueryIndependenceResult.load(out / "result").n_images == 3
    for name in ("query_maps.png", "query_distances.png", "statistics_table.png"):
        assert (out / name).stat().st_size > 1000


def test_queries_command_reports_bad_input(tmp_path, weights):
    empty = tmp_path / "none"
    empty.mkdir()
    (empty / "broken.png").write_bytes(b"\x89PNG broken")
    rc = main(
        [
            "queries",
            "--model",
            "nl_tiny",
            "--weights",
            str(weights),
            "--images",
            str(empty),
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ]
    )
    assert rc == 2
    rc = main(
        [
            "queries",
            "--model",
            "nl_tiny",
            "--weights",
            str(weights),
            "--images",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ]
    )
    assert rc == 2
    assert not (tmp_path / "o").exists()


def test_several_models_give_one_table_beside_the_paper(tmp_path, image_dir):
    from attnviz.models import bundled_models

    missing = {"nl_tiny", "nl_tiny_dot"} - set(bundled_models())
    assert not missing, f"bundled checkpoints missing: {sorted(missing)}"
    out = tmp_path / "multi"
    rc = main(
        [
            "queries",
            "--model",
            "nl_tiny",
            "nl_tiny_dot",
            "--images",
            str(image_dir),
            "--out",
            str(out),
            "--limit",
            "2",
            "--no-progress",
            "--figure-images",
            "1",
        ]
    )
    assert rc == 0
    table = pd.read_csv(out / "table1.csv")
    assert list(table["model"]) == ["nl_tiny", "nl_tiny_dot", "GCNet paper"]
    assert list(table["instantiation"]) == ["embedded_gaussian", "dot_product", "embedded_gaussian"]
    assert np.isnan(table.loc[1, "jsd_att"]) and not np.isnan(table.loc[0, "jsd_att"])
    for name in ("nl_tiny", "nl_tiny_dot"):
        per_model = pd.read_csv(out / name / "statistics.csv")
        assert per_model.loc[0, "cos_att_mean"] == pytest.approx(
            table.loc[table["model"] == name, "cos_att"].item()
        )
    md = (out / "table1.md").read_text()
    assert "| nl_tiny_dot | NL_3_2 | dot_product | 2 |" in md and "| n/a |" in md
    assert "| GCNet paper |" in md and "0.402" in md
