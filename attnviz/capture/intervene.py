"""Writing attention: ``intervene(model, {site: policy})`` replaces what a module goes on to use.

The counterpart of :func:`attnviz.capture`, with the same site keys (module name, alias,
``stage:N``, a kind name, ``all``), the same safety (hooks registered on entry and removed on
exit, also when the forward raises; only the entering thread's forwards are changed; nothing
about the model is modified) and the same adapters: each adapter's ``writer`` says where its
attention lives, either a submodule output (replaced by a forward hook's return value) or one
call of a torch function inside the module (replaced by the torch-function interception that
capture also reads through). The replacement is made in the kind's canonical layout by a
:mod:`~attnviz.capture.policies` policy and reshaped to the module's own layout, dtype and
device. A capture entered before or after, on the same sites, records the replaced attention.

>>> with attnviz.intervene(model, {"stage:5": "constant:1"}):     # SE gates = 1 in stage 5
...     logits = model(x)
>>> with attnviz.capture(model) as src: model(x_small)             # interchange intervention
>>> with attnviz.intervene(model, {"SK_3_1": "patch"}, source=src), attnviz.capture(model) as c:
...     model(x_large)                                             # c["SK_3_1"] is src's
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..errors import AttnvizError
from .core import (
    _WRITTEN,
    CallListener,
    _InterceptionPoint,
    _is_tracing,
    resolve_site_key,
    select_sites,
)
from .kinds import get_kind
from .policies import Policy, PolicyContext, PolicyError, get_policy
from .registry import Adapter, Written
from .site import Site

__all__ = ["Intervention", "NotWritableError", "intervene"]


class NotWritableError(AttnvizError, ValueError):
    """A site whose attention attnviz cannot replace (said before any forward)."""


def _lookup(table: Mapping[str, Tensor] | None, site: Site) -> Tensor | None:
    if table is None:
        return None
    for key in (site.name, site.alias):
        if key in table:
            return table[key]
    return None


class Intervention:
    """Context manager that replaces attention while inside the ``with`` block."""

    def __init__(
        self,
        model: nn.Module,
        policies: Mapping[str, str | Policy],
        *,
        reference: Mapping[str, Tensor] | None = None,
        source: Mapping[str, Tensor] | None = None,
    ):
        if not isinstance(policies, Mapping) or not policies:
            raise PolicyError("intervene needs {site: policy, ...} with at least one site")
        self.model = model
        found = select_sites(model)
        chosen: dict[str, tuple[Site, nn.Module, Adapter, Policy]] = {}
        for key, spec in policies.items():
            policy = get_policy(spec)
            for site, module, adapter in resolve_site_key(found, key):
                writer = adapter.writer_for(module)
                if isinstance(writer, str):
                    raise NotWritableError(
                        f"cannot intervene on {site.alias} ({site.name}, kind {site.kind}): "
                        f"{writer}"
                    )
                policy.check(site)
                if policy.needs == "reference" and _lookup(reference, site) is None:
                    raise PolicyError(
                        f"policy 'mean' at {site.alias} needs reference={{site: mean "
                        "attention}; attnviz.analysis.ablation.reference_means computes it"
                    )
                if policy.needs == "source" and _lookup(source, site) is None:
                    raise PolicyError(
                        f"policy 'patch' at {site.alias} needs source={{site: attention}}, "
                        "e.g. an AttentionCache captured on the other input"
                    )
                if site.name in chosen and chosen[site.name][3] != policy:
                    raise PolicyError(
                        f"site {site.alias} is given two policies: {chosen[site.name][3]} "
                        f"and {policy} (keys overlap)"
                    )
                chosen[site.name] = (site, module, adapter, policy)
        self.sites: list[Site] = [c[0] for c in chosen.values()]
        self.policies: dict[str, Policy] = {c[0].name: c[3] for c in chosen.values()}
        self._chosen = list(chosen.values())
        self._reference = reference
        self._source = source
        self._handles: list[Any] = []
        self._listeners: list[tuple[nn.Module, CallListener]] = []
        self._thread: int | None = None

    # -- context -------------------------------------------------------------------------
    def __enter__(self) -> Intervention:
        if self._handles or self._listeners:
            raise RuntimeError("this intervene context is already active")
        self._thread = threading.get_ident()
        try:
            for site, module, adapter, policy in self._chosen:
                self._hook(site, module, adapter.writer_for(module), policy)
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        while self._listeners:
            module, listener = self._listeners.pop()
            _InterceptionPoint.remove(module, listener)
            _WRITTEN.pop((listener.thread, id(module)), None)
        for _, module, _, _ in self._chosen:
            _WRITTEN.pop((self._thread, id(module)), None)
        self._thread = None

    def _mine(self) -> bool:
        return threading.get_ident() == self._thread

    # -- writing -------------------------------------------------------------------------
    def _hook(self, site: Site, module: nn.Module, writer: Written, policy: Policy) -> None:
        kind = get_kind(site.kind)
        ctx = PolicyContext(site, kind, _lookup(self._reference, site), _lookup(self._source, site))
        state: dict[str, Any] = {"inputs": (), "calls": 0}
        key = (self._thread, id(module))

        def write(raw: Tensor) -> Tensor:
            view = raw if writer.view is None else writer.view(module, raw, state["inputs"])
            att = kind.canonicalize(view)
            if att.numel() != raw.numel():
                raise NotWritableError(
                    f"{site.alias}: the canonical attention {tuple(att.shape)} is not a reshape "
                    f"of the module's tensor {tuple(raw.shape)}; the adapter's write view is wrong"
                )
            new = policy.apply(att.detach(), ctx)
            if tuple(new.shape) != tuple(att.shape):
                raise PolicyError(
                    f"policy {policy} returned shape {tuple(new.shape)} for {site.alias}, "
                    f"expected {tuple(att.shape)}"
                )
            _WRITTEN[key] = new.detach()
            return new.to(device=raw.device, dtype=raw.dtype).reshape(raw.shape)

        def pre_hook(mod: nn.Module, inputs: tuple) -> None:
            if self._mine():
                state["inputs"], state["calls"] = inputs, 0
                _WRITTEN.pop(key, None)

        self._handles.append(module.register_forward_pre_hook(pre_hook, prepend=True))
        function = writer.function
        if function is None:

            def out_hook(mod: nn.Module, inputs: tuple, output: Any) -> Any:
                if not self._mine() or _is_tracing():
                    return None
                if not isinstance(output, Tensor):
                    raise NotWritableError(
                        f"{site.alias}: {writer.at or 'the module'} returned "
                        f"{type(output).__name__}, not a tensor; cannot write it"
                    )
                return write(output)

            target = module.get_submodule(writer.at) if writer.at else module
            self._handles.append(target.register_forward_hook(out_hook, prepend=True))
        else:

            def on_call(name: str, out: Any) -> Any:
                state["calls"] += 1
                if state["calls"] > 1:
                    raise NotWritableError(
                        f"{site.alias}: the module called {name} {state['calls']} times in one "
                        "forward; attnviz writes a site whose attention is one call"
                    )
                return write(out)

            listener = CallListener((function,), on_call, order=0)
            _InterceptionPoint.add(module, listener)
            self._listeners.append((module, listener))


def intervene(
    model: nn.Module,
    policies: Mapping[str, str | Policy],
    *,
    reference: Mapping[str, Tensor] | None = None,
    source: Mapping[str, Tensor] | None = None,
) -> Intervention:
    """Replace the attention of ``model``'s sites while inside the ``with`` block.

    ``policies`` maps site keys (name, alias, ``stage:N``, a kind, ``all``) to a policy (a
    registry string such as ``"constant:1"``, ``"mean"``, ``"shuffle"``, ``"uniform"``,
    ``"query_mean"``, ``"branch:0"``, ``"patch"``, or a :class:`~attnviz.capture.policies.
    Policy`). ``reference``: {site: mean attention without the batch axis} for ``mean``;
    ``source``: {site: attention of another forward, batch first} for ``patch`` (an
    :class:`~attnviz.capture.AttentionCache` works). Unknown sites or policies, a policy a
    kind cannot take, and sites attnviz cannot write are refused here, before any forward.
    """
    return Intervention(model, policies, reference=reference, source=source)
