"""Adapters: a declarative entry per attention implementation (module type -> how to read it).

An adapter names the module class it reads (by its qualified name, so nothing is imported
until a model holds such a module), the kind of attention, and a ``read``:

* ``"path.to.submodule"``: the attention is that submodule's output, optionally passed through
  ``transform`` (e.g. a sigmoid or a softmax the module applies functionally);
* ``Computed(taps=(...), compute=fn)``: the attention is computed by ``fn`` from the outputs of
  several submodules (the taps) and the module's own input and output;
* ``Intercepted(functions=("softmax",), compute=fn)``: the attention is the output of a torch
  function the module calls in its forward (a functional softmax), recorded as it happens.

The result then goes through the kind's canonical layout (``kinds.py``). Hook plumbing lives in
``core.py`` only; adapters never register hooks themselves.

Built-in adapters live in ``adapters/``, one file per implementation family. They import this
module (never the other way round): the first lookup imports every module of the ``adapters``
package by name, so adding a family is adding a file.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .kinds import REGISTRY_CHANGES, get_kind


@dataclass
class Reading:
    """What a ``Computed`` read returns: the attention and facts about its grids."""

    attention: Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    rows_selected: bool = False  # True when ``compute`` already kept only the query rows
    # the query-axis indices of the full tensor that the query rows are, when they are not the
    # query-grid rows themselves (token attention: prefix tokens come first)
    query_rows: Tensor | None = None


ComputeFn = Callable[[nn.Module, Mapping[str, Tensor], tuple, Any, "Tensor | None"], Reading]


@dataclass(frozen=True)
class Computed:
    """Attention computed from tapped submodule outputs, the module's input and output.

    ``compute(module, taps, inputs, output, rows)``: ``taps`` maps each tap path to that
    submodule's (last) output in this forward, or with ``every_call=True`` to the tuple of its
    outputs in call order (a gate called twice per forward); ``rows`` is a LongTensor of query
    rows to keep (per-query kinds with ``queries=``) or None. Return a :class:`Reading`.
    """

    taps: tuple[str, ...]
    compute: ComputeFn
    every_call: bool = False


@dataclass(frozen=True)
class Intercepted:
    """Attention taken from the outputs of torch functions the module calls itself.

    For attention computed functionally (``attn.softmax(-1)`` inside ``forward``): while the
    module runs, a ``TorchFunctionMode`` records the output of every call of a function named
    in ``functions`` (``"softmax"`` matches ``torch.softmax``, ``Tensor.softmax`` and
    ``F.softmax``). ``compute(module, taps, inputs, output, rows)`` then gets
    ``taps["softmax()"]``, the tuple of those outputs in call order, and returns a
    :class:`Reading`. The tensor is the one the module used: nothing is recomputed.
    ``with_args=True`` records :class:`Call` records (arguments too) instead of outputs, for
    attention a fused call never forms (``scaled_dot_product_attention``); ``any_of=True``:
    the module calls one of ``functions`` (which one depends on its configuration), the
    others are absent from ``taps``.
    """

    functions: tuple[str, ...]
    compute: ComputeFn
    with_args: bool = False  # record each call as a :class:`Call` (arguments and output)
    any_of: bool = False  # the module calls one of the functions (e.g. fused or not), not all

    @staticmethod
    def key(function: str) -> str:
        return f"{function}()"


@dataclass(frozen=True)
class Call:
    """One intercepted torch-function call (``Intercepted(..., with_args=True)``): its
    positional and keyword arguments and its output, as the module made it."""

    args: tuple
    kwargs: Mapping[str, Any]
    output: Any


Read = "str | Computed | Intercepted"


ViewFn = Callable[[nn.Module, Tensor, tuple], Tensor]


@dataclass(frozen=True)
class Written:
    """Where a site's attention can be replaced (``attnviz.intervene``).

    ``at`` is a submodule path (``""``: the module itself) whose output is the attention, or
    ``"name()"``: the output of the one call of torch function ``name`` (``softmax``,
    ``sigmoid``) inside the module's forward. ``view(module, raw, inputs)`` turns that raw
    tensor into the kind's canonical layout (default: the kind's ``canonicalize``); the
    canonical layout must be a reshape of the raw tensor, so a replacement goes back by
    ``reshape(raw.shape)``.
    """

    at: str
    view: ViewFn | None = None

    @property
    def function(self) -> str | None:
        """The intercepted torch function's name, or None for a submodule output."""
        return self.at[:-2] if self.at.endswith("()") else None


@dataclass(frozen=True)
class Adapter:
    """How one module type's attention is read."""

    module_type: str
    kind: str | Callable[[nn.Module], str]
    read: str | Computed | Intercepted
    family: str = "user"
    transform: Callable[[Tensor], Tensor] | None = None
    applies: Callable[[nn.Module], bool] | None = None
    describe: Callable[[nn.Module], dict] | None = None
    meta: Callable[[nn.Module, tuple, Any], dict] | None = None
    query_grid: Callable[[nn.Module, tuple], tuple[int, int]] | None = None
    # where to replace the attention, or why it cannot be (or module -> either, per module)
    write: Written | str | Callable[[nn.Module], Written | str] | None = None
    # facts only the module's ancestors know (a ViT's prefix tokens): (module, ancestors) -> dict
    context: Callable[[nn.Module, tuple[nn.Module, ...]], dict] | None = None

    def writer_for(self, module: nn.Module) -> Written | str:
        """Where ``intervene`` replaces this module's attention, or why it cannot."""
        if callable(self.write) and not isinstance(self.write, Written):
            return self.write(module)
        return self.writer

    @property
    def writer(self) -> Written | str:
        """Where ``intervene`` replaces this attention, or a one-line reason it cannot.

        Declared by the adapter (``write=``), else derived: a plain submodule output is
        replaced at that submodule; one intercepted function call is replaced at the call.
        """
        if callable(self.write) and not isinstance(self.write, Written):
            return "where this adapter writes depends on the module: see writer_for(module)"
        if self.write is not None:
            return self.write
        if isinstance(self.read, str) and self.transform is None:
            return Written(self.read)
        if isinstance(self.read, Intercepted) and len(self.read.functions) == 1:
            compute, key = self.read.compute, Intercepted.key(self.read.functions[0])

            def view(module: nn.Module, raw: Tensor, inputs: tuple) -> Tensor:
                return compute(module, {key: (raw,)}, inputs, None, None).attention

            return Written(key, view)
        return (
            f"the {self.module_type.rsplit('.', 1)[-1]} adapter reads its attention by "
            "recomputing it, and declares no place to write it (register_adapter(..., write=))"
        )

    @property
    def taps(self) -> tuple[str, ...]:
        """Submodule paths whose outputs the read needs (``""`` = the module itself)."""
        if isinstance(self.read, Intercepted):
            return ()
        return (self.read,) if isinstance(self.read, str) else self.read.taps

    @property
    def every_call(self) -> bool:
        return isinstance(self.read, Computed) and self.read.every_call

    @property
    def intercepts(self) -> tuple[str, ...]:
        """Names of the torch functions whose outputs the read needs."""
        return self.read.functions if isinstance(self.read, Intercepted) else ()

    def kind_for(self, module: nn.Module) -> str:
        """The kind of this module's site (an adapter may choose it per module)."""
        return self.kind(module) if callable(self.kind) else self.kind

    def grid_for(self, module: nn.Module, inputs: tuple) -> tuple[int, int]:
        """The query grid (H, W) of a per-query site for these inputs (default: input H, W)."""
        if self.query_grid is not None:
            return tuple(self.query_grid(module, inputs))
        x = inputs[0]
        return int(x.shape[-2]), int(x.shape[-1])

    def read_attention(
        self,
        module: nn.Module,
        taps: Mapping[str, Tensor],
        inputs: tuple,
        output: Any,
        rows: Tensor | None,
    ) -> Reading:
        if isinstance(self.read, str):
            t = taps[self.read]
            if self.transform is not None:
                t = self.transform(t)
            meta = self.meta(module, inputs, output) if self.meta is not None else {}
            reading = Reading(t, meta)
        else:
            reading = self.read.compute(module, taps, inputs, output, rows)
        reading.attention = get_kind(self.kind_for(module)).canonicalize(reading.attention)
        return reading


_ADAPTERS: dict[str, Adapter] = {}

#: Facts from each site module's ancestors (``Adapter.context``), recorded when sites are found.
_CONTEXT: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def record_context(adapter: Adapter, module: nn.Module, ancestors: tuple[nn.Module, ...]) -> None:
    """Record ``adapter.context(module, ancestors)`` for the module's reads (site discovery)."""
    if adapter.context is not None:
        _CONTEXT[module] = adapter.context(module, ancestors)


def site_context(module: nn.Module) -> dict:
    """The facts ``Adapter.context`` recorded for this site module ({} if none)."""
    return _CONTEXT.get(module, {})


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_adapter(
    module_type: type | str,
    *,
    kind: str | Callable[[nn.Module], str],
    read: str | Computed | Intercepted,
    transform: Callable[[Tensor], Tensor] | None = None,
    family: str = "user",
    applies: Callable[[nn.Module], bool] | None = None,
    describe: Callable[[nn.Module], dict] | None = None,
    meta: Callable[[nn.Module, tuple, Any], dict] | None = None,
    query_grid: Callable[[nn.Module, tuple], tuple[int, int]] | None = None,
    write: Written | str | Callable[[nn.Module], Written | str] | None = None,
    context: Callable[[nn.Module, tuple[nn.Module, ...]], dict] | None = None,
) -> Adapter:
    """Teach attnviz to read a module class's attention.

    >>> register_adapter(MySE, kind="se", read="sigmoid")   # output of MySE.sigmoid
    >>> register_adapter(MyGC, kind="gc", read="logits",
    ...                  transform=lambda t: t.flatten(2).softmax(-1).view_as(t))

    ``module_type`` is the class (or its qualified name ``package.module.Class``, where the
    class is defined); subclasses match too unless they have an adapter of their own.
    ``read`` names the submodule (path relative to the module, ``""`` for the module itself)
    whose output is the attention, or is a :class:`Computed`. ``applies`` can veto a module
    (e.g. a GC variant without attention). Registering the same class again replaces it
    (a built-in adapter too). ``kind`` may be a callable ``module -> kind name`` when the kind
    depends on the module's configuration (or on ``site_context(module)``: the context is
    recorded first); ``query_grid(module, inputs) -> (H, W)`` gives the
    query grid of a per-query kind when it is not the input's H x W. ``write`` says where
    :func:`attnviz.intervene` replaces the attention (a :class:`Written`), or why it cannot (a
    one-line reason), or is a callable ``module -> either`` when that depends on the module's
    configuration; by default a plain submodule read is also the place to write.
    ``context(module, ancestors) -> dict`` (ancestors root first) records facts only the
    enclosing model knows when the sites are found; reads get them by ``site_context(module)``.
    """
    if not _called_from_builtin_adapter():
        _ensure_builtin_adapters()  # so that a user's adapter replaces a built-in one
    if not callable(kind):
        get_kind(kind)  # validates
    key = module_type if isinstance(module_type, str) else qualified_name(module_type)
    if not isinstance(read, (str, Computed, Intercepted)):
        raise TypeError("read must be a submodule path (str), a Computed(...) or Intercepted(...)")
    adapter = Adapter(
        module_type=key,
        kind=kind,
        read=read,
        family=family,
        transform=transform,
        applies=applies,
        describe=describe,
        meta=meta,
        query_grid=query_grid,
        write=write,
        context=context,
    )
    _ADAPTERS[key] = adapter
    REGISTRY_CHANGES[0] += 1
    return adapter


def unregister_adapter(module_type: type | str) -> None:
    key = module_type if isinstance(module_type, str) else qualified_name(module_type)
    _ADAPTERS.pop(key, None)
    REGISTRY_CHANGES[0] += 1


def registered_adapters() -> dict[str, Adapter]:
    """All adapters by qualified module type name (a copy)."""
    _ensure_builtin_adapters()
    return dict(_ADAPTERS)


#: Classes that look like attention (by name or by a softmax in their source) but hold no
#: attention weights: qualified name -> why. Not sites and not reported as unread.
_NOT_ATTENTION: dict[str, str] = {}


def declare_not_attention(module_type: type | str, reason: str) -> None:
    """Say that a class which looks like attention has no attention weights to read (one-line
    ``reason``): ``attnviz sites`` lists its modules with the reason instead of as unread."""
    key = module_type if isinstance(module_type, str) else qualified_name(module_type)
    _NOT_ATTENTION[key] = reason
    REGISTRY_CHANGES[0] += 1


def not_attention_reason(module: nn.Module) -> str | None:
    """The declared reason a module's class holds no attention weights, or None."""
    _ensure_builtin_adapters()
    return _NOT_ATTENTION.get(qualified_name(type(module)))


def _adapter_lookup(module: nn.Module) -> tuple[Adapter | None, bool]:
    """(adapter that reads the module or None, whether any registered class matched it)."""
    _ensure_builtin_adapters()
    for cls in type(module).__mro__:
        adapter = _ADAPTERS.get(qualified_name(cls))
        if adapter is not None:
            if adapter.applies is not None and not adapter.applies(module):
                return None, True
            return adapter, True
    return None, False


def adapter_for(module: nn.Module) -> Adapter | None:
    """The adapter of the most specific registered class in the module's MRO, if it applies."""
    return _adapter_lookup(module)[0]


def supported_module_types(adapters: Iterable[Adapter] | None = None) -> list[str]:
    adapters = registered_adapters().values() if adapters is None else adapters
    return sorted(a.module_type for a in adapters)


_BUILTINS_LOADED = False


def _called_from_builtin_adapter() -> bool:
    """True when ``register_adapter``'s caller is a module of the ``adapters`` package: a
    built-in family registering itself must not load the others, which may import from it
    while it is only half imported (``timm_attention2d`` from ``timm_vit``)."""
    caller = sys._getframe(2).f_globals.get("__name__", "")
    return caller.startswith(f"{__package__}.adapters.")


def _ensure_builtin_adapters() -> None:
    """Import every module of the ``adapters`` package once (each registers its family)."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    package = importlib.import_module(f"{__package__}.adapters")
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")


def softmax_over_positions(logits: Tensor) -> Tensor:
    """Softmax over all H*W positions of a (B, 1, H, W) map, kept as (B, 1, H, W)."""
    b, c, h, w = logits.shape
    return torch.softmax(logits.reshape(b, c, h * w), dim=-1).reshape(b, c, h, w)
