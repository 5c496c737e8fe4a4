"""Tests written for the mutation survivors of attnviz.models and attnviz.data (issue 26, item 2):
skip reasons and labels users read, manifest fall-backs, baselines, loaders' preprocessing
configs (timm, torchvision from a cached checkpoint, a bundled model with a new head), the hub
probe, the optimiser's weight-decay groups and the training loop's seeded augmentation."""

from __future__ import annotations

import argparse
import socket

import numpy as np
import pytest
import torch
from torch import nn

from attnviz.data import images as images_mod
from attnviz.data.scene_controls import _contrast_matched, content_control_text
from attnviz.data.shapes import train_object_size_range
from attnviz.models import loading
from attnviz.models.baselines import BaselineError, parse_baseline, untrained
from attnviz.models.train import default_out, make_optimizer


# --------------------------------------------------------------------------- data
def test_missing_file_reason_is_the_documented_text(tmp_path):
    image, reason = images_mod.load_image(tmp_path / "nope.png")
    assert image is None and reason == "missing file"


@pytest.mark.parametrize(
    ("exc", "reason"),
    [(FileNotFoundError, "missing file"), (PermissionError, "permission denied")],
)
def test_file_that_vanishes_between_stat_and_open_is_skipped(tmp_path, monkeypatch, exc, reason):
    """A file removed (or its permission changed) after the size check: the same reasons."""
    path = tmp_path / "gone.png"
    path.write_bytes(b"x" * 64)

    def vanished(*args, **kwargs):
        raise exc(2, "raced", str(path))

    monkeypatch.setattr(images_mod.Image, "open", vanished)
    assert images_mod.load_image(path) == (None, reason)


@pytest.mark.parametrize(
    ("scale", "label"), [(2.0, "2.0x"), (3.0, "3.0x"), (1.5, "1.5x"), (2.25, "2.25x")]
)
def test_content_control_text_names_the_scale_with_one_decimal_when_whole(scale, label):
    text = content_control_text("contrast_matched", scale)
    assert text == f"the 1.0x view with the {label} view's global mean and std"


def test_contrast_matched_sets_the_target_mean_and_std():
    rng = np.random.default_rng(0)
    view_1 = np.clip(rng.normal(150, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
    view_s = np.clip(rng.normal(90, 45, (32, 32, 3)), 0, 255).astype(np.uint8)
    out = _contrast_matched(view_1, view_s).astype(np.float64)
    b = view_s.astype(np.float64)
    assert abs(out.mean() - b.mean()) < 0.5 and abs(out.std() - b.std()) < 0.5
    # an affine map of view_1's values: the order of the pixels is kept
    a = view_1.astype(np.float64).ravel()
    assert np.corrcoef(a, out.ravel())[0, 1] > 0.99


def test_train_object_size_range_falls_back_to_the_training_sets_scale_range(monkeypatch):
    from attnviz.data import assets

    manifest = {"models": {"m": {"train_data": {"scale_range": [0.2, 0.6]}}, "e": {}}}
    monkeypatch.setattr(assets, "read_manifest", lambda *a, **k: manifest)
    assert train_object_size_range("m") == (0.2, 0.6)
    assert train_object_size_range("e") == (0.15, 0.75)  # neither: ShapesDataset's default


# --------------------------------------------------------------------------- baselines
def test_parse_baseline_accepts_one_seed():
    assert parse_baseline("untrained:1") == ("untrained", 1)
    with pytest.raises(BaselineError, match=r"N must be a whole number >= 1"):
        parse_baseline("untrained:0")


def test_untrained_copy_resets_batchnorm_running_statistics():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    bn = model[1]
    with torch.no_grad():
        bn.running_mean.fill_(5.0)
        bn.running_var.fill_(7.0)
    bn.num_batches_tracked.fill_(11)
    fresh = untrained(model, 0)[1]
    assert torch.equal(fresh.running_mean, torch.zeros(4))
    assert torch.equal(fresh.running_var, torch.ones(4))
    assert int(fresh.num_batches_tracked) == 0
    assert torch.equal(bn.running_mean, torch.full((4,), 5.0))  # the trained model is untouched


class _RunningMean(nn.Module):
    """A user's normalisation with running statistics and no parameters (so no
    ``reset_parameters``): only ``reset_running_stats`` restores its initial state."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(3))

    def reset_running_stats(self) -> None:
        self.mean.zero_()

    def forward(self, x):
        return x - self.mean


def test_untrained_copy_resets_running_statistics_of_any_module():
    model = nn.Sequential(nn.Linear(3, 3), _RunningMean())
    model[1].mean.fill_(2.0)
    assert torch.equal(untrained(model, 0)[1].mean, torch.zeros(3))


def test_tiny_resnet_needs_four_stages():
    from attnviz.models.tiny import TinyResNet

    with pytest.raises(ValueError, match=r"^TinyResNet has four stages: give four widths and"):
        TinyResNet(None, widths=(8, 16, 32))


# --------------------------------------------------------------------------- loaders
def test_hub_probe_reads_host_and_port_from_the_endpoint(monkeypatch):
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        assert loading._hub_unreachable(timeout=2.0) is None
    closed = f"http://127.0.0.1:{port}"  # the listener is gone: refused
    monkeypatch.setenv("HF_ENDPOINT", closed)
    reason = loading._hub_unreachable(timeout=2.0)
    assert reason is not None and reason.startswith(f"{closed} is unreachable (")


def test_bundled_model_with_a_new_head_keeps_the_backbone():
    from safetensors.torch import load_file

    from attnviz.data.assets import assets_dir, read_manifest

    model, _ = loading.load_model("se_tiny", num_classes=3)
    state = load_file(str(assets_dir() / read_manifest()["models"]["se_tiny"]["file"]))
    assert model.fc.out_features == 3
    for key, value in model.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, state[key]), key


def test_timm_config_takes_the_models_own_mean_and_std():
    from timm.models import get_pretrained_cfg_value

    _, cfg = loading.load_model("timm:test_vit")
    assert cfg.std == tuple(get_pretrained_cfg_value("test_vit", "std")) == (0.5, 0.5, 0.5)
    assert cfg.mean == tuple(get_pretrained_cfg_value("test_vit", "mean"))


def test_torchvision_pretrained_offline_without_a_cached_file_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    with pytest.raises(loading.PretrainedUnavailableError, match="torchvision:squeezenet1_1"):
        loading.load_model("torchvision:squeezenet1_1", pretrained=True)


def test_torchvision_pretrained_from_the_hub_cache_records_its_recipe(monkeypatch, tmp_path):
    """A checkpoint in torch.hub's cache (random weights here) loads offline; the config is the
    weights' own transforms (squeezenet1_1: resize 256, crop 224, bilinear)."""
    import torchvision

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    enum = torchvision.models.get_model_weights("squeezenet1_1").DEFAULT
    ref = torchvision.models.get_model("squeezenet1_1", weights=None)
    (tmp_path / "checkpoints").mkdir()
    torch.save(ref.state_dict(), tmp_path / "checkpoints" / enum.url.rsplit("/", 1)[-1])
    model, cfg = loading._load_torchvision("squeezenet1_1", None, True, None)
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in model.state_dict().items())
    assert cfg.interpolation == "bilinear" and cfg.resize_size == 256
    assert cfg.input_size == (3, 224, 224) and cfg.crop_pct == 224 / 256
    assert cfg.source == {
        "spec": "torchvision:squeezenet1_1",
        "weights": enum.url,
        "weights_sha256": None,
    }


def test_weights_file_with_a_non_tensor_value_is_refused(tmp_path):
    path = tmp_path / "mixed.pt"
    torch.save({"w": torch.zeros(2), "epoch": 3}, path)
    with pytest.raises(loading.WeightsError, match=r"does not hold a state dict"):
        loading.load_weights_file(path)


# --------------------------------------------------------------------------- training
def test_training_writes_where_the_loader_reads(monkeypatch):
    from attnviz.data.assets import assets_dir

    monkeypatch.delenv("ATTNVIZ_ASSETS", raising=False)
    assert default_out() == assets_dir()


def test_weight_decay_on_conv_and_linear_weights_only():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    lr, wd = 0.1, 0.5
    opt = make_optimizer(model, "sgd", lr=lr, weight_decay=wd)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    # SGD, Nesterov momentum 0.9, zero loss gradient: d = wd * p, buf = d, step = d + 0.9 * buf
    for name, p in model.named_parameters():
        expected = before[name] * (1 - lr * wd * 1.9) if p.ndim > 1 else before[name]
        assert torch.allclose(p.detach(), expected, atol=1e-7), name


def test_training_augmentation_draws_from_the_seeded_generator(
    monkeypatch, tmp_path, restore_torch_state
):
    from attnviz.models import train as train_mod

    seen = []
    original = train_mod.augment

    def spy(x, gen):
        seen.append(gen)
        return original(x, gen)

    monkeypatch.setattr(train_mod, "augment", spy)
    args = argparse.Namespace(
        arch="plain_tiny", epochs=1, seed=5, n_train=1, n_test=1, batch_size=10,
        optimizer="adamw", lr=3e-3, weight_decay=0.05, warmup=0.1, label_smoothing=0.1,
        threads=1, out=str(tmp_path), cache_dir=None,
    )  # fmt: skip
    train_mod.train(args)
    assert len(seen) == 1
    assert isinstance(seen[0], torch.Generator) and seen[0].initial_seed() == 5
