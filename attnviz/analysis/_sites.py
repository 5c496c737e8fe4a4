"""Site choice shared by the analyses: sites of some kinds, by name or alias, or a default."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from torch import nn

from ..capture import Site, find_sites
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
