"""Kinds of attention site: the canonical layout of each captured tensor, and its facts.

Every adapter maps its implementation's raw tensor to the canonical layout of its kind,
so analyses never see implementation details (trailing 1x1 axes, (B, 1, C) ECA gates, timm's
(B * heads, ...) batching...). A kind carries its own facts: the axis names (``dims``), its
``role`` (what an analysis may do with it), whether rows along the last axis are
distributions, and for kinds made of several parts (coordinate attention) the part names.

Roles:

* ``"channel"``: a (B, C) channel gate (se, eca, cbam_channel, cse, splat_gate, ge, ...);
* ``"branch"``: (B, M, C) weights over M branches, softmax over M (sk, splat);
* ``"spatial"``: (B, H, W) maps (cbam_spatial, gc, sse, bam_spatial);
* ``"query"``: per-query maps whose rows are queries (nl, sa, pam, bottleneck, halo, token,
  window);
  ``queries=`` of :func:`attnviz.capture` keeps only selected rows (axis ``dims.index("query")``);
* ``"other"``: everything else (full (B, C, H, W) masks, lambda keys, coordinate gates...).

All built-in kinds are defined here, so looking a kind up never needs the adapters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Canonicalize = Callable[[Tensor], Tensor]

ROLES = ("channel", "branch", "spatial", "query", "other")


def per_channel(t: Tensor) -> Tensor:
    """(B, C, 1, 1), (B, 1, C) or (B, C) -> (B, C)."""
    return t.reshape(t.shape[0], -1)


def branches(t: Tensor) -> Tensor:
    """(B, M, C, 1, 1) or (B, M, C) -> (B, M, C)."""
    return t.reshape(t.shape[0], t.shape[1], -1)


def spatial_map(t: Tensor) -> Tensor:
    """(B, 1, H, W) or (B, H, W) -> (B, H, W)."""
    if t.dim() == 4:
        if t.shape[1] != 1:
            raise ValueError(f"spatial attention must have one channel, got shape {tuple(t.shape)}")
        return t[:, 0]
    return t


def full_map(t: Tensor) -> Tensor:
    """(B, C, H, W), kept as is (a broadcastable (B, C, 1, 1) map is not expected here)."""
    if t.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) map, got {tuple(t.shape)}")
    return t


def as_is(t: Tensor) -> Tensor:
    return t


@dataclass(frozen=True)
class Kind:
    """One kind of attention: name, alias prefix, axis names, canonical layout and facts.

    ``role`` is one of ``"channel"``, ``"branch"``, ``"spatial"``, ``"query"``, ``"other"``
    (see the module docstring); ``is_distribution``: rows along the last axis sum to 1;
    ``parts``: for a tensor made of named parts along its last axis (coordinate attention's
    height and width gates), their names; the sizes of the parts of each capture are in
    ``cache.meta[name]["parts"]`` and ``AttentionCache.parts(name)`` splits them.
    ``value_range``: the interval every value lies in when the kind is bounded (a sigmoid
    gate: (0, 1)); None for logits and other unbounded values.
    """

    name: str
    prefix: str
    dims: tuple[str, ...]
    canonicalize: Canonicalize
    description: str
    is_distribution: bool = False
    role: str = "other"
    parts: tuple[str, ...] = ()
    value_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(
                f"role of kind {self.name!r} must be one of {ROLES}, got {self.role!r}"
            )
        if self.role == "query" and "query" not in self.dims:
            raise ValueError(f"per-query kind {self.name!r} needs a 'query' axis in dims")

    @property
    def per_query(self) -> bool:
        """True for per-query maps (rows are query positions); ``queries=`` applies."""
        return self.role == "query"

    @property
    def query_axis(self) -> int | None:
        """Axis of the query rows (counted from the front), or None for other kinds."""
        return self.dims.index("query") if self.per_query else None


KINDS: dict[str, Kind] = {}

#: Bumped whenever a kind or an adapter is registered: site discovery caches check it.
REGISTRY_CHANGES = [0]


def register_kind(kind: Kind) -> Kind:
    """Add a kind (or replace one of the same name) and return it."""
    KINDS[kind.name] = kind
    REGISTRY_CHANGES[0] += 1
    return kind


def get_kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown attention kind {name!r}; valid kinds: {sorted(KINDS)}") from None


def kinds_with_role(role: str) -> tuple[str, ...]:
    """Names of the registered kinds with this role, sorted (``"channel"``, ``"query"``...)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles: {ROLES}")
    return tuple(sorted(k.name for k in KINDS.values() if k.role == role))


def is_query_kind(kind: str) -> bool:
    """True for per-query kinds (role ``"query"``: nl, sa, pam, bottleneck, halo, ...)."""
    return get_kind(kind).per_query


def query_kinds() -> tuple[str, ...]:
    """All per-query kinds, sorted."""
    return kinds_with_role("query")


def window_to_grid(att: Tensor, key_index: Tensor, key_grid: tuple[int, int]) -> Tensor:
    """Scatter windowed attention (..., Nq, K) onto the key grid: (..., Nq, Hk, Wk).

    ``key_index`` (Nq, K) holds each window slot's flat key position (``y * Wk + x``), -1 for
    slots outside the feature map (zero padding); those slots are dropped. A halo site's
    ``cache.meta[name]["key_index"]`` is such an index (use its ``query_index`` rows when
    ``queries=`` was given).
    """
    hk, wk = key_grid
    nq, k = key_index.shape
    if att.shape[-2:] != (nq, k):
        raise ValueError(f"attention {tuple(att.shape)} does not match key_index {(nq, k)}")
    valid = key_index >= 0
    idx = torch.where(valid, key_index, torch.full_like(key_index, hk * wk))
    out = att.new_zeros(*att.shape[:-1], hk * wk + 1)
    out.scatter_add_(-1, idx.expand_as(att), att * valid.to(att.dtype))
    return out[..., : hk * wk].reshape(*att.shape[:-1], hk, wk)


_DIST = {"is_distribution": True}
_GATE = {"role": "channel", "value_range": (0.0, 1.0)}  # a sigmoid (or hard-sigmoid) gate

for _kind in (
    # -- channel gates (B, C) ---------------------------------------------------------------
    Kind(
        "se",
        "SE",
        ("batch", "channel"),
        per_channel,
        "squeeze-and-excitation gate (B, C)",
        **_GATE,
    ),
    Kind(
        "eca",
        "ECA",
        ("batch", "channel"),
        per_channel,
        "efficient channel attention gate (B, C); timm EcaModule (eca, ecam) and CecaModule",
        **_GATE,
    ),
    Kind(
        "cbam_channel",
        "CBAMC",
        ("batch", "channel"),
        per_channel,
        "CBAM channel gate (B, C)",
        **_GATE,
    ),
    Kind(
        "cse",
        "CSE",
        ("batch", "channel"),
        per_channel,
        "scSE channel gate (cSE), sigmoid",
        **_GATE,
    ),
    Kind(
        "bam_channel",
        "BAMC",
        ("batch", "channel"),
        per_channel,
        "BAM channel branch M_c before the sigmoid (logits)",
        role="channel",
    ),
    Kind(
        "splat_gate",
        "SPLAT",
        ("batch", "channel"),
        per_channel,
        "ResNeSt split attention with radix 1: sigmoid channel gate (B, C)",
        **_GATE,
    ),
    Kind(
        "ge",
        "GE",
        ("batch", "channel"),
        per_channel,
        "gather-excite gate with global extent (extent 0): (B, C) channel gate",
        **_GATE,
    ),
    # -- branch weights (B, M, C) -----------------------------------------------------------
    Kind(
        "sk",
        "SK",
        ("batch", "branch", "channel"),
        branches,
        "selective-kernel branch weights, softmax over branches; branch 0 = smallest field",
        role="branch",
    ),
    Kind(
        "splat",
        "SPLAT",
        ("batch", "branch", "channel"),
        branches,
        "ResNeSt split attention (radix > 1): (B, R, C), softmax over the R radix splits; "
        "the splits share one kernel size (branch index is not a receptive field)",
        role="branch",
    ),
    # -- spatial maps (B, H, W) -------------------------------------------------------------
    Kind(
        "cbam_spatial",
        "CBAMS",
        ("batch", "height", "width"),
        spatial_map,
        "CBAM spatial gate (B, H, W)",
        role="spatial",
    ),
    Kind(
        "gc",
        "GC",
        ("batch", "height", "width"),
        spatial_map,
        "global-context attention, softmax over all H*W positions",
        role="spatial",
        **_DIST,
    ),
    Kind(
        "sse",
        "SSE",
        ("batch", "height", "width"),
        spatial_map,
        "scSE spatial gate (sSE), sigmoid of a 1x1 conv",
        role="spatial",
    ),
    Kind(
        "bam_spatial",
        "BAMS",
        ("batch", "height", "width"),
        spatial_map,
        "BAM spatial branch M_s before the sigmoid (logits)",
        role="spatial",
    ),
    Kind(
        "additive",
        "ADD",
        ("batch", "height", "width"),
        spatial_map,
        "efficient additive attention (SwiftFormer) (B, H, W): per-token scores alpha, "
        "L2-normalised over the H*W tokens (signed, sum of squares 1), that pool the queries "
        "into one global query g = sum alpha_i q_i; no query-key map exists; role other, not "
        "spatial: the sign is not 'attended or not' (|alpha_i| is token i's weight in g)",
    ),
    # -- per-query maps ---------------------------------------------------------------------
    Kind(
        "nl",
        "NL",
        ("batch", "query", "key"),
        as_is,
        "non-local attention (B, Nq, Nk), one row per query position, softmax over keys",
        role="query",
        **_DIST,
    ),
    Kind(
        "sa",
        "SA",
        ("batch", "query", "key"),
        as_is,
        "SAGAN self-attention (B, Nq, Nk), softmax over key positions, one row per query",
        role="query",
        **_DIST,
    ),
    Kind(
        "pam",
        "PAM",
        ("batch", "query", "key"),
        as_is,
        "DANet position attention (B, Nq, Nk), softmax over keys, one row per query",
        role="query",
        **_DIST,
    ),
    Kind(
        "bottleneck",
        "BOT",
        ("batch", "head", "query", "key"),
        as_is,
        "BoTNet bottleneck self-attention (B, heads, Nq, Nk): softmax over all key positions "
        "of q.k logits plus relative-position logits; rows are queries (query axis -2), "
        "query and key grids are the input's H x W",
        role="query",
        **_DIST,
    ),
    Kind(
        "halo",
        "HALO",
        ("batch", "head", "query", "window_key"),
        as_is,
        "HaloNet blocked local self-attention (B, heads, Nq, K): one row per query position "
        "of the (strided) query grid in raster order, softmax over the K = win x win keys of "
        "its block's haloed window (window raster order, zero-padded slots outside the map "
        "included); meta key_index (Nq, K) maps slots to key-grid positions (-1 = padding)",
        role="query",
        **_DIST,
    ),
    Kind(
        "token",
        "TOK",
        ("batch", "head", "query", "key"),
        as_is,
        "transformer token attention (B, heads, Nq, Nk), softmax over keys, bias/mask included: "
        "tokens are meta prefix_tokens class/register/distillation tokens (prefix_names) then "
        "the patch grid (query_grid, key_grid) in raster order; queries= keeps patch rows",
        role="query",
        **_DIST,
    ),
    Kind(
        "window",
        "WIN",
        ("batch", "head", "query", "window_key"),
        as_is,
        "window attention (Swin, Swin V2, MaxViT block/grid partitions, DaViT, GC ViT) "
        "(B, heads, Nq, K): one row per position of the query grid in raster order, softmax "
        "over the K slots of its window (relative-position bias and shifted-window mask "
        "included); meta key_index (Nq, K) maps slots to image positions (shift undone, -1 = "
        "padding), window, shift (MaxViT: partition; GC ViT: query local/global)",
        role="query",
        **_DIST,
    ),
    Kind(
        "talking_heads",
        "TH",
        ("batch", "head", "query", "key"),
        as_is,
        "talking-heads attention (CaiT) (B, heads, Nq, Nk): the weights multiplied with v, "
        "softmax(heads mixed before) then mixed across heads again, so rows need not sum to "
        "1; token layout as kind token (prefix_tokens, query_grid, key_grid)",
        role="query",
    ),
    # -- other --------------------------------------------------------------------------------
    Kind(
        "class_token",
        "CLS",
        ("batch", "head", "key"),
        as_is,
        "class attention (CaiT, XCiT) (B, heads, Nk): the class token is the only query, "
        "softmax over the keys: prefix tokens (prefix_tokens) then the patch grid (key_grid)",
        **_DIST,
    ),
    Kind(
        "outlook",
        "OUT",
        ("batch", "head", "window", "slot", "window_key"),
        as_is,
        "VOLO outlook attention (B, heads, Nw, K*K, K*K): per K x K window (centres on meta "
        "window_grid, raster order) a softmax over its K*K slots for each of its K*K output "
        "slots, generated from the centre token by a linear layer (no keys); outputs of "
        "overlapping windows are summed (fold); meta key_index (Nw, K*K) maps slots to "
        "key_grid positions (-1 = padding); queries= does not apply",
        **_DIST,
    ),
    Kind(
        "xca",
        "XCA",
        ("batch", "head", "channel", "source_channel"),
        as_is,
        "channel-by-channel attention (B, heads, d, d): per head (channel group) of d "
        "channels, one row per output channel, softmax over the d source channels, the same "
        "mix at every token (XCiT / EdgeNeXt cross-covariance attention; DaViT channel group "
        "attention, meta mixes); no spatial axis, queries= does not apply",
        **_DIST,
    ),
    Kind(
        "cam",
        "CAM",
        ("batch", "channel", "source_channel"),
        as_is,
        "DANet channel attention, one row per output channel, softmax over source channels",
        **_DIST,
    ),
    Kind(
        "bam",
        "BAM",
        ("batch", "channel", "height", "width"),
        full_map,
        "BAM combined map M = sigmoid(M_c + M_s), F' = F + F * M",
    ),
    Kind(
        "ram",
        "RAM",
        ("batch", "channel", "height", "width"),
        full_map,
        "residual-attention soft mask M in [0, 1], output (1 + M) * T",
    ),
    Kind(
        "ion",
        "ION",
        ("batch", "direction", "height", "width"),
        as_is,
        "Inside-Outside Net context (B, 4, H, W): per position, each sweep direction's share "
        "||t_d|| / sum ||t_d'|| of the context the block adds (from_left, from_right, "
        "from_above, from_below; the shares sum to 1 over the direction axis); a decomposition "
        "of the context, not a gate the block applies",
    ),
    Kind(
        "ion_sweep",
        "IONS",
        ("batch", "direction", "height", "width"),
        as_is,
        "Inside-Outside Net IRNN sweep magnitudes (B, 4, H, W): ||h_d|| of each direction's "
        "hidden state per position (from_left, from_right, from_above, from_below)",
    ),
    Kind(
        "stn_theta",
        "STN",
        ("batch", "row", "column"),
        as_is,
        "spatial-transformer affine matrix theta (target -> source, normalised coordinates)",
    ),
    Kind(
        "stn_grid",
        "STNG",
        ("batch", "height", "width", "xy"),
        as_is,
        "spatial-transformer sampling grid: source (x, y) in [-1, 1] per output pixel",
    ),
    Kind(
        "ge_map",
        "GE",
        ("batch", "channel", "height", "width"),
        full_map,
        "gather-excite gate with local extent (extent > 0): (B, C, H, W), the gathered "
        "context resized to the input and gated",
    ),
    Kind(
        "lambda",
        "LAMBDA",
        ("batch", "key_channel", "height", "width"),
        full_map,
        "lambda layer keys: softmax over all H*W positions, one map per key channel (B, K, H, "
        "W); a lambda layer has no per-query attention map (queries read a summary "
        "'lambda' of the context)",
        **_DIST,
    ),
    Kind(
        "ssd",
        "SSD",
        ("batch", "state", "height", "width"),
        full_map,
        "EfficientViM HSM-SSD state weights (B, S, H, W): per hidden state s a softmax over all "
        "H*W positions (of dt + A); state h_s = sum_n x_n a_sn b_sn pools the input with a_s "
        "times the unnormalised b_s, outputs read the states back by c (no softmax); no "
        "per-query map",
        **_DIST,
    ),
    Kind(
        "factor",
        "FACTOR",
        ("batch", "head", "key_channel", "key"),
        as_is,
        "CoaT factorized attention Q (softmax_N(K)^T V) (B, heads, Ch, N): per head one row per "
        "key channel, a softmax over the N tokens (prefix tokens, meta prefix_tokens, then the "
        "key_grid in raster order) from which that channel pools the values; no query-key map "
        "exists (like lambda's keys)",
        **_DIST,
    ),
    Kind(
        "coord",
        "COORD",
        ("batch", "channel", "position"),
        as_is,
        "coordinate attention (timm CoordAttn): height gate (B, C, H) and width gate "
        "(B, C, W), concatenated along the last axis as (B, C, H + W); "
        "AttentionCache.parts(name) splits them; output = x * a_h * a_w",
        parts=("height", "width"),
    ),
    Kind(
        "ela",
        "ELA",
        ("batch", "channel", "position"),
        as_is,
        "efficient local attention: height gate (B, C, H) and width gate (B, C, W) "
        "concatenated as (B, C, H + W), like coord; output = x * a_h * a_w",
        parts=("height", "width"),
    ),
    Kind(
        "scoord",
        "SCOORD",
        ("batch", "channel", "height", "width"),
        full_map,
        "simple coordinate attention: gate(a_h + a_w) as one (B, C, H, W) map",
    ),
    Kind(
        "strip",
        "STRIP",
        ("batch", "channel", "height", "width"),
        full_map,
        "strip attention: gate(x_h + x_w) as one (B, C, H, W) map",
    ),
    Kind(
        "bat",
        "BAT",
        ("batch", "axis", "group", "out", "in"),
        as_is,
        "bilinear attention transform (BAT): (B, 2, groups, bs, bs); axis 0 = P over rows "
        "(height), axis 1 = Q^T over columns (width); each row sums to 1; y = P x Q on the "
        "block grid (P, Q expanded to H x W by block repetition)",
        **_DIST,
    ),
):
    register_kind(_kind)
