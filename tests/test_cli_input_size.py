"""``--input-size H W`` builds a timm model sized at construction (``img_size``) for that size.

A ViT's position embeddings (and a Swin's windows) are made for one image size: built at its
own 224 px, a 32 x 48 input fails in the patch embedding. With ``--input-size`` the model is
built with ``img_size=(H, W)``; a convolutional network (no ``img_size`` argument) is built as
usual; a model whose constructor refuses the size is one error line.
"""

from __future__ import annotations

import timm
import torch

from attnviz.cli import main
from attnviz.models import load_model
from attnviz.report import load_result


def test_load_model_builds_a_timm_vit_for_a_non_square_input_size():
    plain, own = load_model("timm:deit_tiny_patch16_224")
    model, cfg = load_model("timm:deit_tiny_patch16_224", input_size=(32, 48))
    patch = model.patch_embed.patch_size
    assert cfg.input_size == (3, 32, 48) and own.input_size == (3, 224, 224)
    assert tuple(model.patch_embed.img_size) == (32, 48)
    assert tuple(model.patch_embed.grid_size) == (32 // patch[0], 48 // patch[1]) == (2, 3)
    assert model.pos_embed.shape[1] == model.num_prefix_tokens + 2 * 3
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 48)).shape == (1, 1000)
        try:  # the model built at its own size cannot take the input
            plain(torch.zeros(1, 3, 32, 48))
        except AssertionError as exc:
            assert "doesn't match model" in str(exc)
        else:
            raise AssertionError("a 224-px DeiT took a 32 x 48 input")


def test_a_convnet_without_img_size_is_built_as_usual():
    model, cfg = load_model("timm:resnet18", input_size=(40, 56))
    reference = timm.create_model("resnet18", pretrained=False)
    assert cfg.input_size == (3, 40, 56)
    assert [p.shape for p in model.parameters()] == [p.shape for p in reference.parameters()]


def test_queries_cli_runs_a_bare_timm_vit_name_at_the_input_size(tmp_path, shapes_folder):
    out = tmp_path / "q"
    args = ["queries", "--model", "deit_tiny_patch16_224", "--input-size", "64", "96"]
    args += ["--images", str(shapes_folder), "--limit", "1", "--no-progress"]
    assert main([*args, "--out", str(out), "--figure-images", "1", "--sites", "TOK_4_1a"]) == 0
    viewer = load_result(out / "viewer")
    assert tuple(viewer.head_maps.shape[-2:]) == (4, 6)  # the 64 x 96 input's patch grid


def test_a_size_the_constructor_refuses_is_one_error_line(tmp_path, shapes_folder, capsys):
    args = ["queries", "--model", "nest_tiny", "--input-size", "100", "100"]
    args += ["--images", str(shapes_folder), "--out", str(tmp_path / "q"), "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        "attnviz queries: error: timm:nest_tiny cannot be built for input 100x100"
    )
    assert len(err.splitlines()) == 1 and "Traceback" not in err
