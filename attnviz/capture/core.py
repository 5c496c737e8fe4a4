"""Finding attention sites and recording them: ``find_sites``, ``capture``, ``AttentionCache``.

This file is the only place in attnviz that registers hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import NoAttentionSitesError
from .kinds import get_kind
from .reductions import Reduction, resolve_reduction
from .registry import Adapter, adapter_for, qualified_name, registered_adapters
from .site import Site, assign_aliases


def _is_tracing() -> bool:
    """True while torch.fx traces (hooks then see Proxy values) or torch.compile/export runs."""
    fx = torch.fx._symbolic_trace
    check = getattr(fx, "is_fx_symbolic_tracing", None) or fx.is_fx_tracing
    return bool(check()) or torch.compiler.is_compiling()


def _find(model: nn.Module) -> list[tuple[Site, nn.Module, Adapter]]:
    found: list[tuple[str, nn.Module, Adapter]] = []
    for name, module in model.named_modules():
        adapter = adapter_for(module)
        if adapter is not None:
            found.append((name, module, adapter))
    aliases = assign_aliases([(name, a.kind) for name, _, a in found])
    out = []
    for (name, module, adapter), (alias, stage, block) in zip(found, aliases):
        info = adapter.describe(module) if adapter.describe is not None else {}
        site = Site(
            name=name,
            kind=adapter.kind,
            alias=alias,
            dims=get_kind(adapter.kind).dims,
            module_type=qualified_name(type(module)),
            family=adapter.family,
            stage=stage,
            block=block,
            info=info,
        )
        out.append((site, module, adapter))
    return out


def find_sites(model: nn.Module) -> list[Site]:
    """All attention sites of ``model`` in module order, without running it."""
    return [site for site, _, _ in _find(model)]


def _no_sites_error(model: nn.Module, detail: str = "") -> NoAttentionSitesError:
    types = ", ".join(t.rsplit(".", 1)[-1] for t in sorted(registered_adapters()))
    return NoAttentionSitesError(
        f"{type(model).__name__} has no attention module that attnviz can read{detail}. "
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
        by_key: dict[str, tuple[Site, nn.Module, Adapter]] = {}
        for f in found:
            by_key[f[0].name] = f
            by_key[f[0].alias] = f
        chosen: dict[str, tuple[Site, nn.Module, Adapter]] = {}
        for w in wanted:
            key = w.name if isinstance(w, Site) else w
            if key not in by_key:
                valid = ", ".join(f"{s.alias} ({s.name})" for s, _, _ in found)
                raise ValueError(f"unknown site {key!r}; valid sites: {valid}")
            chosen[by_key[key][0].name] = by_key[key]
        found = [f for f in found if f[0].name in chosen]
    return found


class AttentionCache(Mapping[str, Tensor]):
    """Captured attention, by site name: detached float32 CPU tensors in canonical layout.

    Several forwards inside one ``capture`` context accumulate along the batch axis (axis 0):
    two forwards of batch 4 give tensors of batch 8, in call order. A module called twice in
    one forward contributes twice. ``meta[name]`` holds facts about the last forward of a site
    (``query_grid`` / ``key_grid`` for nonlocal sites, ``query_index`` when ``queries`` was
    given); ``inputs`` / ``outputs`` hold the site module's input and output when
    ``capture(..., io=True)``.
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


def _validated_queries(queries: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    queries = [tuple(q) for q in queries]
    if not queries or any(len(q) != 2 for q in queries):
        raise ValueError("queries must be a non-empty sequence of (y, x) grid cells")
    return queries


def _query_rows(queries: Sequence[tuple[int, int]], grid: tuple[int, int], site: Site) -> Tensor:
    h, w = grid
    rows = []
    for q in queries:
        y, x = int(q[0]), int(q[1])
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
    forward raises. Nothing about the model is changed: no parameter, buffer or mode.
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
        if queries is not None and not callable(queries):
            queries = _validated_queries(queries)
        self._queries = queries
        self._io = io
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.cache = AttentionCache([s for s, _, _ in self._selected])

    def __enter__(self) -> AttentionCache:
        if self._handles:
            raise RuntimeError("this capture context is already active")
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

    def _hook_site(self, site: Site, module: nn.Module, adapter: Adapter) -> None:
        stash: dict[str, Any] = {}
        for path in adapter.taps:
            sub = module.get_submodule(path) if path else module
            if path:
                self._handles.append(sub.register_forward_hook(_tap_hook(stash, path)))

        def pre_hook(mod: nn.Module, inputs: tuple) -> None:
            stash.clear()

        def hook(mod: nn.Module, inputs: tuple, output: Any) -> None:
            if _is_tracing() or not isinstance(output, Tensor):
                stash.clear()
                return
            if "" in adapter.taps:
                stash[""] = output
            missing = [p for p in adapter.taps if p not in stash]
            if missing:
                stash.clear()
                raise RuntimeError(
                    f"attnviz adapter for {adapter.module_type} expected outputs of {missing} "
                    f"in {site.name}, but they did not run; the adapter does not fit this module"
                )
            self._record(site, mod, adapter, stash, inputs, output)
            stash.clear()

        self._handles.append(module.register_forward_pre_hook(pre_hook))
        self._handles.append(module.register_forward_hook(hook))

    def _record(
        self,
        site: Site,
        module: nn.Module,
        adapter: Adapter,
        taps: dict[str, Any],
        inputs: tuple,
        output: Any,
    ) -> None:
        rows = None
        grid = None
        if self._queries is not None and site.kind in _QUERY_KINDS:
            grid = _query_grid(inputs)
            cells = self._queries
            if callable(cells):  # chosen from the grid, known only now
                cells = _validated_queries(cells(grid))
            rows = _query_rows(cells, grid, site)
        with torch.no_grad():
            reading = adapter.read_attention(module, taps, inputs, output, rows)
            att = reading.attention
            meta = dict(reading.meta)
            if rows is not None:
                if not reading.rows_selected:
                    att = att[:, rows.to(att.device)]
                meta["query_index"] = rows
                meta["queries"] = list(cells)
            if site.kind in _QUERY_KINDS and "query_grid" not in meta:
                meta["query_grid"] = grid or _query_grid(inputs)
            sources = [t for t in taps.values() if isinstance(t, Tensor)] + [output]
            if self._reduce is not None:
                att = self._reduce(att, site)
            if att is not None:
                self.cache._append(site.name, _to_cache_tensor(att, sources))
            self.cache.meta[site.name] = meta
            if self._io:
                x = inputs[0]
                self.cache._append_io(site.name, "input", x.detach().float().cpu().clone())
                self.cache._append_io(site.name, "output", output.detach().float().cpu().clone())


_QUERY_KINDS = frozenset({"nonlocal"})


def register_query_kind(kind: str) -> None:
    """Mark a kind as (B, Nq, Nk) per-query attention, so ``queries=`` applies to it."""
    get_kind(kind)
    global _QUERY_KINDS
    _QUERY_KINDS = _QUERY_KINDS | {kind}


def is_query_kind(kind: str) -> bool:
    """True for (B, Nq, Nk) per-query kinds (nonlocal, and those added by register_query_kind)."""
    from .registry import _ensure_builtin_adapters

    _ensure_builtin_adapters()
    return kind in _QUERY_KINDS


def query_kinds() -> tuple[str, ...]:
    """All per-query kinds, built-in adapters' kinds included."""
    from .registry import _ensure_builtin_adapters

    _ensure_builtin_adapters()
    return tuple(sorted(_QUERY_KINDS))


def _query_grid(inputs: tuple) -> tuple[int, int]:
    x = inputs[0]
    return int(x.shape[-2]), int(x.shape[-1])


def _tap_hook(stash: dict[str, Any], path: str):
    def hook(mod: nn.Module, inputs: tuple, output: Any) -> None:
        stash[path] = output

    return hook


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
