"""Adapters: a declarative entry per attention implementation (module type -> how to read it).

An adapter names the module class it reads (by its qualified name, so nothing is imported
until a model holds such a module), the kind of attention, and a ``read``:

* ``"path.to.submodule"``: the attention is that submodule's output, optionally passed through
  ``transform`` (e.g. a sigmoid or a softmax the module applies functionally);
* ``Computed(taps=(...), compute=fn)``: the attention is computed by ``fn`` from the outputs of
  several submodules (the taps) and the module's own input and output.

The result then goes through the kind's canonical layout (``kinds.py``). Hook plumbing lives in
``core.py`` only; adapters never register hooks themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .kinds import get_kind


@dataclass
class Reading:
    """What a ``Computed`` read returns: the attention and facts about its grids."""

    attention: Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    rows_selected: bool = False  # True when ``compute`` already kept only the query rows


ComputeFn = Callable[[nn.Module, Mapping[str, Tensor], tuple, Any, "Tensor | None"], Reading]


@dataclass(frozen=True)
class Computed:
    """Attention computed from tapped submodule outputs, the module's input and output.

    ``compute(module, taps, inputs, output, rows)``: ``taps`` maps each tap path to that
    submodule's (last) output in this forward; ``rows`` is a LongTensor of query rows to keep
    (nonlocal kinds with ``queries=``) or None. Return a :class:`Reading`.
    """

    taps: tuple[str, ...]
    compute: ComputeFn


Read = "str | Computed"


@dataclass(frozen=True)
class Adapter:
    """How one module type's attention is read."""

    module_type: str
    kind: str
    read: str | Computed
    family: str = "user"
    transform: Callable[[Tensor], Tensor] | None = None
    applies: Callable[[nn.Module], bool] | None = None
    describe: Callable[[nn.Module], dict] | None = None
    meta: Callable[[nn.Module, tuple, Any], dict] | None = None

    @property
    def taps(self) -> tuple[str, ...]:
        return (self.read,) if isinstance(self.read, str) else self.read.taps

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
        reading.attention = get_kind(self.kind).canonicalize(reading.attention)
        return reading


_ADAPTERS: dict[str, Adapter] = {}


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_adapter(
    module_type: type | str,
    *,
    kind: str,
    read: str | Computed,
    transform: Callable[[Tensor], Tensor] | None = None,
    family: str = "user",
    applies: Callable[[nn.Module], bool] | None = None,
    describe: Callable[[nn.Module], dict] | None = None,
    meta: Callable[[nn.Module, tuple, Any], dict] | None = None,
) -> Adapter:
    """Teach attnviz to read a module class's attention.

    >>> register_adapter(MySE, kind="se", read="sigmoid")   # output of MySE.sigmoid
    >>> register_adapter(MyGC, kind="gc", read="logits",
    ...                  transform=lambda t: t.flatten(2).softmax(-1).view_as(t))

    ``module_type`` is the class (or its qualified name ``package.module.Class``, where the
    class is defined); subclasses match too unless they have an adapter of their own.
    ``read`` names the submodule (path relative to the module, ``""`` for the module itself)
    whose output is the attention, or is a :class:`Computed`. ``applies`` can veto a module
    (e.g. a GC variant without attention). Registering the same class again replaces it.
    """
    get_kind(kind)  # validates
    key = module_type if isinstance(module_type, str) else qualified_name(module_type)
    if not isinstance(read, (str, Computed)):
        raise TypeError("read must be a submodule path (str) or a Computed(...)")
    adapter = Adapter(
        module_type=key,
        kind=kind,
        read=read,
        family=family,
        transform=transform,
        applies=applies,
        describe=describe,
        meta=meta,
    )
    _ADAPTERS[key] = adapter
    return adapter


def unregister_adapter(module_type: type | str) -> None:
    key = module_type if isinstance(module_type, str) else qualified_name(module_type)
    _ADAPTERS.pop(key, None)


def registered_adapters() -> dict[str, Adapter]:
    """All adapters by qualified module type name (a copy)."""
    _ensure_builtin_adapters()
    return dict(_ADAPTERS)


def adapter_for(module: nn.Module) -> Adapter | None:
    """The adapter of the most specific registered class in the module's MRO, if it applies."""
    _ensure_builtin_adapters()
    for cls in type(module).__mro__:
        adapter = _ADAPTERS.get(qualified_name(cls))
        if adapter is not None:
            if adapter.applies is not None and not adapter.applies(module):
                return None
            return adapter
    return None


def supported_module_types(adapters: Iterable[Adapter] | None = None) -> list[str]:
    adapters = registered_adapters().values() if adapters is None else adapters
    return sorted(a.module_type for a in adapters)


_BUILTINS_LOADED = False


def _ensure_builtin_adapters() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        from . import adapters  # noqa: F401  (registers the built-in adapters)


def softmax_over_positions(logits: Tensor) -> Tensor:
    """Softmax over all H*W positions of a (B, 1, H, W) map, kept as (B, 1, H, W)."""
    b, c, h, w = logits.shape
    return torch.softmax(logits.reshape(b, c, h * w), dim=-1).reshape(b, c, h, w)
