"""Intervention policies: what :func:`attnviz.intervene` puts in place of a site's attention.

A policy maps the attention a module computed (canonical layout of its kind, batch first) to
the attention the module goes on to use. Each is a small class in a string registry, so the
CLI and saved results name them: ``"constant:1"``, ``"mean"``, ``"shuffle"``, ``"uniform"``,
``"query_mean"``, ``"branch:0"``, ``"patch"``.

================  =====================================================  ====================
policy            replacement                                            kinds (roles)
================  =====================================================  ====================
``constant:v``    every entry = v (SE gate = 1 removes the excitation)   all
``remove``        gates and sigmoid maps 1, distributions uniform: the   all
                  module without its attention (defined after Uniform)
``mean``          the mean attention over a reference set of images,     all
                  per channel / position: keeps the average gain,
                  removes the input dependence (needs ``reference``)
``shuffle[:s]``   the attention of another image of the batch (a         all
                  derangement seeded by s): keeps the distribution,
                  breaks the link to this image
``uniform``       distributions uniform (Non-local rows 1/N_k, GC 1/HW,  branch, spatial,
                  SK 1/M); sigmoid maps: their per-image spatial mean    query, other
                                                                         distributions
``query_mean``    every per-query map = the mean over queries (GCNet's   query
                  simplification; rows then identical)
``branch:k``      selection one-hot on branch k (SK, split attention)    branch
``patch``         the attention of a forward on another input            all
                  (interchange intervention; needs ``source``)
================  =====================================================  ====================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import AttnvizError
from .kinds import Kind, get_kind
from .site import Site


class PolicyError(AttnvizError, ValueError):
    """A policy that is unknown, malformed, or that a site's kind cannot take."""


@dataclass
class PolicyContext:
    """What a policy may use besides the attention: the site, its kind, and the reference
    (mean, no batch axis) or source (patch, batch first) tensors given to ``intervene``."""

    site: Site
    kind: Kind
    reference: Tensor | None = None
    source: Tensor | None = None


class Policy:
    """Base of every policy: ``check(site)`` before any forward, ``apply(att, ctx)`` in it."""

    name: ClassVar[str] = ""
    roles: ClassVar[tuple[str, ...] | None] = None  # roles it applies to (None: all)
    needs: ClassVar[str | None] = None  # "reference" (mean) or "source" (patch)

    @property
    def spec(self) -> str:
        """The registry string of this policy (``"constant:1"``)."""
        return self.name

    def __str__(self) -> str:
        return self.spec

    def __repr__(self) -> str:
        return f"Policy({self.spec!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)

    def check(self, site: Site) -> None:
        """Raise :class:`PolicyError` if this policy cannot apply to the site's kind."""
        kind = get_kind(site.kind)
        if self.roles is not None and kind.role not in self.roles:
            takes = ", ".join(p for p, cls in POLICIES.items() if cls.accepts(kind))
            raise PolicyError(
                f"policy {self.spec!r} cannot apply to site {site.alias} ({site.name}) of kind "
                f"{site.kind!r} (role {kind.role}); it takes kinds of role "
                f"{', '.join(self.roles)}. Policies for this site: {takes}"
            )

    @classmethod
    def accepts(cls, kind: Kind) -> bool:
        return cls.roles is None or kind.role in cls.roles

    def apply(self, att: Tensor, ctx: PolicyContext) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


POLICIES: dict[str, type[Policy]] = {}


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Add a policy class to the registry under ``cls.name``."""
    POLICIES[cls.name] = cls
    return cls


def _number(text: str, spec: str, cast: Callable[[str], float | int]) -> float | int:
    try:
        return cast(text)
    except ValueError:
        what = "a whole number" if cast is int else "a number"
        raise PolicyError(f"policy {spec!r}: {text!r} is not {what}") from None


def get_policy(spec: str | Policy) -> Policy:
    """A policy from its registry string (``"constant:1"``, ``"branch:0"``) or as given."""
    if isinstance(spec, Policy):
        return spec
    if not isinstance(spec, str):
        raise PolicyError(f"a policy is a name like 'constant:1' or a Policy, got {spec!r}")
    name, sep, arg = spec.strip().partition(":")
    cls = POLICIES.get(name)
    if cls is None:
        raise PolicyError(f"unknown policy {spec!r}; valid policies: {', '.join(POLICY_HELP)}")
    return cls.parse(arg if sep else None, spec)


# ----------------------------------------------------------------------------- the policies
def _no_argument(cls: type[Policy], arg: str | None, spec: str) -> Policy:
    if arg is not None:
        raise PolicyError(f"policy {cls.name!r} takes no argument, got {spec!r}")
    return cls()


def _filled(att: Tensor, value: float) -> Tensor:
    """``value`` everywhere, as a broadcast view (no full-size allocation: a Non-local map of
    8 x 3136 x 3136 is 315 MB). Replacements may be views: a module that changes its
    attention in place then fails loudly instead of using a half-written tensor."""
    return torch.full((), value, dtype=att.dtype, device=att.device).expand_as(att)


def _distribution_axes(kind: Kind) -> tuple[int, ...]:
    """Axes a distribution kind's entries sum to 1 over: (H, W) maps, else the last axis."""
    return (-2, -1) if kind.dims[-2:] == ("height", "width") else (-1,)


@register_policy
class Constant(Policy):
    """Every entry equal to ``value``: ``constant:1`` on a gate removes the excitation."""

    name = "constant"

    def __init__(self, value: float):
        self.value = float(value)

    @property
    def spec(self) -> str:
        return f"constant:{self.value:g}"

    @classmethod
    def parse(cls, arg: str | None, spec: str) -> Policy:
        if arg is None:
            raise PolicyError(f"policy 'constant' needs a value, e.g. 'constant:1', got {spec!r}")
        return cls(_number(arg, spec, float))

    def apply(self, att: Tensor, ctx: PolicyContext) -> Tensor:
        return _filled(att, self.value)


@register_policy
class Remove(Policy):
    """The attention taken out: gates and sigmoid maps = 1 (the module passes its input
    through), distributions uniform (SK 1/M, Non-local rows 1/N_k, GC 1/HW: plain averaging)."""

    name = "remove"
    parse = classmethod(_no_argument)

    def apply(self, att: Tensor, ctx: PolicyContext) -> Tensor:
        if ctx.kind.is_distribution or ctx.kind.role == "branch":
            return Uniform().apply(att, ctx)
        return torch.ones_like(att)


@register_policy
class Mean(Policy):
    """The site's mean attention over a reference set (``intervene(..., reference=)``)."""

    name = "mean"
    needs = "reference"
    parse = classmethod(_no_argument)

    def apply(self, att: Tensor, ctx: PolicyContext) -> Tensor:
        ref = ctx.reference
        if ref is None:
            raise PolicyError(
                f"policy 'mean' at {ctx.site.alias} needs its reference mean: "
                "intervene(..., reference={site: mean attention without the batch axis})"
            )
        if tuple(ref.shape) != tuple(att.shape[1:]):
            raise PolicyError(
                f"the reference mean of {ctx.site.alias} has shape {tuple(ref.shape)}, the "
                f"attention here is {tuple(att.shape[1:])} per image (another input size?)"
            )
        return ref.to(att.device, att.dtype).expand_as(att)


@register_policy
class Shuffle(Policy):
    """The attention of another image of the same batch: a derangement seeded by ``seed``."""

    name = "shuffle"

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    @property
    def spec(self) -> str:
        return "shuffle" if self.seed == 0 else f"shuffle:{self.seed}"

    @classmethod
    def parse(cls, arg: str | None, spec: str) -> Policy:
        return cls(0 if arg is None else _number(arg, spec, int))

    def partners(self, n: int) -> Tensor:
        """Index of the image whose attention image i gets; never i itself."""
        if n < 2:
            raise PolicyError("policy 'shuffle' needs a batch of at least 2 images")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        out = torch.empty(n, dtype=torch.long)
        out[order] = order.roll(-1)  # a cycle through a random order: no fixed point
        return out

    def apply(self, att: Tensor, ctx: PolicyContext) -> Tensor:
        return att[self.partners(att.shape[0]).to(att.device)]


@register_policy
class Uniform(Policy):
    """Distributions made uniform (1/N over their axes); a sigmoid map its per-image mean."""

    name = "uniform"
    roles = ("branch", "spatial", "query", "other")
    parse = classmethod(_no_argument)

    def check(self, site: Site) -> None:
        super().check(site)
        kind = get_kind(site.kind)
        if kind.role == "other" and not kind.is_distribution:
            raise PolicyError(
                f"policy 'uniform' cannot apply to site {site.alias} of kind {site.kind!r}: "
                "its attention is not a distribution or a spatial map; use constant or mean"
            )

    def apply(self, att: Tensor, ctx: PolicyContext) -> Tensor:
        kind = ctx.kind
        if kind.role == "branch":  # softmax over the M branches (axis 1)
            return _filled(att, 1.0 / att.shape[1])
        axes = _distribution_axes(kind) if kind.role != "spatial" else (-2, -1)
        if kind.is_distribution:
            n = 1
            for a in axes:
                n *= att.shape[a]
            return _filled(att, 1.0 / n)
        return att.mean(dim=axes, keepdim=True).expand_as(att)


@register_policy
class QueryMean(Policy):
    """Every query's map replaced by the mean map over queries (GCNet's simplification)."""

    name = "query_mean"
    roles = ("query",)
    parse = classmethod(_no_argument)

    def apply(self, att: Tensor, ctx: PolicyContext) -> Tensor:
        axis = ctx.kind.query_axis
        return att.mean(dim=axis, keepdim=True).expand_as(att)


@register_policy
class Branch(Policy):
    """The selection one-hot on branch ``k`` (SK: 0 = 3x3, 1 = dilated; split attention)."""

    name = "branch"
    roles = ("branch",)

    def __init__(self, k: int):
        if k < 0:
            raise PolicyError(f"policy 'branch' needs a branch index >= 0, got {k}")
        self.k = int(k)

    @property
    def spec(self) -> str:
        return f"branch:{self.k}"

    @classmethod
    def parse(cls, arg: str | None, spec: str) -> Policy:
        if arg is None:
            raise PolicyError(f"policy 'branch' needs a branch index, e.g. 'branch:0': {spec!r}")
        return cls(_number(arg, spec, int))

    def check(self, site: Site) -> None:
        super().check(site)
        fields = site.info.get("branch_receptive_field")
        m = len(fields) if fields else site.info.get("radix")
        if m is not None and self.k >= m:
            raise PolicyError(
                f"policy {self.spec!r}: site {site.alias} has {m} branches (0..{m - 1})"
            )

    def apply(self, att: Tensor, ctx: PolicyContext) -> Tensor:
        if self.k >= att.shape[1]:
            raise PolicyError(
                f"policy {self.spec!r}: site {ctx.site.alias} has {att.shape[1]} branches"
            )
        out = torch.zeros_like(att)
        out[:, self.k] = 1.0
        return out


@register_policy
class Patch(Policy):
    """The attention of a forward on another input (``intervene(..., source=)``)."""

    name = "patch"
    needs = "source"
    parse = classmethod(_no_argument)

    def apply(self, att: Tensor, ctx: PolicyContext) -> Tensor:
        src = ctx.source
        if src is None:
            raise PolicyError(
                f"policy 'patch' at {ctx.site.alias} needs its source: intervene(..., "
                "source={site: attention captured on the other input})"
            )
        if tuple(src.shape) != tuple(att.shape):
            raise PolicyError(
                f"patch source of {ctx.site.alias} has shape {tuple(src.shape)}, the attention "
                f"here is {tuple(att.shape)}: the source must come from inputs of the same "
                "batch size and image size"
            )
        return src.to(att.device, att.dtype).clone()


#: One line per policy, for error messages and ``--help``.
POLICY_HELP = (
    "constant:V",
    "remove",
    "mean",
    "shuffle[:SEED]",
    "uniform",
    "query_mean",
    "branch:K",
    "patch",
)
