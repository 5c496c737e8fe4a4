"""Every error and warning the capture layer (``attnviz/capture/*.py``) gives on bad input,
pinned whole (``tests/golden/messages_capture.json``; regenerate with ``ATTNVIZ_UPDATE_GOLDEN=1``
after reviewing the diff).

The capture layer's messages name the valid choices (sites, kinds, policies, reductions) and
say what to do instead; a mutant that drops a clause, a choice or a number from one of them
leaves the exception type right, so a ``match=`` on a fragment would not see it. One case per
raise site: site selection, the cache, queries, kinds, reductions, the adapter registry, the
hooks' own checks (an adapter that does not fit, a tensor changed in place), interventions and
every policy.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from golden_testing import UPDATE, assert_matches_golden
from test_inplace_capture import MutatesItsSoftmax
from test_mutants_round10 import PositionSoftmax
from torch import nn

import attnviz
from attnviz.capture import Intercepted, Reading, register_adapter, unregister_adapter
from attnviz.capture import core as capture_core
from attnviz.capture.kinds import (
    Kind,
    full_map,
    get_kind,
    kinds_with_role,
    spatial_map,
    window_to_grid,
)
from attnviz.capture.policies import (
    Branch,
    Mean,
    Patch,
    Policy,
    PolicyContext,
    Shuffle,
    get_policy,
)
from attnviz.capture.reductions import resolve_reduction
from attnviz.capture.registry import Written
from attnviz.capture.site import Site
from attnviz.models import load_model

GOLDEN = Path(__file__).parent / "golden" / "messages_capture.json"


# ================================================================== modules with odd forwards
class Gate(nn.Module):
    """An SE-like gate: the attention is the output of ``gate`` (B, C, 1, 1)."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(self.fc(x.mean((2, 3), keepdim=True)))


class SkipsItsGate(Gate):
    """Its gate never runs: an adapter that reads ``gate`` does not fit it."""

    def forward(self, x):
        return x


class PairGate(nn.Module):
    """The gate submodule returns a pair, so its output cannot be written."""

    def __init__(self, c: int = 4):
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)
        self.gate = _Pair()

    def forward(self, x):
        g, _ = self.gate(self.fc(x.mean((2, 3), keepdim=True)))
        return x * g


class _Pair(nn.Module):
    def forward(self, z):
        return torch.sigmoid(z), z


class WrongView(Gate):
    """Registered with a write view that drops channels (not a reshape of the raw tensor)."""


class AdditiveMap(Gate):
    """Registered as kind ``additive``: a map of role 'other' that is not a distribution."""


class SoftmaxTwice(PositionSoftmax):
    """Calls softmax twice in one forward: its attention is not one call."""

    def forward(self, x):
        b, c, h, w = x.shape
        p = self.logits(x).reshape(b, h * w).softmax(-1)
        p = (p * 2).softmax(-1)
        return x + (x.reshape(b, c, -1) * p[:, None]).sum(-1)[:, :, None, None]


SoftmaxChangedInPlace = MutatesItsSoftmax  # changes its softmax's output in place after use


class UnreadAttention(nn.Module):
    """Attention-like by name, with no adapter: listing its model warns that it is not read."""

    def forward(self, x):
        return x.flatten(2).softmax(-1).reshape(x.shape)


def _last_softmax(m, taps, inputs, out, rows):
    return Reading(taps["softmax()"][-1].reshape(inputs[0].shape[0], 1, *inputs[0].shape[-2:]))


_ADAPTERS: dict[type, dict[str, Any]] = {
    Gate: {"kind": "se", "read": "gate"},
    SkipsItsGate: {"kind": "se", "read": "gate"},
    PairGate: {"kind": "se", "read": "fc", "write": Written("gate")},
    WrongView: {"kind": "se", "read": "gate",
                "write": Written("gate", view=lambda m, raw, inputs: raw[:, :1])},
    AdditiveMap: {"kind": "additive", "read": "gate", "transform": lambda t: t[:, 0],
                  "write": Written("gate")},
    SoftmaxTwice: {"kind": "gc", "read": Intercepted(("softmax",), _last_softmax),
                   "write": Written("softmax()")},
    SoftmaxChangedInPlace: {"kind": "gc", "read": Intercepted(("softmax",), _last_softmax)},
}  # fmt: skip


@pytest.fixture()
def adapters():
    for cls, how in _ADAPTERS.items():
        register_adapter(cls, **how)
    yield
    for cls in _ADAPTERS:
        unregister_adapter(cls)


def _wrap(module: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 1), module).eval()


@functools.cache
def _model(name: str) -> nn.Module:
    return load_model(name)[0]


def _x(h: int = 6, w: int = 5, b: int = 2) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(0))


# ======================================================================== calls that go wrong
def _captured(model: nn.Module, x: torch.Tensor | None = None, **kw):
    with attnviz.capture(model, **kw) as cache, torch.no_grad():
        model(_x() if x is None else x)
    return cache


def _intervened(model: nn.Module, policies, x: torch.Tensor | None = None, **kw):
    with attnviz.intervene(model, policies, **kw), torch.no_grad():
        return model(_x() if x is None else x)


def _twice(ctx) -> None:
    with ctx, ctx:
        pass


class _Truncating(Policy):
    name = "truncating"

    def apply(self, att, ctx):
        return att[:1]


def _site(kind: str, name: str = "layer1.0.attn", alias: str = "X_1_1", **info) -> Site:
    k = get_kind(kind)
    return Site(name, kind, alias, k.dims, "test.Module", "test", info=info)


def _ctx(kind: str, **kw) -> PolicyContext:
    return PolicyContext(_site(kind), get_kind(kind), **kw)


def _big_maps(monkeypatch) -> None:
    monkeypatch.setattr(capture_core, "FULL_MAP_WARN_BYTES", 100)
    _captured(_model("nl_tiny"), torch.randn(1, 3, 32, 32))


def _messages(monkeypatch) -> dict[str, Callable[[], Any]]:
    se, nl, sk, cbam = (_model(n) for n in ("se_tiny", "nl_tiny", "sk_tiny", "cbam_tiny"))
    plain = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())
    se_alias = attnviz.find_sites(se)[0].alias
    return {
        # -- site selection -----------------------------------------------------------------
        "select: compiled model": lambda: attnviz.capture(torch.compile(se)),
        "select: compiled model listed (warning)": lambda: attnviz.find_sites(torch.compile(se)),
        "select: no attention": lambda: attnviz.capture(plain),
        "select: no site of the kind": lambda: attnviz.capture(se, kinds="nl"),
        "select: unknown kind": lambda: attnviz.capture(se, kinds=["se", "squeeze"]),
        "select: unknown site": lambda: attnviz.capture(sk, sites=["SK_9_9"]),
        "select: unknown group": lambda: attnviz.capture(cbam, sites="stage:7"),
        "select: unread attention-like module (warning)": lambda: attnviz.find_sites(
            _wrap(UnreadAttention())
        ),
        # -- the cache ------------------------------------------------------------------------
        "cache: nothing captured for a key": lambda: _captured(se, sites=[se_alias])["SE_9"],
        "cache: unknown site": lambda: _captured(se).site("SE_9"),
        "cache: input not recorded": lambda: _captured(se).inputs(se_alias),
        "cache: output not recorded": lambda: _captured(se).outputs(se_alias),
        "cache: parts of an unknown site": lambda: _captured(se).parts("SE_9"),
        "cache: by_kind unknown kind": lambda: _captured(se).by_kind("squeeze"),
        # -- queries --------------------------------------------------------------------------
        "queries: a string": lambda: attnviz.capture(nl, queries="0,0"),
        "queries: empty": lambda: attnviz.capture(nl, queries=[]),
        "queries: not a pair": lambda: attnviz.capture(nl, queries=[(0, 0), (1, 2, 3)]),
        "queries: a bool coordinate": lambda: attnviz.capture(nl, queries=[(True, 0)]),
        "queries: a text coordinate": lambda: attnviz.capture(nl, queries=[(0, "1")]),
        "queries: a fractional coordinate": lambda: attnviz.capture(nl, queries=[(0, 1.5)]),
        "queries: a NaN coordinate": lambda: attnviz.capture(nl, queries=[(float("nan"), 0)]),
        "queries: no per-query site": lambda: attnviz.capture(se, queries=[(0, 0)]),
        "queries: outside the grid": lambda: _captured(
            nl, torch.randn(1, 3, 32, 48), queries=[(1, 99)]
        ),
        "capture: entered twice": lambda: _twice(attnviz.capture(se)),
        "capture: full maps past the threshold (warning)": lambda: _big_maps(monkeypatch),
        # -- adapters that do not fit ---------------------------------------------------------
        "hook: a tap that did not run": lambda: _captured(_wrap(SkipsItsGate())),
        "hook: an intercepted output changed in place": lambda: _captured(
            _wrap(SoftmaxChangedInPlace(4))
        ),
        "registry: read of another type": lambda: register_adapter(Gate, kind="se", read=3),
        "registry: unknown kind": lambda: register_adapter(Gate, kind="squeeze", read="gate"),
        # -- kinds and reductions -------------------------------------------------------------
        "kinds: unknown": lambda: get_kind("squeeze"),
        "kinds: unknown role": lambda: kinds_with_role("gate"),
        "kinds: role of a new kind": lambda: Kind("k", "K", ("batch",), full_map, "d", role="x"),
        "kinds: per-query kind without a query axis": lambda: Kind(
            "k", "K", ("batch", "key"), full_map, "d", role="query"
        ),
        "kinds: spatial map of two channels": lambda: spatial_map(torch.zeros(2, 2, 3, 5)),
        "kinds: full map not 4-D": lambda: full_map(torch.zeros(2, 3, 5)),
        "kinds: window index of another size": lambda: window_to_grid(
            torch.zeros(1, 4, 3), torch.zeros(4, 2, dtype=torch.long), (2, 3)
        ),
        "reduce: unknown": lambda: resolve_reduction("median"),
        "reduce: channel_mean without channels": lambda: _captured(nl, reduce="channel_mean"),
        "reduce: spatial_mean without spatial axes": lambda: _captured(se, reduce="spatial_mean"),
        # -- interventions --------------------------------------------------------------------
        "intervene: no policy": lambda: attnviz.intervene(se, {}),
        "intervene: not a mapping": lambda: attnviz.intervene(se, ["remove"]),
        "intervene: unknown site": lambda: attnviz.intervene(se, {"SE_9": "remove"}),
        "intervene: not writable": _not_writable,
        "intervene: role the policy does not take": lambda: attnviz.intervene(
            se, {"all": "branch:0"}
        ),
        "intervene: mean without reference": lambda: attnviz.intervene(se, {"all": "mean"}),
        "intervene: patch without source": lambda: attnviz.intervene(nl, {"nl": "patch"}),
        "intervene: two policies for one site": lambda: attnviz.intervene(
            se, {"all": "remove", se_alias: "constant:0.5"}
        ),
        "intervene: entered twice": lambda: _twice(attnviz.intervene(se, {"all": "remove"})),
        "intervene: a write view that is not a reshape": lambda: _intervened(
            _wrap(WrongView()), {"all": "remove"}
        ),
        "intervene: a policy of another shape": lambda: _intervened(se, {"all": _Truncating()}),
        "intervene: a written output that is not a tensor": lambda: _intervened(
            _wrap(PairGate()), {"all": "remove"}
        ),
        "intervene: a function called twice": lambda: _intervened(
            _wrap(SoftmaxTwice()), {"all": "uniform"}
        ),
        # -- policies ---------------------------------------------------------------------------
        "policy: not a string": lambda: get_policy(1.0),
        "policy: unknown": lambda: get_policy("zero"),
        "policy: an argument it does not take": lambda: get_policy("remove:1"),
        "policy: constant without a value": lambda: get_policy("constant"),
        "policy: constant of text": lambda: get_policy("constant:one"),
        "policy: shuffle seed of text": lambda: get_policy("shuffle:1.5"),
        "policy: shuffle of one image": lambda: Shuffle().apply(torch.zeros(1, 4), _ctx("se")),
        "policy: uniform on a map that is not a distribution": lambda: attnviz.intervene(
            _wrap(AdditiveMap()), {"all": "uniform"}
        ),
        "policy: branch without an index": lambda: get_policy("branch"),
        "policy: branch index below 0": lambda: get_policy("branch:-1"),
        "policy: branch index past the branches (check)": lambda: Branch(2).check(
            _site("sk", radix=2)
        ),
        "policy: branch index past the branches (apply)": lambda: Branch(3).apply(
            torch.zeros(2, 2, 4), _ctx("sk")
        ),
        "policy: mean without its reference": lambda: Mean().apply(torch.zeros(2, 4), _ctx("se")),
        "policy: mean of another shape": lambda: Mean().apply(
            torch.zeros(2, 4), _ctx("se", reference=torch.zeros(5))
        ),
        "policy: patch without its source": lambda: Patch().apply(torch.zeros(2, 4), _ctx("se")),
        "policy: patch of another shape": lambda: Patch().apply(
            torch.zeros(2, 4), _ctx("se", source=torch.zeros(3, 4))
        ),
    }


def _not_writable():
    from timm.layers.halo_attn import HaloAttn

    halo = _wrap(HaloAttn(4, 4, feat_size=(8, 8), block_size=4, halo_size=1, num_heads=2))
    return attnviz.intervene(halo, {"all": "uniform"})


def _message_of(call: Callable[[], Any]) -> str:
    """``Type: message`` of what the call raised, else of the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            call()
        except Exception as exc:  # the message is what is pinned
            text = str(exc.args[0]) if exc.args else ""
            return f"{type(exc).__name__}: {text}"
    given = [f"{w.category.__name__}: {w.message}" for w in caught]
    return " | ".join(given) if given else "no exception"


#: The golden keeps exactly these cases: the names of ``_messages``, filled by the test (the
#: calls need its fixtures).
CASES: list[str] = []


def test_every_error_message_of_the_capture_layer_is_pinned_whole(
    adapters, monkeypatch, golden_updates
):
    """Each bad input raises its exception type (or warns) with the whole reviewed message."""
    cases = _messages(monkeypatch)
    CASES[:] = cases
    got = {name: _message_of(call) for name, call in cases.items()}
    assert not [k for k, v in got.items() if v == "no exception"]
    if UPDATE:
        golden_updates.update(got)
        return
    assert_matches_golden(GOLDEN, got, "messages")


def test_no_case_leaves_a_hook_or_an_adapter_behind(adapters, monkeypatch):
    """The failing calls above leave every model they touched without hooks."""
    for call in _messages(monkeypatch).values():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.suppress(Exception):
                call()
    for name in ("se_tiny", "nl_tiny", "sk_tiny", "cbam_tiny"):
        for m in _model(name).modules():
            assert not (m._forward_hooks or m._forward_pre_hooks), (name, m)
    assert torch._C._len_torch_function_stack() == 0
