"""A user's own attention module and kind: ``register_kind``, ``register_adapter`` with
``Computed`` / ``Reading`` / ``transform`` / ``applies`` / ``describe`` / ``meta`` /
``query_grid``. References are computed from each module's own weights."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import attnviz
from attnviz.capture import (
    KINDS,
    Computed,
    Kind,
    Reading,
    get_kind,
    query_kinds,
    register_adapter,
    register_kind,
    unregister_adapter,
)
from attnviz.capture.registry import registered_adapters


class StripGate(nn.Module):
    """A made-up attention: one sigmoid gate per image row, (B, H) -> applied as x * g[:, None,
    :, None]; ``logits`` is the raw (B, 1, H, 1) map before the sigmoid."""

    def __init__(self, c: int, enabled: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c, 1, 1)
        self.logits = nn.Identity()
        self.enabled = enabled

    def forward(self, x):
        g = torch.sigmoid(self.logits(self.conv(x).mean(3, keepdim=True)))
        return x * g if self.enabled else x


class PairAttention(nn.Module):
    """Per-query attention over a coarser key grid (keys pooled 2x2 across, 1x across W)."""

    def __init__(self, c: int):
        super().__init__()
        self.q = nn.Conv2d(c, 4, 1)
        self.k = nn.Conv2d(c, 4, 1)

    def keys(self, x):
        return nn.functional.avg_pool2d(self.k(x), (2, 1))

    def forward(self, x):
        b, c, h, w = x.shape
        q = self.q(x).flatten(2).transpose(1, 2)  # (B, N, 4)
        k = self.keys(x).flatten(2)  # (B, 4, Nk)
        att = torch.softmax(q @ k, dim=-1)
        v = nn.functional.avg_pool2d(x, (2, 1)).flatten(2).transpose(1, 2)  # (B, Nk, C)
        return x + (att @ v).transpose(1, 2).reshape(b, c, h, w)


ROW_KIND = Kind(
    "row_gate",
    "ROW",
    ("batch", "row"),
    lambda t: t.reshape(t.shape[0], -1),
    "one sigmoid gate per image row (B, H)",
    role="other",
)


@pytest.fixture()
def registered():
    before = dict(KINDS)
    register_kind(ROW_KIND)
    register_adapter(
        StripGate,
        kind="row_gate",
        read="logits",
        transform=torch.sigmoid,
        applies=lambda m: m.enabled,
        describe=lambda m: {"rows": "image rows", "channels": m.conv.in_channels},
        meta=lambda m, inputs, output: {"height": int(inputs[0].shape[2])},
    )

    def compute(module, taps, inputs, output, rows):
        x = inputs[0]
        q = module.q(x).flatten(2).transpose(1, 2)
        k = module.keys(x)
        kh, kw = k.shape[-2:]
        if rows is not None:
            q = q[:, rows]
        att = torch.softmax(q @ k.flatten(2), dim=-1)
        # no query_grid here: capture adds the adapter's query_grid(module, inputs)
        return Reading(att, {"key_grid": (int(kh), int(kw)), "out": tuple(output.shape)}, True)

    register_adapter(
        PairAttention,
        kind="nl",
        read=Computed(taps=(), compute=compute),
        describe=lambda m: {"instantiation": "user pair attention"},
        query_grid=lambda m, inputs: (int(inputs[0].shape[2]), m.q.out_channels + 1),
    )
    yield
    unregister_adapter(StripGate)
    unregister_adapter(PairAttention)
    KINDS.clear()
    KINDS.update(before)


def _model(enabled: bool = True) -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), StripGate(6, enabled), PairAttention(6)
    ).eval()


def test_register_kind_makes_a_new_kind_known(registered):
    assert get_kind("row_gate") is ROW_KIND
    assert "row_gate" not in query_kinds()
    with pytest.raises(ValueError, match="unknown attention kind"):
        get_kind("no_such_kind")
    with pytest.raises(ValueError, match="role"):
        Kind("bad", "BAD", ("batch",), lambda t: t, "bad role", role="nonsense")
    with pytest.raises(ValueError, match="query"):
        Kind("bad", "BAD", ("batch", "key"), lambda t: t, "per-query without axis", role="query")


def test_find_sites_uses_describe_and_applies(registered):
    sites = attnviz.find_sites(_model())
    assert [(s.name, s.kind, s.alias) for s in sites] == [("1", "row_gate", "ROW_1"),
                                                          ("2", "nl", "NL_1")]  # fmt: skip
    assert sites[0].info["channels"] == 6 and sites[0].family == "user"
    assert sites[0].dims == ("batch", "row")
    assert sites[1].info["instantiation"] == "user pair attention"
    # applies=False vetoes the module
    assert [s.kind for s in attnviz.find_sites(_model(enabled=False))] == ["nl"]


def test_transform_meta_and_computed_reading_against_the_weights(registered):
    model = _model()
    x = torch.randn(2, 3, 6, 5)
    with attnviz.capture(model) as cache, torch.no_grad():
        model(x)
    with torch.no_grad():
        f = model[0](x)
        after_gate = model[1](f)
    gate, pair = model[1], model[2]
    # row gate: sigmoid(mean_w(conv(f))) per row, from the conv's weights
    w, b = gate.conv.weight.detach()[0, :, 0, 0].double(), gate.conv.bias.detach().double()
    logits = np.einsum("c,bchw->bhw", w.numpy(), f.double().numpy()).mean(2) + b.numpy()
    np.testing.assert_allclose(cache["1"].numpy(), 1 / (1 + np.exp(-logits)), atol=1e-6)
    assert cache.meta["1"] == {"height": 6}
    # pair attention: softmax_j(q_i . k_j), keys averaged over 2 rows: key grid 3x5
    q = np.einsum("oc,bchw->bohw", pair.q.weight.detach()[:, :, 0, 0].numpy(), after_gate.numpy())
    q += pair.q.bias.detach().numpy()[None, :, None, None]
    k = np.einsum("oc,bchw->bohw", pair.k.weight.detach()[:, :, 0, 0].numpy(), after_gate.numpy())
    k += pair.k.bias.detach().numpy()[None, :, None, None]
    k = (k[:, :, 0::2] + k[:, :, 1::2]) / 2  # (B, 4, 3, 5)
    logits = np.einsum("bon,bom->bnm", q.reshape(2, 4, -1), k.reshape(2, 4, -1))
    att = np.exp(logits - logits.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    np.testing.assert_allclose(cache["2"].numpy(), att, atol=1e-5)
    assert cache.meta["2"]["key_grid"] == (3, 5) and cache.meta["2"]["query_grid"] == (6, 5)
    assert cache.meta["2"]["out"] == (2, 6, 6, 5)  # compute got the module's output
    # queries: rows_selected=True readings keep exactly the asked rows
    with attnviz.capture(model, sites=["NL_1"], queries=[(5, 4), (0, 1)]) as cache2:
        with torch.no_grad():
            model(x)
    np.testing.assert_allclose(cache2["2"].numpy(), att[:, [5 * 5 + 4, 1]], atol=1e-5)


def test_query_maps_on_the_user_site_use_its_key_grid(registered):
    from attnviz.analysis.query_maps import query_maps

    model = _model()
    x = torch.randn(3, 6, 5)
    res = query_maps(model, x, queries=[(4, 1)], query_space="cell", site="NL_1")
    assert res.grid_maps.shape == (1, 3, 5)
    with attnviz.capture(model, sites=["NL_1"]) as cache, torch.no_grad():
        model(x[None])
    np.testing.assert_allclose(
        res.grid_maps[0], cache["2"][0, 4 * 5 + 1].reshape(3, 5).numpy(), atol=1e-6
    )


def test_register_adapter_validates_its_arguments(registered):
    with pytest.raises(TypeError, match="read must be"):
        register_adapter(StripGate, kind="row_gate", read=3)
    with pytest.raises(ValueError, match="unknown attention kind"):
        register_adapter(StripGate, kind="no_such_kind", read="logits")


def _imported_by_siblings() -> list[str]:
    """Adapter modules another adapter module imports from (they can be half imported)."""
    folder = Path(attnviz.__file__).parent / "capture" / "adapters"
    pattern = re.compile(r"^from \.([a-z]\w*) import", re.M)
    return sorted({m for f in folder.glob("*.py") for m in pattern.findall(f.read_text())})


@pytest.mark.subprocess
def test_any_adapter_module_can_be_imported_first():
    """Importing a built-in adapter module before anything else loads every family once: a
    family registering itself does not import the others while it is half imported."""
    modules = _imported_by_siblings()
    assert {"timm_vit", "timm_swin", "timm_cait"} <= set(modules)
    code = (
        "import sys\n"
        "from importlib import import_module\n"
        "import_module('attnviz.capture.adapters.' + sys.argv[1])\n"
        "from attnviz.capture.registry import registered_adapters\n"
        "print(len(registered_adapters()))\n"
    )
    counts = {}
    for m in modules:
        run = subprocess.run([sys.executable, "-c", code, m], capture_output=True, text=True)
        assert run.returncode == 0, f"importing {m} first: {run.stderr.strip().splitlines()[-1]}"
        counts[m] = int(run.stdout)
    assert len(set(counts.values())) == 1, counts
    assert counts[modules[0]] == len(registered_adapters())
