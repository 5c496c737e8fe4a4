"""Finding attention sites and recording them: ``find_sites``, ``capture``, ``AttentionCache``.

This file is the only place in attnviz that registers hooks.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import re
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..errors import AttnvizError, NoAttentionSitesError
from .kinds import REGISTRY_CHANGES, Kind, get_kind, query_kinds
from .reductions import Reduction, resolve_reduction
from .registry import (
    Adapter,
    Call,
    Intercepted,
    _adapter_lookup,
    not_attention_reason,
    qualified_name,
    record_context,
    registered_adapters,
)
from .site import Site, assign_aliases, feature_stages

#: Capture warns before the full per-query maps it keeps exceed this many bytes (1 GiB).
FULL_MAP_WARN_BYTES = 1 << 30


class CompiledModelError(AttnvizError, TypeError):
    """``capture`` was given a ``torch.compile``d module, whose compiled code skips hooks."""


class CallListener:
    """One user of a site's torch-function interception: ``on_call(name, out) -> out`` sees
    the output of every call of a function named in ``names`` made by the site module in the
    thread ``thread`` (with ``with_args``: ``on_call(name, out, args, kwargs)``). Writers
    (``order`` 0, intervene) see a call before readers (1, capture), so a capture reads what an
    intervention wrote, whichever context was entered first."""

    def __init__(
        self,
        names: tuple[str, ...],
        on_call: Callable[..., Any],
        order: int,
        with_args: bool = False,
    ):
        self.names = names
        self.on_call = on_call
        self.order = order
        self.with_args = with_args
        self.thread = threading.get_ident()


class _CallMode(TorchFunctionMode):
    """Passes the outputs of the named torch functions through the listeners, in order."""

    def __init__(self, listeners: list[CallListener]):
        super().__init__()
        self.listeners = listeners

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", None)
        for listener in self.listeners:
            if name in listener.names:
                if listener.with_args:
                    out = listener.on_call(name, out, args, kwargs or {})
                else:
                    out = listener.on_call(name, out)
        return out


class _InterceptionPoint:
    """The torch-function interception of one site module, shared by every capture and
    intervene context on it: one pre-hook enters a :class:`_CallMode` while the module runs,
    one post-hook (also run when the forward raises) leaves it. The pre-hook comes after the
    module's pre-hooks registered before it and the post-hook before every forward hook, so
    torch calls of those hooks are not taken for the module's own."""

    _points: ClassVar[dict[int, _InterceptionPoint]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, module: nn.Module):
        self.listeners: list[CallListener] = []
        self.modes: dict[int, list[_CallMode]] = {}  # per thread: entered, not yet left
        self._handles = [
            module.register_forward_pre_hook(self._enter),
            module.register_forward_hook(self._leave, prepend=True, always_call=True),
        ]

    @classmethod
    def add(cls, module: nn.Module, listener: CallListener) -> None:
        with cls._lock:
            point = cls._points.get(id(module))
            if point is None:
                point = cls._points[id(module)] = cls(module)
            point.listeners.append(listener)
            point.listeners.sort(key=lambda li: li.order)

    @classmethod
    def remove(cls, module: nn.Module, listener: CallListener) -> None:
        with cls._lock:
            point = cls._points.get(id(module))
            if point is None or listener not in point.listeners:
                return
            point.listeners.remove(listener)
            if not point.listeners:
                del cls._points[id(module)]
                for handle in point._handles:
                    handle.remove()
            for mode in reversed(point.modes.pop(listener.thread, [])):  # a forward raised
                mode.__exit__(None, None, None)

    def _enter(self, module: nn.Module, inputs: tuple) -> None:
        thread = threading.get_ident()
        mine = [li for li in self.listeners if li.thread == thread]
        if mine and not _is_tracing():
            mode = _CallMode(mine)
            mode.__enter__()
            self.modes.setdefault(thread, []).append(mode)

    def _leave(self, module: nn.Module, inputs: tuple, output: Any) -> None:
        stack = self.modes.get(threading.get_ident())
        if stack:
            stack.pop().__exit__(None, None, None)


#: Attention an intervention wrote in this forward, by (thread, id(site module)): canonical
#: layout. A capture of the same site records this tensor, so what it reads is what the module
#: used, also for adapters that read by recomputing (timm Non-local from its ``t``/``p``).
_WRITTEN: dict[tuple[int, int], Tensor] = {}


_VERSIONS = "\0versions"  # stash key of (tap, tensor, version) records of intercepted outputs


def _check_unchanged(stash: dict[str, Any], site: Site) -> None:
    """Raise if an intercepted output was changed in place after the call that made it:
    the tensor read at the end of the forward would not be the one the module used."""
    for key, t, version in stash.pop(_VERSIONS, ()):
        if t._version != version:
            stash.clear()
            raise RuntimeError(
                f"{site.alias} ({site.name}): the output of {key} was modified in place later "
                "in the forward, so the attention the module used can no longer be read; use an "
                "adapter that reads it before the change (a submodule tap is copied when it runs)"
            )


def _is_tracing() -> bool:
    """True while torch.fx traces (hooks then see Proxy values) or torch.compile/export runs."""
    fx = torch.fx._symbolic_trace
    check = getattr(fx, "is_fx_symbolic_tracing", None) or fx.is_fx_tracing
    return bool(check()) or torch.compiler.is_compiling()


def _orig_module(model: nn.Module) -> nn.Module | None:
    """The original module of a ``torch.compile``d model (an ``OptimizedModule``), else None."""
    orig = getattr(model, "_orig_mod", None)
    if isinstance(orig, nn.Module) and type(model).__name__ == "OptimizedModule":
        return orig
    return None


_ATTENTION_NAME = re.compile(
    r"attn|attention|excit|selectivekernel|globalcontext|nonlocal|lambdalayer", re.IGNORECASE
)


_ATTENTION_CALL = re.compile(r"\b(?:softmax|scaled_dot_product_attention)\s*\(")


@functools.cache
def _computes_attention(cls: type) -> bool:
    """True for a class outside torch whose source calls ``softmax(`` or
    ``scaled_dot_product_attention(``: attention whose class name does not say so (ConViT's
    ``MHSA``/``GPSA``, XCiT's ``XCA``, SHViT's ``SHSA``). Gates without a softmax (GLU MLPs) are
    not attention. The model itself (the root module) is not judged by its source."""
    if cls.__module__.split(".")[0] == "torch":
        return False
    try:
        return bool(_ATTENTION_CALL.search(inspect.getsource(cls)))
    except (OSError, TypeError):  # no source (built in a REPL, C extension)
        return False


#: The names in timm's attention registry (``timm.layers.create_attn.get_attn``), timm 1.0.x.
TIMM_REGISTRY = (
    *("se", "ese", "eca", "ecam", "ceca", "ge", "gc", "gca", "cbam", "lcbam", "coord"),
    *("scoord", "ela", "strip", "sk", "splat", "lambda", "bottleneck", "halo", "nl", "bat"),
)


_REGISTRY_TYPES: set[str] | None = None


def _registry_types() -> set[str]:
    """Qualified names of the classes in timm's attention registry (if timm is imported)."""
    global _REGISTRY_TYPES
    if _REGISTRY_TYPES is not None:
        return _REGISTRY_TYPES
    create_attn = sys.modules.get("timm.layers.create_attn")
    if create_attn is None:
        return set()
    out = set()
    for name in TIMM_REGISTRY:
        try:
            cls = create_attn.get_attn(name)
        except Exception:  # a registry entry this timm version cannot resolve
            continue
        cls = getattr(cls, "func", cls)  # functools.partial entries (ecam, gca)
        if isinstance(cls, type):
            out.add(qualified_name(cls))
    _REGISTRY_TYPES = out
    return out


def _scan(model: nn.Module) -> tuple[list[tuple[str, nn.Module, Adapter]], list[tuple[str, str]]]:
    """Sites (name, module, adapter) and unread attention-like modules (name, class name)."""
    found: list[tuple[str, nn.Module, Adapter]] = []
    candidates: list[tuple[str, nn.Module]] = []
    known: list[str] = []  # modules an adapter knows (sites, and those it vetoes)
    registry = None
    for name, module in model.named_modules():
        adapter, matched = _adapter_lookup(module)
        if adapter is not None:
            found.append((name, module, adapter))
        if matched or not_attention_reason(module) is not None:
            known.append(name)
            continue
        cls = type(module)
        if _ATTENTION_NAME.search(cls.__name__) or (name and _computes_attention(cls)):
            candidates.append((name, module))
        else:
            if registry is None:
                registry = _registry_types()
            if qualified_name(cls) in registry:
                candidates.append((name, module))
    marked = known + [n for n, _ in candidates]
    unread = []
    for name, module in candidates:
        inside_known = any(name.startswith(k + ".") or k == "" for k in known)
        holds_marked = any(m.startswith(name + ".") or (name == "" and m) for m in marked)
        if not inside_known and not holds_marked:
            unread.append((name, type(module).__name__))
    return found, unread


# ----------------------------------------------------------------------------- discovery cache
#: Bumped by torch whenever any module gets a submodule (``add_module``, attribute assignment,
#: ``Sequential`` item assignment): a cached scan of a model is reused only while neither this
#: nor the adapter/kind registries changed. (Deleting a submodule without assigning another is
#: not seen: call :func:`clear_site_cache` after ``del model.block``.)
_MODULE_CHANGES = [0]


def _on_module_registration(module: nn.Module, name: str, submodule: Any) -> None:
    _MODULE_CHANGES[0] += 1


torch.nn.modules.module.register_module_module_registration_hook(_on_module_registration)
_SCANS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, int], Any]] = (
    weakref.WeakKeyDictionary()
)


def clear_site_cache() -> None:
    """Forget every cached site discovery (see ``_MODULE_CHANGES``)."""
    _SCANS.clear()
    _FOUND.clear()


def _cached_scan(model: nn.Module) -> tuple[list[tuple[str, nn.Module, Adapter]], Any]:
    """``(_scan(model)[0], feature_stages(model))``, reused while the model's modules and the
    registries are unchanged (``capture`` / ``intervene`` entered once per image stay cheap)."""
    key = (_MODULE_CHANGES[0], REGISTRY_CHANGES[0])
    hit = _SCANS.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    value = (_scan(model)[0], feature_stages(model))
    _SCANS[model] = (key, value)
    return value


_FOUND: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, int], Any]] = (
    weakref.WeakKeyDictionary()
)


def _find(
    model: nn.Module, found: list[tuple[str, nn.Module, Adapter]] | None = None
) -> list[tuple[Site, nn.Module, Adapter]]:
    """The model's sites with their modules and adapters; without ``found`` the result is
    cached like :func:`_cached_scan` (a new list each call, the same frozen ``Site``s)."""
    if found is None:
        key = (_MODULE_CHANGES[0], REGISTRY_CHANGES[0])
        hit = _FOUND.get(model)
        if hit is not None and hit[0] == key:
            return list(hit[1])
        found, stages = _cached_scan(model)
        out = _build_sites(model, found, stages)
        _FOUND[model] = (key, out)
        return list(out)
    return _build_sites(model, found, feature_stages(model))


def _build_sites(
    model: nn.Module, found: list[tuple[str, nn.Module, Adapter]], stages: Any
) -> list[tuple[Site, nn.Module, Adapter]]:
    for name, module, adapter in found:  # first: a kind may depend on the context (TNT)
        if adapter.context is not None:
            parts = name.split(".") if name else []
            ancestors = tuple(model.get_submodule(".".join(parts[:i])) for i in range(len(parts)))
            record_context(adapter, module, ancestors)
    kinds = [adapter.kind_for(module) for _, module, adapter in found]
    aliases = assign_aliases([(name, k) for (name, _, _), k in zip(found, kinds)], stages)
    out = []
    for (name, module, adapter), kind, (alias, stage, block) in zip(found, kinds, aliases):
        info = adapter.describe(module) if adapter.describe is not None else {}
        site = Site(
            name=name,
            kind=kind,
            alias=alias,
            dims=get_kind(kind).dims,
            module_type=qualified_name(type(module)),
            family=adapter.family,
            stage=stage,
            block=block,
            info=info,
        )
        out.append((site, module, adapter))
    return out


def unread_modules(model: nn.Module) -> dict[str, list[str]]:
    """Attention-like modules that no adapter reads: {class name: [module names]}.

    A module counts as attention-like when its class name says so (``...Attn``,
    ``...Attention``, ``...Excite``...), its class is in timm's attention registry, or its
    class's source calls ``softmax(`` / ``scaled_dot_product_attention(`` (the root excepted);
    containers of sites or of other such modules, and the insides of sites, are not counted.
    """
    model = _orig_module(model) or model
    out: dict[str, list[str]] = {}
    for name, cls_name in _scan(model)[1]:
        out.setdefault(cls_name, []).append(name)
    return out


def not_attention_modules(model: nn.Module) -> dict[str, tuple[str, list[str]]]:
    """Modules whose class is declared to hold no attention weights
    (:func:`~attnviz.capture.registry.declare_not_attention`): {class name: (reason, names)}."""
    model = _orig_module(model) or model
    out: dict[str, tuple[str, list[str]]] = {}
    for name, module in model.named_modules():
        reason = not_attention_reason(module)
        if reason is not None:
            out.setdefault(type(module).__name__, (reason, []))[1].append(name)
    return out


def unread_message(unread: Mapping[str, Sequence[str]]) -> str:
    """'3 HaloAttn modules are not read (no adapter): ...' lines, or '' when all are read."""
    lines = []
    for cls_name, names in unread.items():
        n = len(names)
        shown = ", ".join(names[:4]) + (", ..." if n > 4 else "")
        lines.append(
            f"{n} {cls_name} module{'s are' if n > 1 else ' is'} not read (no adapter): {shown}; "
            f"to read them, call attnviz.register_adapter({cls_name}, kind=..., read=...)"
        )
    return "\n".join(lines)


def find_sites(model: nn.Module) -> list[Site]:
    """All attention sites of ``model`` in module order, without running it.

    Attention-like modules that no adapter reads are named in a ``UserWarning`` (see
    :func:`unread_modules`). A ``torch.compile``d model is listed through its original module
    (``model._orig_mod``; site names are relative to it), with a warning.
    """
    orig = _orig_module(model)
    if orig is not None:
        warnings.warn(
            "this is a torch.compile'd model: its sites are listed from the original module "
            "model._orig_mod (names are relative to it); capture needs the original module, "
            "run eagerly: `with capture(model._orig_mod) as cache: model._orig_mod(x)`",
            UserWarning,
            stacklevel=2,
        )
        model = orig
    found, unread = _scan(model)
    if unread:
        grouped: dict[str, list[str]] = {}
        for name, cls_name in unread:
            grouped.setdefault(cls_name, []).append(name)
        warnings.warn(unread_message(grouped), UserWarning, stacklevel=2)
    return [site for site, _, _ in _find(model, found)]


def _no_sites_error(model: nn.Module, detail: str = "") -> NoAttentionSitesError:
    types = ", ".join(sorted({t.rsplit(".", 1)[-1] for t in registered_adapters()}))
    unread = unread_modules(model)
    note = f" {unread_message(unread).replace(chr(10), '; ')}." if unread else ""
    return NoAttentionSitesError(
        f"{type(model).__name__} has no attention module that attnviz can read{detail}.{note} "
        f"Supported module types: {types}. To support your own module class, call "
        "attnviz.register_adapter(YourModule, kind=..., read='submodule_name')."
    )


def select_sites(
    model: nn.Module,
    *,
    kinds: Iterable[str] | None = None,
    sites: Iterable[str | Site] | None = None,
) -> list[tuple[Site, nn.Module, Adapter]]:
    """The model's sites filtered by kind and by name or alias (errors list the valid ones)."""
    if _orig_module(model) is not None:
        raise CompiledModelError(
            "this is a torch.compile'd model (OptimizedModule): compiled code does not run the "
            "Python hooks attnviz reads attention with, so its capture would be empty. Capture "
            "the original module and run it eagerly: "
            "`with attnviz.capture(model._orig_mod) as cache: model._orig_mod(x)`"
        )
    found = _find(model)
    if not found:
        raise _no_sites_error(model)
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        for k in kinds:
            get_kind(k)  # unknown kinds raise ValueError listing the valid ones
        present = sorted({s.kind for s, _, _ in found})
        found = [f for f in found if f[0].kind in kinds]
        if not found:
            raise _no_sites_error(model, f" of kind {kinds} (its sites are of kind {present})")
    if sites is not None:
        wanted = [sites] if isinstance(sites, (str, Site)) else list(sites)
        chosen: set[str] = set()
        for w in wanted:
            chosen.update(s.name for s, _, _ in resolve_site_key(found, w))
        found = [f for f in found if f[0].name in chosen]
    return found


def resolve_site_key(
    found: Sequence[tuple[Site, nn.Module, Adapter]], key: str | Site
) -> list[tuple[Site, nn.Module, Adapter]]:
    """The sites one key names: a module name, an alias, ``stage:N`` (every site of paper
    stage N), a kind name (every site of that kind) or ``all``. Errors list the valid keys."""
    if isinstance(key, Site):
        key = key.name
    out = [f for f in found if key in (f[0].name, f[0].alias)]
    if not out and key == "all":
        out = list(found)
    elif not out and isinstance(key, str) and key.startswith("stage:"):
        out = [f for f in found if str(f[0].stage) == key[len("stage:") :]]
    elif not out and key in {f[0].kind for f in found}:
        out = [f for f in found if f[0].kind == key]
    if not out:
        valid = ", ".join(f"{s.alias} ({s.name})" for s, _, _ in found)
        stages = sorted({s.stage for s, _, _ in found if s.stage is not None})
        kinds = sorted({s.kind for s, _, _ in found})
        groups = ", ".join(["all", *(f"stage:{n}" for n in stages), *kinds])
        raise ValueError(f"unknown site {key!r}; valid sites: {valid}; or a group: {groups}")
    return out


class AttentionCache(Mapping[str, Tensor]):
    """Captured attention, by site name: detached float32 CPU tensors in canonical layout.

    Several forwards inside one ``capture`` context accumulate along the batch axis (axis 0):
    two forwards of batch 4 give tensors of batch 8, in call order. A module called twice in
    one forward contributes twice. ``meta[name]`` holds facts about the last forward of a site
    (``query_grid`` / ``key_grid`` for per-query sites, ``query_index`` and ``queries`` when
    ``queries`` was given, ``key_index`` / ``window`` for halo sites, ``parts`` for coord / ela);
    ``parts(name)`` splits a tensor made of named parts; ``inputs`` / ``outputs`` hold the site
    module's input and output when ``capture(..., io=True)``.
    """

    def __init__(self, sites: Sequence[Site]):
        self.sites: list[Site] = list(sites)
        self._by_name = {s.name: s for s in self.sites}
        self._by_alias = {s.alias: s for s in self.sites}
        self._chunks: dict[str, list[Tensor]] = {}
        self._io: dict[str, dict[str, list[Tensor]]] = {"input": {}, "output": {}}
        self.meta: dict[str, dict[str, Any]] = {}

    # -- Mapping -------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Tensor:
        if name not in self._chunks:
            if name in self._by_alias and self._by_alias[name].name in self._chunks:
                name = self._by_alias[name].name
            else:
                raise KeyError(
                    f"no attention captured for {name!r}; captured: {sorted(self._chunks)}"
                )
        return _joined(self._chunks, name)

    def __iter__(self) -> Iterator[str]:
        return iter([s.name for s in self.sites if s.name in self._chunks])

    def __len__(self) -> int:
        return len(self._chunks)

    # -- helpers ---------------------------------------------------------------------------
    def site(self, key: str) -> Site:
        """A site by name or alias."""
        site = self._by_name.get(key) or self._by_alias.get(key)
        if site is None:
            raise KeyError(f"unknown site {key!r}; sites: {[s.alias for s in self.sites]}")
        return site

    def parts(self, key: str) -> dict[str, Tensor]:
        """The named parts of a site's tensor (coord / ela: ``height`` (B, C, H) and ``width``
        (B, C, W)), split along the last axis by the sizes in ``meta[name]["parts"]``."""
        site = self.site(key)
        kind = get_kind(site.kind)
        if not kind.parts:
            return {kind.name: self[site.name]}
        sizes = self.meta[site.name]["parts"]
        chunks = torch.split(self[site.name], [sizes[p] for p in kind.parts], dim=-1)
        return dict(zip(kind.parts, chunks))

    def by_kind(self, kind: str) -> dict[str, Tensor]:
        """{site name: tensor} for the captured sites of one kind."""
        get_kind(kind)
        return {s.name: self[s.name] for s in self.sites if s.kind == kind and s.name in self}

    def by_alias(self, alias: str) -> Tensor:
        """The tensor of the site with this paper-style alias (``SK_3_4``)."""
        return self[self.site(alias).name]

    def aliases(self) -> dict[str, Tensor]:
        """{alias: tensor} for every captured site."""
        return {s.alias: self[s.name] for s in self.sites if s.name in self}

    def inputs(self, key: str) -> Tensor:
        """The site module's input (needs ``capture(..., io=True)``)."""
        return self._io_tensor("input", key)

    def outputs(self, key: str) -> Tensor:
        """The site module's output (needs ``capture(..., io=True)``)."""
        return self._io_tensor("output", key)

    def _io_tensor(self, which: str, key: str) -> Tensor:
        name = self.site(key).name
        store = self._io[which]
        if name not in store:
            raise KeyError(f"no {which} recorded for {name!r}: use capture(..., io=True)")
        return _joined(store, name)

    def clear(self) -> None:
        """Drop everything captured so far (the sites stay); for streaming loops."""
        self._chunks.clear()
        for store in self._io.values():
            store.clear()
        self.meta.clear()

    def nbytes(self) -> int:
        """Bytes held by the cache's tensors."""
        total = 0
        for store in (self._chunks, *self._io.values()):
            for chunks in store.values():
                total += sum(t.numel() * t.element_size() for t in chunks)
        return total

    def __repr__(self) -> str:
        shapes = {self._by_name[n].alias: tuple(self[n].shape) for n in self}
        return f"AttentionCache({shapes})"

    # -- filled by Capture ----------------------------------------------------------------
    def _append(self, name: str, t: Tensor) -> None:
        self._chunks.setdefault(name, []).append(t)

    def _append_io(self, name: str, which: str, t: Tensor) -> None:
        self._io[which].setdefault(name, []).append(t)


def _joined(store: dict[str, list[Tensor]], name: str) -> Tensor:
    chunks = store[name]
    if len(chunks) > 1:
        chunks[:] = [torch.cat(chunks, dim=0)]
    return chunks[0]


def _to_cache_tensor(t: Tensor, sources: Sequence[Tensor]) -> Tensor:
    """Detached float32 CPU tensor that shares no memory with the module's tensors."""
    out = t.detach().to(device="cpu", dtype=torch.float32)
    ptr = out.untyped_storage().data_ptr()
    if any(s.untyped_storage().data_ptr() == ptr for s in sources if isinstance(s, Tensor)):
        out = out.clone()
    return out


Queries = Sequence[tuple[int, int]] | Callable[[tuple[int, int]], Sequence[tuple[int, int]]]


def _cell_coordinate(v: Any, cell: Any) -> int:
    if isinstance(v, Tensor) and v.numel() == 1:
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ValueError(f"query cell {cell!r}: coordinates must be integers, got {v!r}")
    if isinstance(v, numbers.Integral):
        return int(v)
    if not math.isfinite(float(v)) or not float(v).is_integer():
        raise ValueError(
            f"query cell {cell!r}: coordinates must be whole grid cells (y, x), got {v!r}; "
            "round or floor them yourself"
        )
    return int(v)


def _validated_queries(queries: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    if isinstance(queries, (str, bytes)):
        raise ValueError("queries must be a non-empty sequence of (y, x) grid cells")
    out = []
    for q in queries:
        if isinstance(q, (str, bytes)) or not hasattr(q, "__len__") or len(q) != 2:
            raise ValueError(
                f"queries must be a non-empty sequence of (y, x) grid cells, got {q!r} among them"
            )
        out.append((_cell_coordinate(q[0], q), _cell_coordinate(q[1], q)))
    if not out:
        raise ValueError("queries must be a non-empty sequence of (y, x) grid cells")
    return out


def _query_rows(queries: Sequence[tuple[int, int]], grid: tuple[int, int], site: Site) -> Tensor:
    h, w = grid
    rows = []
    for y, x in queries:
        if not (0 <= y < h and 0 <= x < w):
            raise ValueError(
                f"query (y={y}, x={x}) is outside the {h}x{w} query grid of site "
                f"{site.alias} ({site.name}); valid cells are y in [0, {h - 1}], x in [0, {w - 1}]"
            )
        rows.append(y * w + x)
    return torch.tensor(rows, dtype=torch.long)


class Capture:
    """Context manager that records attention; ``with capture(model) as cache: model(x)``.

    Hooks are registered on ``__enter__`` and always removed on ``__exit__``, also when the
    forward raises. Nothing about the model is changed: no parameter, buffer or mode. Only
    forwards run by the thread that entered the context are recorded, so two threads may
    capture the same model at once, each in its own context.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        kinds: Iterable[str] | str | None = None,
        sites: Iterable[str | Site] | str | None = None,
        reduce: str | Reduction | None = None,
        queries: Queries | None = None,
        io: bool = False,
    ):
        self.model = model
        self._selected = select_sites(model, kinds=kinds, sites=sites)
        self._reduce = resolve_reduction(reduce)
        if queries is not None:
            if not callable(queries):
                queries = _validated_queries(queries)
            if not any(get_kind(s.kind).per_query for s, _, _ in self._selected):
                present = sorted({s.kind for s, _, _ in self._selected})
                raise ValueError(
                    "queries= selects rows of per-query attention maps, but none of the selected "
                    f"sites is per-query (their kinds: {present}; per-query kinds: "
                    f"{list(query_kinds())}); "
                    "drop queries= or select a per-query site"
                )
        self._queries = queries
        self._io = io
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._listeners: list[tuple[nn.Module, CallListener]] = []  # intercepting sites
        self._thread: int | None = None
        self._full_map_bytes = 0
        self._warned_size = False
        self.cache = AttentionCache([s for s, _, _ in self._selected])

    def __enter__(self) -> AttentionCache:
        if self._handles:
            raise RuntimeError("this capture context is already active")
        self._thread = threading.get_ident()
        try:
            for site, module, adapter in self._selected:
                self._hook_site(site, module, adapter)
        except BaseException:
            self._remove()
            raise
        return self.cache

    def __exit__(self, *exc: object) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        while self._listeners:
            _InterceptionPoint.remove(*self._listeners.pop())
        self._thread = None

    def _mine(self) -> bool:
        """True in the thread that entered this context (other threads' forwards are ignored)."""
        return threading.get_ident() == self._thread

    def _hook_site(self, site: Site, module: nn.Module, adapter: Adapter) -> None:
        stash: dict[str, Any] = {}
        every_call = adapter.every_call
        for path in adapter.taps:
            if path:
                sub = module.get_submodule(path)
                self._handles.append(sub.register_forward_hook(self._tap_hook(stash, path)))

        intercepts = adapter.intercepts
        with_args = isinstance(adapter.read, Intercepted) and adapter.read.with_args
        if intercepts:

            def on_call(name: str, out: Any, args: tuple = (), kwargs: Any = None) -> Any:
                record = Call(args, dict(kwargs), out) if with_args else out
                stash.setdefault(f"{name}()", []).append(record)
                # to notice an in-place change before it is read (inference tensors, made
                # under torch.inference_mode, have no version counter: not checked)
                for t in (out, *args, *(kwargs or {}).values()) if with_args else (out,):
                    if isinstance(t, Tensor) and not t.is_inference():
                        stash.setdefault(_VERSIONS, []).append((f"{name}()", t, t._version))
                return out

            listener = CallListener(intercepts, on_call, order=1, with_args=with_args)
            _InterceptionPoint.add(module, listener)
            self._listeners.append((module, listener))

        def pre_hook(mod: nn.Module, inputs: tuple) -> None:
            if self._mine():
                stash.clear()

        def hook(mod: nn.Module, inputs: tuple, output: Any) -> None:
            if not self._mine():
                return
            if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
                output = output[0]  # (tensor, extras): MViTv2's (x, feat_size), HSMSSD's (y, h)
            if _is_tracing() or not isinstance(output, Tensor):
                stash.clear()
                return
            _check_unchanged(stash, site)
            if "" in adapter.taps:
                stash[""] = [output]
            missing = [p for p in adapter.taps if p not in stash]
            absent = [f"{f}()" for f in intercepts if f"{f}()" not in stash]
            if absent and not (adapter.read.any_of and len(absent) < len(intercepts)):
                missing += absent
            if missing:
                stash.clear()
                raise RuntimeError(
                    f"attnviz adapter for {adapter.module_type} expected outputs of {missing} "
                    f"in {site.alias} ({site.name}), but they did not run; the adapter does not "
                    "fit this module"
                )
            taps = {
                p: (tuple(v) if every_call or p.endswith("()") else v[-1]) for p, v in stash.items()
            }
            self._record(site, mod, adapter, taps, inputs, output)
            stash.clear()

        self._handles.append(module.register_forward_pre_hook(pre_hook))
        self._handles.append(module.register_forward_hook(hook))

    def _tap_hook(self, stash: dict[str, list[Any]], path: str):
        def hook(mod: nn.Module, inputs: tuple, output: Any) -> None:
            if self._mine():
                # a copy: the module may change this output in place after using it (e.g.
                # ``g = self.gate(z); y = x * g; g.mul_(...)``), before the site's hook reads it
                if isinstance(output, Tensor) and not _is_tracing():
                    output = output.detach().clone()
                stash.setdefault(path, []).append(output)

        return hook

    def _record(
        self,
        site: Site,
        module: nn.Module,
        adapter: Adapter,
        taps: dict[str, Any],
        inputs: tuple,
        output: Any,
    ) -> None:
        kind = get_kind(site.kind)
        rows = None
        grid = None
        cells = None
        if kind.per_query:
            grid = adapter.grid_for(module, inputs)
            if self._queries is not None:
                cells = self._queries
                if callable(cells):  # chosen from the grid, known only now
                    cells = _validated_queries(cells(grid))
                rows = _query_rows(cells, grid, site)
        with torch.no_grad():
            reading = adapter.read_attention(module, taps, inputs, output, rows)
            att = reading.attention
            meta = dict(reading.meta)
            written = _WRITTEN.get((threading.get_ident(), id(module)))
            if written is not None:  # an intervention replaced it: that is what the module used
                att = written
                meta["intervened"] = True
                if rows is not None and reading.rows_selected:
                    full_rows = rows if reading.query_rows is None else reading.query_rows
                    att = att.index_select(kind.query_axis, full_rows.to(att.device))
            if rows is not None:
                if not reading.rows_selected:
                    full_rows = rows if reading.query_rows is None else reading.query_rows
                    att = att.index_select(kind.query_axis, full_rows.to(att.device))
                meta["query_index"] = rows
                meta["queries"] = list(cells)
            if kind.per_query:
                meta.setdefault("query_grid", grid)
            sources = [t for t in _flat_tensors(taps.values())] + [output]
            if self._reduce is not None:
                att = self._reduce(att, site)
            elif kind.per_query and rows is None:
                self._check_full_map_size(site, kind, att)
            if att is not None:
                self.cache._append(site.name, _to_cache_tensor(att, sources))
            self.cache.meta[site.name] = meta
            if self._io:
                x = inputs[0]
                self.cache._append_io(site.name, "input", x.detach().float().cpu().clone())
                self.cache._append_io(site.name, "output", output.detach().float().cpu().clone())

    def _check_full_map_size(self, site: Site, kind: Kind, att: Tensor) -> None:
        """Warn once, before the full per-query maps kept by this capture pass the threshold."""
        self._full_map_bytes += att.numel() * 4  # kept as float32
        if self._warned_size or self._full_map_bytes <= FULL_MAP_WARN_BYTES:
            return
        self._warned_size = True
        gib = self._full_map_bytes / 2**30
        warnings.warn(
            f"capture is keeping full per-query attention maps of about {gib:.2f} GiB "
            f"(so far; site {site.alias} alone is {tuple(att.shape)} per forward). Pass "
            "queries=[(y, x), ...] to keep only some query rows, or reduce= (e.g. "
            "reduce='entropy' or a callable) to keep a summary instead of the maps.",
            ResourceWarning,
            stacklevel=2,
        )


def _flat_tensors(values: Iterable[Any]) -> Iterator[Tensor]:
    for v in values:
        if isinstance(v, Tensor):
            yield v
        elif isinstance(v, tuple):
            yield from (t for t in v if isinstance(t, Tensor))


def capture(
    model: nn.Module,
    *,
    kinds: Iterable[str] | str | None = None,
    sites: Iterable[str | Site] | str | None = None,
    reduce: str | Reduction | None = None,
    queries: Queries | None = None,
    io: bool = False,
) -> Capture:
    """Record the attention of ``model``'s sites while inside the ``with`` block.

    ``kinds`` / ``sites`` select sites (names or aliases); ``reduce`` (a name from
    ``attnviz.capture.REDUCTIONS`` or a callable ``(tensor, site) -> tensor | None``) is applied
    inside the hook so full tensors are never kept; ``queries`` keeps only the rows of these
    (y, x) cells of the query grid at per-query sites, or is a callable ``query_grid -> cells``
    that chooses them once the grid is known (e.g. from image pixels); ``io=True`` also records
    each site module's input and output. Yields an :class:`AttentionCache`.
    """
    return Capture(model, kinds=kinds, sites=sites, reduce=reduce, queries=queries, io=io)
