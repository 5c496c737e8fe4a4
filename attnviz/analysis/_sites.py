"""Site choice shared by the analyses: sites of some kinds, by name or alias, or a default;
and the token layout of per-head sites (prefix tokens, query and key grids)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..capture import Site, find_sites, get_kind, window_to_grid
from ..errors import NoAttentionSitesError


def choose_sites(
    model: nn.Module,
    kinds: Sequence[str],
    selection: Iterable[str | Site] | str | None,
    *,
    what: str,
    default: Callable[[list[Site]], list[Site]] | None = None,
) -> list[Site]:
    """The model's sites of ``kinds`` chosen by ``selection``, in model order.

    ``selection``: names or aliases, ``"all"``, or None for ``default(sites)`` (all if no
    default). ``what`` names the sites in errors ("channel-attention site").
    """
    found = find_sites(model)
    eligible = [s for s in found if s.kind in kinds]
    if not eligible:
        present = sorted({s.kind for s in found})
        raise NoAttentionSitesError(
            f"{type(model).__name__} has no {what} (kinds {', '.join(kinds)}); "
            f"its sites are of kind {present or 'none'}"
        )
    if selection is None:
        return default(eligible) if default is not None else eligible
    if isinstance(selection, str) and selection == "all":
        return eligible
    wanted = [selection] if isinstance(selection, (str, Site)) else list(selection)
    if not wanted:
        raise ValueError(f"no {what} chosen: give at least one name or alias, or 'all'")
    by_key = {s.name: s for s in eligible} | {s.alias: s for s in eligible}
    keep: set[str] = set()
    for w in wanted:
        key = w.name if isinstance(w, Site) else str(w)
        if key == "all":
            return eligible
        if key not in by_key:
            valid = ", ".join(f"{s.alias} ({s.name})" for s in eligible)
            raise ValueError(f"unknown {what} {key!r}; valid: {valid}")
        keep.add(by_key[key].name)
    return [s for s in eligible if s.name in keep]


def last_of_each_stage(sites: list[Site]) -> list[Site]:
    """The last site of every stage plus all sites of the last stage (SENet Fig. 6 rule);
    sites without a stage are all kept."""
    staged = [s for s in sites if s.stage is not None]
    if not staged:
        return list(sites)
    last_stage = max(s.stage for s in staged)
    last: dict[int, Site] = {}
    for s in staged:
        last[s.stage] = s  # module order: the last one wins
    keep = {s.name for s in last.values()} | {s.name for s in staged if s.stage == last_stage}
    return [s for s in sites if s.name in keep]


# -- per-head token sites: (B, heads, Nq, Nk) with prefix tokens before the patch grid ----------
HEAD_MEAN = "mean"  # the label of the head-mean row beside heads 0 .. H-1


def has_heads(kind: str) -> bool:
    """True for per-query kinds whose maps keep heads apart over whole-grid keys (``token``,
    ``bottleneck``: dims (batch, head, query, key)); windowed keys are not on a grid."""
    return get_kind(kind).dims == ("batch", "head", "query", "key")


def head_labels(n_heads: int) -> list[int | str]:
    """``[0, 1, ..., H - 1, "mean"]``: the heads, then their mean."""
    return [*range(int(n_heads)), HEAD_MEAN]


def with_head_mean(att: Tensor) -> Tensor:
    """(..., heads, Nq, Nk) -> (..., heads + 1, Nq, Nk): the heads, then their mean (the
    average of the rows, still a distribution when each head's rows are)."""
    return torch.cat([att, att.mean(dim=-3, keepdim=True)], dim=-3)


@dataclass(frozen=True)
class TokenLayout:
    """Where the tokens of a per-head site lie (Vaswani et al. 2017: one softmax row per query
    token over the key tokens): ``prefix`` query tokens (class, register, distillation;
    ``prefix_names``) before the ``query_grid`` patches in raster order, ``key_prefix`` key
    tokens before the ``key_grid`` patches (PVT / Twins keys lie on a reduced grid)."""

    prefix: int
    key_prefix: int
    query_grid: tuple[int, int]
    key_grid: tuple[int, int]
    prefix_names: tuple[str, ...]

    @classmethod
    def of(cls, att: Tensor, meta: dict[str, Any], rows_selected: bool = False) -> TokenLayout:
        """The layout of a captured (B, heads, Nq, Nk) tensor and its ``cache.meta[name]``;
        ``rows_selected``: the rows are the patch rows of ``meta["queries"]`` only."""
        qg = tuple(int(v) for v in meta["query_grid"])
        kg = tuple(int(v) for v in (meta.get("key_grid") or qg))
        n_prefix = int(meta.get("prefix_tokens", 0))
        key_prefix = int(att.shape[-1]) - kg[0] * kg[1]
        if key_prefix < 0 or (not rows_selected and att.shape[-2] != n_prefix + qg[0] * qg[1]):
            raise ValueError(
                f"attention {tuple(att.shape)} does not hold {n_prefix} prefix tokens and a "
                f"{qg[0]}x{qg[1]} query grid over a {kg[0]}x{kg[1]} key grid"
            )
        names = list(meta.get("prefix_names") or [])
        names = names if len(names) == n_prefix else [f"prefix {i}" for i in range(n_prefix)]
        return cls(n_prefix, key_prefix, qg, kg, tuple(names))  # type: ignore[arg-type]

    def patch_rows(self, cells: Sequence[tuple[int, int]] | None = None) -> list[int]:
        """Token rows of the query-grid cells (all patches in raster order when None)."""
        gh, gw = self.query_grid
        if cells is None:
            return list(range(self.prefix, self.prefix + gh * gw))
        return [self.prefix + int(y) * gw + int(x) for y, x in cells]

    def key_maps(self, rows: Tensor) -> Tensor:
        """(..., Nk) rows -> (..., kh, kw): their weights on the key patches."""
        return rows[..., self.key_prefix :].reshape(*rows.shape[:-1], *self.key_grid)

    def prefix_keys(self, rows: Tensor) -> Tensor:
        """(..., Nk) rows -> (..., key_prefix): their weights on the prefix key tokens."""
        return rows[..., : self.key_prefix]


def is_windowed(kind: str) -> bool:
    """True for per-head kinds whose rows cover a window of keys (``window``: Swin, ``halo``:
    dims (batch, head, query, window_key)); :func:`window_rows` puts them on the key grid."""
    return get_kind(kind).dims == ("batch", "head", "query", "window_key")


def window_rows(att: Tensor, meta: dict[str, Any]) -> Tensor:
    """Windowed rows (B, heads, Q, K) -> (B, heads, Q, kh * kw) on the key grid, each window
    slot at its key position (``meta["key_index"]``, of the ``query_index`` rows when only
    some queries were captured; padding slots dropped: :func:`attnviz.capture.window_to_grid`)."""
    key_index = meta["key_index"]
    if meta.get("query_index") is not None:
        key_index = key_index[meta["query_index"]]
    grid = tuple(int(v) for v in meta["key_grid"])
    return window_to_grid(att, key_index, grid).flatten(-2)
