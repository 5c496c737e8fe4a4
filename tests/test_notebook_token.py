"""The token-attention notebook runs top to bottom with its committed outputs, shows each
figure once, and prints what the analysis API returns for the same calls (recomputed here)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import timm
import torch
from nbclient import NotebookClient
from test_notebook_outputs import assert_outputs_current

import attnviz

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "token_attention.ipynb"


@pytest.mark.slow
def test_token_attention_notebook(tmp_path):
    book = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in book.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert_outputs_current(NOTEBOOK, book)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # heads, rollout
    text = "".join(o.get("text", "") for o in outputs)
    # the same calls through the API
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=96).eval()
    images = [im for im, _ in attnviz.ShapesDataset(1, size=96, seed=7)]
    frame = attnviz.query_independence(model, images, progress=False).to_frame()
    first = frame[frame["site"].str.endswith("/mean")].iloc[0]
    assert (
        f"first layer, head mean: eff_keys {first['eff_keys_mean']:.3f} of 37, "
        f"cos_att {first['cos_att_mean']:.5f}"
    ) in text
    roll = attnviz.rollout(model, images, progress=False).to_frame()
    assert "10 images (0 skipped); 6x6 patch grid" in text
    for _, row in roll.iterrows():  # the summary's rows: token, n, prefix mass, entropy ...
        words = row["token"].split()
        line = next(x for x in text.splitlines() if x.split()[: len(words) + 1] == [*words, "10"])
        numbers = [float(v) for v in line.split()[len(words) + 1 :][:2]]
        assert numbers == pytest.approx(
            [row["prefix_mass_mean"], row["prefix_mass_std"]], abs=5e-5
        ), row["token"]
