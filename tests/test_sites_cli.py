"""``attnviz sites``: names, kinds, aliases and captured shapes."""

from __future__ import annotations

import json

import torch

from attnviz.cli import main


def test_sites_json_for_a_timm_model(capsys):
    assert main(["sites", "skresnet18", "--input-size", "64", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["input_size"] == [3, 64, 64]
    rows = {r["alias"]: r for r in out["sites"]}
    assert len(rows) == 8
    assert rows["SK_3_1"]["name"] == "layer2.0.conv1"
    assert rows["SK_3_1"]["kind"] == "sk"
    assert rows["SK_3_1"]["shape"] == [1, 2, 128]
    assert rows["SK_5_2"]["dims"] == ["batch", "branch", "channel"]


def test_sites_table_for_a_nonlocal_model(capsys):
    assert main(["sites", "timm:resnet18", "--input-size", "64", "64"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("attnviz sites: error: ") and "has no attention module" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["sites", "timm:gcresnet33ts", "--input-size", "64", "64"]) == 0
    out = capsys.readouterr().out
    assert "10 attention sites" in out
    assert "GC_2_1" in out and "stages.0.0.attn" in out and "1x16x16" in out


def test_sites_of_a_bundled_model(capsys):
    assert main(["sites", "nl_tiny", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    kinds = {r["kind"] for r in out["sites"]}
    assert kinds == {"nl"}
    (row,) = out["sites"]
    n = row["shape"][1]
    assert row["shape"] == [1, n, n] and n >= 256


def test_own_input_size_from_the_pretrained_config(capsys):
    assert main(["sites", "halonet26t", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["input_size"] == [3, 256, 256] and out["unread"] == {}
    rows = {r["alias"]: r for r in out["sites"]}
    assert list(rows) == ["HALO_4_2", "HALO_5_1", "HALO_5_2"]
    assert rows["HALO_4_2"]["shape"] == [1, 8, 256, 144]
    assert rows["HALO_5_1"]["dims"] == ["batch", "head", "query", "window_key"]


def test_a_size_the_model_cannot_take_is_refused_with_the_size_it_needs(capsys):
    for args in (
        ["halonet26t", "--input-size", "64", "64"],
        ["--model", "botnet26t_256", "--input-size", "224", "224"],
    ):
        assert main(["sites", *args]) == 1
        err = capsys.readouterr().err
        assert err.startswith("attnviz sites: error: ") and "256x256" in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


class PixelAttention(torch.nn.Module):
    """A made-up attention no adapter reads: a softmax over positions, applied as a gate."""

    def __init__(self, channels: int):
        super().__init__()
        self.logits = torch.nn.Conv2d(channels, 1, 1)

    def forward(self, x):
        b, _, h, w = x.shape
        return x * self.logits(x).flatten(1).softmax(-1).view(b, 1, h, w) * (h * w)


def unread_model() -> torch.nn.Module:
    """For ``python:test_sites_cli:unread_model``: one SE site, two unread modules."""
    from attnviz.blocks import SEBlock

    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), SEBlock(8), PixelAttention(8), PixelAttention(8)
    )


def test_unread_attention_modules_are_named(capsys):
    spec = "python:test_sites_cli:unread_model"
    assert main(["sites", spec, "--input-size", "16", "16"]) == 0
    out = capsys.readouterr().out
    assert "1 attention sites" in out and "SE_1" in out
    assert "2 PixelAttention modules are not read (no adapter): 2, 3" in out
    assert "register_adapter(PixelAttention" in out


def test_modules_without_attention_weights_are_listed_with_the_reason(capsys):
    # CSATv2's SpatialTransformerBlock is declared not attention: its softmax runs over the batch
    assert main(["sites", "csatv2", "--input-size", "128", "128"]) == 0
    out = capsys.readouterr().out
    assert "4 attention sites" in out and "TOK_5_7" in out
    assert "14 SpatialTransformerBlock modules not read: no attention weights (its softmax " in out
    assert "not read (no adapter)" not in out


def test_unknown_model_is_a_clear_error(capsys):
    assert main(["sites", "no_such_model_xyz"]) == 2
    err = capsys.readouterr().err
    assert "no_such_model_xyz" in err and "Traceback" not in err
