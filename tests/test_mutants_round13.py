"""Tests for survivors of the thirteenth held-out round of the sampled mutation run (analysis,
runner and results, commands; TESTING.md, "Whole package by sampling"): the runner's default
batch, a checkpoint's fingerprint keys, Grad-CAM comparison for the label class asked for by
name, the squeeze of a channels-last input, per-class CDD spread, the view rollout keeps for
its figures, the ablation's decomposition of a later group, and the several-model ``attnviz
queries`` refusing an output folder inside its images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_mutants_round11 import interrupted_checkpoint

import attnviz


def test_the_runner_reads_16_images_per_batch_by_default():
    from attnviz.analysis.excitation import excitation_profile

    model, _ = attnviz.load_model("se_tiny")
    sizes = []
    handle = model.register_forward_hook(lambda m, a, o: sizes.append(len(a[0])))
    try:
        excitation_profile(model, torch.randn(20, 3, 32, 32), labels=[0] * 20, progress=False)
    finally:
        handle.remove()
    assert sizes == [16, 4]


def test_a_checkpoint_fingerprint_names_the_analysis_by_its_key(shapes_folder, tmp_path):
    """The fingerprint a checkpoint holds is a file format: ``analysis``, ``params``,
    ``sites`` ... by these names, so that a later version resumes it."""
    from attnviz.analysis.runner import read_checkpoint

    model, cfg = attnviz.load_model("se_tiny")
    ckpt = interrupted_checkpoint(
        model, shapes_folder, stop_at=2, preprocess=cfg, batch_size=4, progress=False,
        checkpoint=tmp_path, checkpoint_every=1,
    )  # fmt: skip
    fingerprint = read_checkpoint(ckpt)[0]["fingerprint"]
    assert fingerprint["analysis"] == "excitation_profile"
    assert {"params", "sites", "world_size", "rank", "items"} <= set(fingerprint)


def test_gradcam_comparison_for_the_label_class_by_name_equals_the_default():
    from attnviz.analysis.attribution import gradcam_comparison
    from attnviz.models.tiny import create_tiny

    torch.manual_seed(0)
    models = {n: create_tiny(n, num_classes=4).eval() for n in ("se_tiny", "cbam_tiny")}
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    by_name = gradcam_comparison(models, x, labels=[0, 3, 1], target="label", progress=False)
    default = gradcam_comparison(models, x, labels=[0, 3, 1], progress=False)
    assert by_name.targets.tolist() == [0, 3, 1] and by_name.target_source == "label"
    np.testing.assert_array_equal(by_name.gradcam, default.gradcam)
    with pytest.raises(ValueError, match="target"):
        gradcam_comparison(models, x, labels=[0, 3, 1], target="labels", progress=False)


def test_the_squeeze_of_a_channels_last_input_is_its_mean_per_channel():
    from attnviz.analysis.excitation import squeeze_of

    x = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(2))  # (B, H, W, C)
    np.testing.assert_allclose(squeeze_of(x, 4).numpy(), x.mean((1, 2)).numpy(), rtol=1e-6)
    assert squeeze_of(x.permute(0, 3, 1, 2), 4).shape == (2, 4)  # channels first alike
    assert squeeze_of(x, 7) is None


def test_the_view_rollout_keeps_is_the_one_the_model_saw(tmp_path):
    """PIL images through a crop: the figures' images are the transform's view (real colours,
    the centre crop), not the normalised input scaled to [0, 255]."""
    import timm

    from attnviz.analysis.rollout import rollout
    from attnviz.data.preprocess import preprocess_for

    torch.manual_seed(0)
    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=(64, 64), depth=1, num_classes=3
    ).eval()
    config = {"input_size": (3, 64, 64), "crop_pct": 1.0, "interpolation": "bilinear",
              "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "crop_mode": "center"}  # fmt: skip
    rng = np.random.default_rng(0)
    # values 40-199: a min-max scaled input would stretch them to 0-255
    arrays = [rng.integers(40, 200, (64, 80, 3), dtype=np.uint8) for _ in range(2)]
    images = [Image.fromarray(a) for a in arrays]
    result = rollout(vit, images, preprocess=config, map_images=2, progress=False)
    view = preprocess_for(config).view
    want = np.stack([np.asarray(view(im).convert("RGB")) for im in images])
    np.testing.assert_array_equal(result.images, want)
    np.testing.assert_array_equal(result.images, np.stack([a[:, 8:72] for a in arrays]))


def test_the_decomposition_reads_every_group_with_a_removal_and_a_mean():
    """A group without the ``mean`` policy is passed over; the groups after it still count."""
    from attnviz.analysis.ablation import AblationResult

    v = np.array([-0.2, -0.1, -0.3])
    result = AblationResult(
        changes={
            "first|constant|p_true": v,
            "second|constant|p_true": v,
            "second|mean|p_true": v / 2,
        },
        scopes={"first": "site", "second": "site"},
        groups={"first": ["A"], "second": ["B"]},
        original={"p_true": np.array([0.9, 0.8, 0.7])},
        n_images=3,
    )
    lines = result.decomposition()
    assert len(lines) == 2 and lines[1].startswith("  second: dP(target) removed -0.2000")
    assert not any("first" in line for line in lines)


def test_queries_of_several_models_refuse_an_output_folder_inside_the_images(cli, tmp_path):
    from attnviz.data import ShapesDataset, write_image_folder

    images = write_image_folder(ShapesDataset(1, size=64, seed=3), tmp_path / "img")
    r = cli("queries", "--model", "nl_tiny", "nl_tiny_dot", "--images", images,
            "--out", images / "out", "--no-progress")  # fmt: skip
    assert r.code != 0 and "--out" in r.err and "inside" in r.err
    assert not (images / "out").exists()


def test_the_sum_over_ranks_reduces_every_tensor_with_sum(monkeypatch):
    """Under a process group each tensor is summed over the ranks (a stand-in for two ranks
    holding the same values: the sum doubles them; any other reduction is refused)."""
    import torch.distributed as dist

    from attnviz import distributed

    seen = []

    def two_ranks(tensor, op=dist.ReduceOp.SUM):
        if op != dist.ReduceOp.SUM:
            raise AssertionError(f"reduced with {op}")
        seen.append(tensor)
        tensor.mul_(2)

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed.dist, "all_reduce", two_ranks)
    tensors = {"b": torch.tensor([1.0, 2.0]), "a": torch.tensor([3.0])}
    distributed.all_reduce_sum_(tensors)
    assert tensors["a"].tolist() == [6.0] and tensors["b"].tolist() == [2.0, 4.0]
    assert [t is tensors[k] for t, k in zip(seen, "ab")] == [True, True]  # in key order
