"""Pairwise statistics of a set of vectors, as plain tensor functions (GCNet, Cao et al. 2019).

GCNet Table 1 measures how much a set of N vectors v_1..v_N (block inputs x_i, block outputs
before the residual o_i, or attention rows w_i, one per query position i) depends on i:

* average cosine distance  avg_dist = 1/|P| sum_{(i,j) in P} (1 - cos(v_i, v_j)) / 2;
* average Jensen-Shannon divergence of the rows, when they are probability distributions.

Pairs P: the paper normalises by 1/N^2, i.e. **all ordered pairs including i = j** (which
contribute distance 0). That is the default here (``include_diagonal=True``); with
``include_diagonal=False`` the mean runs over the N(N-1) pairs i != j.

Cosine in O(N*K): with u_i = v_i / ||v_i|| and m = mean_i u_i,
sum_{i,j} cos(v_i, v_j) = sum_{i,j} u_i . u_j = N^2 ||m||^2, so the all-pairs mean cosine is
||m||^2 and the off-diagonal mean is (N^2 ||m||^2 - sum_i ||u_i||^2) / (N(N-1)). m is one
matrix-vector product (1/||v_i||)_i^T V / N, so the normalised vectors are never stored. Zero
vectors get u_i = 0 (as ``torch.nn.functional.normalize``): their cosine with anything
(themselves included) counts as 0.

JSD, exact: JSD(p, q) = H((p + q) / 2) - (H(p) + H(q)) / 2 with Shannon entropy H in nats, so
the all-pairs mean is mean_{i,j} H((p_i + p_j) / 2) - mean_i H(p_i). The mixture entropies
have no closed form: they are evaluated in blocks of query rows (i-block x all j), using the
symmetry H(m_ij) = H(m_ji) to visit only j >= i (about N^2 K / 2 entropy terms). Time
O(N^2 K); memory O(block * N * K), with block <= N / 8 rows and at most ``max_elements``
numbers per block (at least one row).

JSD, sampled (:func:`sampled_jsd`): the mean over a seeded uniform sample of pairs, with its
standard error; O(pairs * K). Used above a row count where the exact O(N^2 K) is too slow.

Degeneracy of attention rows (:func:`row_degeneracy`): mean row entropy (nats), effective
number of keys exp(mean entropy), median largest weight and the number of distinct argmax
keys. Near one-hot rows make cosine distance and JSD read "query-dependent" because the maps
are spikes at different keys, not because they are broad maps that differ.

Nulls and corrections (every analysis's, in one place): the paired difference and exact sign
test; :func:`holm` (step-down adjusted p over a table's family of tests); the exact chance IoU
of top-k regions on a given grid (:func:`top_k_iou_chance`, hypergeometric overlap); a
permutation null of any two-map statistic that keeps the maps' values and ties
(:func:`permutation_null`, every order for few cells, e.g. Spearman on a 2x2 grid); and the
percentile bootstrap over items (:func:`bootstrap_ci`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

DEFAULT_MAX_ELEMENTS = 1 << 24  # 16M numbers per block (64 MB in float32, x2 temporaries)


def _as_2d(v: Tensor) -> Tensor:
    if v.dim() != 2:
        raise ValueError(f"expected a (N, K) matrix of N vectors, got shape {tuple(v.shape)}")
    if v.shape[0] < 1:
        raise ValueError("need at least one vector")
    return v.to(torch.float64)


def mean_pairwise_cosine(v: Tensor, *, include_diagonal: bool = True) -> float:
    """Mean of cos(v_i, v_j) over pairs, in O(N*K) via ||mean_i v_i/||v_i||||^2 (see module).

    Computed in ``v``'s precision (float32 for captured tensors: measured |error| ~1e-8 against
    the float64 pairwise value at N = 3136, K = 256), the final sums in float64.
    """
    if v.dim() != 2 or v.shape[0] < 1:
        raise ValueError(f"expected a (N, K) matrix of N >= 1 vectors, got shape {tuple(v.shape)}")
    if v.dtype not in (torch.float32, torch.float64):
        v = v.to(torch.float64)
    n = v.shape[0]
    norms = torch.linalg.vector_norm(v, dim=1)
    inv = torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))
    m = (inv @ v).double() / n  # mean of the normalised vectors, without materialising them
    total = float(m.dot(m)) * n * n
    if include_diagonal:
        return total / (n * n)
    if n < 2:
        return float("nan")
    n_unit = float((inv.double() * norms.double()).square().sum())  # sum_i ||u_i||^2
    return (total - n_unit) / (n * (n - 1))


def avg_cosine_distance(v: Tensor, *, include_diagonal: bool = True) -> float:
    """GCNet's avg_dist = mean over pairs of (1 - cos(v_i, v_j)) / 2, in O(N*K)."""
    return (1.0 - mean_pairwise_cosine(v, include_diagonal=include_diagonal)) / 2.0


def row_entropy(p: Tensor) -> Tensor:
    """Shannon entropy (nats) of each row of a (N, K) matrix of distributions (0 log 0 = 0)."""
    p = _as_2d(p)
    return -torch.special.xlogy(p, p).sum(dim=1)


def is_distribution(p: Tensor, *, atol: float = 1e-4) -> bool:
    """True if every row is non-negative and sums to 1 (within ``atol``)."""
    p = _as_2d(p)
    return bool((p >= 0).all()) and bool(
        torch.allclose(p.sum(dim=1), torch.ones_like(p[:, 0]), atol=atol)
    )


def _neg_sum_xlogx(m: Tensor, tiny: float) -> Tensor:
    """-sum_k m_k log m_k over the last axis (0 log 0 = 0) in m's dtype, returned as float64.

    ``m.clamp_min`` makes the one temporary; ``m`` itself is not modified.
    """
    return m.clamp_min(tiny).log_().mul_(m).sum(dim=-1).double().neg_()


def avg_jsd(
    p: Tensor,
    *,
    include_diagonal: bool = True,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    dtype: torch.dtype = torch.float32,
) -> float:
    """Mean Jensen-Shannon divergence (nats, in [0, ln 2]) over pairs of rows of ``p``.

    Exact, without an N x N x K tensor: blocks of query rows against the rows j >= i (see
    the module docstring); O(N^2 K) time, O(block * N * K) memory. Rows must be distributions.
    Each entropy H(m_ij) is evaluated in ``dtype`` (float32 by default, the precision of
    captured attention: measured |error| <= 2e-8 against float64 at N = K = 256, about 2x
    faster); the sums over pairs are float64. ``dtype=torch.float64`` for double throughout.
    """
    p = _as_2d(p)
    if not is_distribution(p):
        raise ValueError("avg_jsd needs rows that are probability distributions")
    n, k = p.shape
    if not include_diagonal and n < 2:
        return float("nan")
    p = p.to(dtype)
    tiny = float(torch.finfo(dtype).tiny)
    h_sum = float(_neg_sum_xlogx(p.clone(), tiny).sum())
    # small enough blocks that the j >= i symmetry saves ~half the work, within the budget
    block = max(1, min(int(max_elements // max(n * k, 1)), math.ceil(n / 8)))
    mix_sum = 0.0  # sum over all ordered pairs (i, j) of H((p_i + p_j) / 2)
    for start in range(0, n, block):
        stop = min(start + block, n)
        rows = p[start:stop]  # (b, K)
        others = p[start:]  # (n - start, K): j >= start
        m = (rows[:, None, :] + others[None, :, :]).mul_(0.5)
        hm = _neg_sum_xlogx(m, tiny)  # (b, n - start)
        # keep j >= i only: column c is j = start + c, row r is i = start + r
        r = torch.arange(stop - start)[:, None]
        c = torch.arange(n - start)[None, :]
        mix_sum += 2.0 * float(hm[c > r].sum()) + float(hm[c == r].sum())
    # JSD_ij = H(m_ij) - (H_i + H_j) / 2; sum over all ordered pairs of (H_i + H_j)/2 = N sum H
    total = mix_sum - n * h_sum
    if include_diagonal:
        return max(total / (n * n), 0.0)
    # the diagonal terms are H(p_i) - H(p_i) = 0 (m_ii = p_i exactly), so only the count changes
    return max(total / (n * (n - 1)), 0.0)


def entropy_stats(p: Tensor) -> tuple[Tensor, Tensor]:
    """Entropy (nats) of each row and that entropy divided by ln K (1 = uniform)."""
    h = row_entropy(p)
    k = p.shape[-1]
    return h, h / math.log(k) if k > 1 else torch.zeros_like(h)


def pair_jsd(p: Tensor, i: Tensor, j: Tensor, h: Tensor | None = None) -> Tensor:
    """JSD (nats) of the row pairs (p[i], p[j]) of a (N, K) matrix of distributions, float64.

    ``h``: the rows' entropies if already known. Works in ``p``'s dtype, pairs at once.
    """
    tiny = float(torch.finfo(p.dtype).tiny)
    if h is None:
        h = _neg_sum_xlogx(p.clone(), tiny)
    m = (p[i] + p[j]).mul_(0.5)
    return (_neg_sum_xlogx(m, tiny) - 0.5 * (h[i] + h[j])).clamp_min_(0.0)


def sampled_jsd(
    p: Tensor,
    *,
    pairs: int = 2048,
    include_diagonal: bool = True,
    seed: int | Sequence[int] = 0,
    dtype: torch.dtype = torch.float32,
    control: bool = True,
) -> tuple[float, float]:
    """Mean JSD over pairs of rows estimated from a seeded random sample of pairs, and its
    standard error: ``(estimate, se)``.

    ``pairs`` ordered pairs (i, j) are drawn uniformly with replacement from the pairs the exact
    mean runs over (all N^2 with ``include_diagonal``, else the N(N-1) with i != j) by
    ``numpy.random.default_rng(seed)``. ``control=False``: the estimate is their mean JSD
    (unbiased), the standard error std(ddof=1) / sqrt(pairs). ``control=True`` (default):
    the squared Hellinger distance of the same pairs is the control variate (its exact mean
    over all pairs costs O(NK)); the estimate is the sample mean of J - b (Hel - E[Hel]) and
    the standard error that of the residuals: on nl_tiny's rows 95-280x less variance
    (bias O(1/pairs) from fitting b). O(pairs * K) time instead of O(N^2 K): at
    N = K = 3136 and 2048 pairs about 770x fewer entropy terms than :func:`avg_jsd`.
    """
    p = _as_2d(p)
    if not is_distribution(p):
        raise ValueError("sampled_jsd needs rows that are probability distributions")
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 2:
        raise ValueError(f"pairs must be a whole number >= 2, got {pairs!r}")
    n, k = p.shape
    if not include_diagonal and n < 2:
        return float("nan"), float("nan")
    p = p.to(dtype)
    h = _neg_sum_xlogx(p.clone(), float(torch.finfo(dtype).tiny)).to(dtype)
    return _sampled_pairs(p, h, pairs, include_diagonal, seed, control)


def row_degeneracy(p: Tensor) -> dict[str, float]:
    """How spiky the rows of a (N, K) attention matrix are.

    ``row_entropy``: mean over rows of the Shannon entropy (nats); ``eff_keys``: exp of that
    mean entropy, the number of keys a uniform row with the same entropy would spread over
    (1 = one-hot, K = uniform); ``max_weight``: median over rows of the largest weight;
    ``argmax_keys``: how many distinct keys are some row's largest weight (first on ties).
    Entropy, eff_keys and max_weight need distributions (NaN otherwise); argmax_keys does not.
    """
    p = _as_2d(p)
    argmax = int(torch.unique(p.argmax(dim=1)).numel())
    if not is_distribution(p):
        nan = float("nan")
        return {"row_entropy": nan, "eff_keys": nan, "max_weight": nan, "argmax_keys": argmax}
    h = float(row_entropy(p).mean())
    return {
        "row_entropy": h,
        "eff_keys": math.exp(h),
        "max_weight": float(p.max(dim=1).values.median()),
        "argmax_keys": float(argmax),
    }


def attention_statistics(
    att: Tensor,
    *,
    include_diagonal: bool = True,
    exact_rows: int | None = None,
    pairs: int = 2048,
    seed: int | Sequence[int] = 0,
    jsd: bool = True,
    cos: bool = True,
    atol: float = 1e-4,
    max_se: float | None = None,
) -> dict[str, float]:
    """Every statistic of one (N, K) attention matrix in few passes, in its own dtype.

    ``cos_att`` (avg cosine distance of the rows), ``jsd_att`` and ``jsd_att_se``: sampled
    from ``pairs`` seeded pairs above ``exact_rows`` rows; up to it (None = always) exact,
    se 0, unless ``max_se`` is given: then sampled wherever that is cheaper (N^2 > pairs) and
    its standard error is at most ``max_se``, exact otherwise. Also
    :func:`row_degeneracy`'s figures; the row entropies are computed once and shared by
    the JSD and the degeneracy. Rows that are not distributions (negative, or row sums off 1
    by more than ``atol``) get NaN for the JSD and the entropies. Equal to the separate
    functions up to float rounding; this is the form the query analysis uses at full size.
    """
    if att.dim() != 2 or att.shape[0] < 1:
        raise ValueError(f"expected a (N, K) matrix of N >= 1 rows, got shape {tuple(att.shape)}")
    a = att if att.dtype in (torch.float32, torch.float64) else att.float()
    n, k = a.shape
    nan = float("nan")
    out: dict[str, float] = {}
    if cos:
        out["cos_att"] = avg_cosine_distance(a, include_diagonal=include_diagonal)
    top = a.max(dim=1)
    out["argmax_keys"] = float(torch.unique(top.indices).numel())
    dist = bool(a.min() >= 0) and bool(((a.sum(dim=1).double() - 1.0).abs() <= atol).all())
    if not dist:
        out.update(row_entropy=nan, eff_keys=nan, max_weight=nan)
        if jsd:
            out.update(jsd_att=nan, jsd_att_se=nan)
        return out
    tiny = float(torch.finfo(a.dtype).tiny)
    h = _neg_sum_xlogx(a, tiny)  # (N,) float64, the row entropies
    mean_h = float(h.mean())
    out.update(
        row_entropy=mean_h,
        eff_keys=math.exp(mean_h),
        max_weight=float(top.values.median()),
    )
    if jsd:
        if not include_diagonal and n < 2:
            out.update(jsd_att=nan, jsd_att_se=nan)
        else:
            large = exact_rows is not None and n > exact_rows
            est, se = math.nan, math.inf
            if large or (exact_rows is not None and max_se is not None and n * n > pairs):
                est, se = _sampled_pairs(a, h.to(a.dtype), pairs, include_diagonal, seed)
            if not large and not se <= (max_se if max_se is not None else -1.0):
                est, se = avg_jsd(a, include_diagonal=include_diagonal), 0.0
            out.update(jsd_att=est, jsd_att_se=se)
    return out


def _sampled_pairs(
    p: Tensor,
    h: Tensor,
    pairs: int,
    include_diagonal: bool,
    seed: int | Sequence[int],
    control: bool = True,
) -> tuple[float, float]:
    """Mean and standard error of the JSD over ``pairs`` seeded uniform pairs of rows of ``p``
    (rows' entropies ``h``); small chunks of pairs so that the mixtures stay in cache. With
    ``control`` the regression (control-variate) estimator with the squared Hellinger
    distance, whose mean over all pairs is known exactly: mean(J) - b (mean(Hel) - E[Hel]),
    b = cov(J, Hel) / var(Hel) fitted on the sample (Glasserman 2004, sec. 4.1)."""
    n, k = p.shape
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, pairs)
    j = rng.integers(0, n, pairs) if include_diagonal else (i + rng.integers(1, n, pairs)) % n
    it, jt = torch.from_numpy(i), torch.from_numpy(j)
    tiny = float(torch.finfo(p.dtype).tiny)
    chunk = max(1, (1 << 18) // max(k, 1))  # ~1 MB of float32 per mixture block
    values = torch.empty(pairs, dtype=torch.float64)
    for s in range(0, pairs, chunk):
        a, b = it[s : s + chunk], jt[s : s + chunk]
        m = torch.index_select(p, 0, a).add_(torch.index_select(p, 0, b)).mul_(0.5)
        hm = _neg_sum_xlogx(m, tiny)
        values[s : s + chunk] = (hm - 0.5 * (h[a] + h[b]).double()).clamp_min_(0.0)
    if not control:
        return float(values.mean()), float(values.std(correction=1)) / math.sqrt(pairs)
    # control variate: the squared Hellinger distance ||sqrt(p_i) - sqrt(p_j)||^2 =
    # 2 - 2 <sqrt(p_i), sqrt(p_j)> tracks the pair's JSD closely (both f-divergences; measured
    # correlation 0.995-0.998 on nl_tiny's rows) and its mean over all pairs is exact in O(NK)
    r = p.double().sqrt()
    hel = 2.0 - 2.0 * (r[it] * r[jt]).sum(dim=1)
    total = r.sum(dim=0)
    dots = float(total @ total)  # sum over all ordered pairs (i, j) of <r_i, r_j>
    if include_diagonal:
        hel_mean = 2.0 - 2.0 * dots / (n * n)
    else:
        hel_mean = 2.0 - 2.0 * (dots - float((r * r).sum())) / (n * (n - 1))
    dh = hel - hel.mean()
    var_h = float(dh @ dh)
    beta = float((values - values.mean()) @ dh) / var_h if var_h > 0 else 0.0
    adjusted = values - beta * (hel - hel_mean)
    return float(adjusted.mean()), float(adjusted.std(correction=1)) / math.sqrt(pairs)


def sign_test_p(higher: int, lower: int) -> float:
    """Two-sided exact sign test: P(a split at least as uneven as ``higher`` vs ``lower``)
    under Binomial(n, 1/2), n = higher + lower (ties left out). 1.0 when n = 0."""
    n = higher + lower
    if n == 0:
        return 1.0
    k = min(higher, lower)
    tail = sum(math.comb(n, j) for j in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Paired comparison of two measurements of the same items: mean of d = a - b, its
    paired standard error std(d, ddof=1) / sqrt(n), z = mean / s.e., the share of items with
    d > 0 and the exact sign test's two-sided p."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = d.size
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    mean = float(d.mean()) if n else math.nan
    higher, lower = int((d > 0).sum()), int((d < 0).sum())
    return {
        "n": n,
        "mean_difference": mean,
        "paired_se": se,
        "z": mean / se if se and se > 0 else math.nan,
        "higher_share": higher / n if n else math.nan,
        "sign_test_p": sign_test_p(higher, lower),
    }


# ----------------------------------------------------------------------------- nulls (issue 21)
def two_sided_p(z: float) -> float:
    """Two-sided normal p-value of a z score, erfc(|z| / sqrt 2); NaN for a NaN z."""
    if z is None or not math.isfinite(z):
        return math.nan if z is None or math.isnan(z) else 0.0
    return math.erfc(abs(z) / math.sqrt(2.0))


def holm(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values over one family of tests (Holm 1979).

    With the m finite p-values sorted p_(1) <= ... <= p_(m): adj_(i) = max_{j <= i}
    min(1, (m - j + 1) p_(j)). NaN entries are not tests: they stay NaN and do not count in m.
    Reject at level alpha where adj <= alpha (controls the family-wise error rate).
    """
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p.ravel()))
    m = ok.size
    if m == 0:
        return out
    flat = p.ravel()[ok]
    order = np.argsort(flat, kind="mergesort")
    scaled = np.minimum(1.0, (m - np.arange(m)) * flat[order])
    adjusted = np.maximum.accumulate(scaled)
    res = out.ravel()
    res[ok[order]] = adjusted
    return res.reshape(p.shape)


def holm_of_z(z: Sequence[float]) -> np.ndarray:
    """Holm-adjusted two-sided normal p-values of one table's z scores (one family)."""
    return holm([two_sided_p(float(v)) for v in z])


def flagged_change(mean: float, se: float, p_holm: float, digits: int) -> str:
    """``+0.0123 ± 0.0040 (z +3.1, p_holm 0.02) !`` for a summary table cell: the paired
    change, its z, its Holm-adjusted p over the table and ``!`` where |z| >= 3."""
    z = mean / se if se > 0 else math.nan
    flag = " !" if math.isfinite(z) and abs(z) >= 3 else ""
    return f"{mean:+.{digits}f} ± {se:.{digits}f} (z {z:+.1f}, p_holm {p_holm:.2g}){flag}"


def top_k_cells(n_cells: int, top_k: float) -> int:
    """Cells in a top-k region of a map without ties: max(1, ceil(k * N)) (the tool's rule)."""
    if not 0.0 < top_k <= 1.0:
        raise ValueError(f"top_k must be a fraction in (0, 1], got {top_k}")
    if n_cells < 1:
        raise ValueError(f"a map needs at least one cell, got {n_cells}")
    return max(1, math.ceil(top_k * n_cells - 1e-9))


def top_k_iou_chance(grid: Sequence[int] | int, top_k: float = 0.2) -> float:
    """Exact expected IoU of the top-k regions of two independent maps without ties.

    Each region is a uniformly random set of n = :func:`top_k_cells` of the N = H * W cells, so
    the overlap X is hypergeometric (N, n, n) and IoU = X / (2n - X):
    E[IoU] = sum_x C(n, x) C(N - n, n - x) / C(N, n) * x / (2n - x). At a 4x4 grid and k = 0.2,
    n = 4 and E = 0.158 (not k / (2 - k) = 0.111, the large-grid limit). Maps with ties at the
    threshold grow their regions (all tied cells are included): use :func:`permutation_null`
    with the tool's own IoU for those.
    """
    n_cells = int(grid) if isinstance(grid, (int, np.integer)) else math.prod(int(g) for g in grid)
    n = top_k_cells(n_cells, top_k)
    x = np.arange(max(0, 2 * n - n_cells), n + 1, dtype=np.float64)
    lgamma = np.vectorize(math.lgamma, otypes=[np.float64])

    def log_comb(a: float | np.ndarray, b: float | np.ndarray) -> np.ndarray:
        return lgamma(np.asarray(a) + 1) - lgamma(np.asarray(b) + 1) - lgamma(np.asarray(a - b) + 1)

    log_pmf = log_comb(n, x) + log_comb(n_cells - n, n - x) - log_comb(n_cells, n)
    return float(np.sum(np.exp(log_pmf) * x / (2 * n - x)))


def permutation_null(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    a: np.ndarray,
    b: np.ndarray,
    *,
    draws: int = 2000,
    seed: int = 0,
    exact_max: int = 8,
) -> np.ndarray:
    """The statistic of ``a`` against the cells of ``b`` put in another order: its null
    distribution when the two maps are unrelated.

    Few cells (N <= ``exact_max``): every one of the N! orders, exactly; more: ``draws``
    orders from ``numpy.random.default_rng(seed)``. The statistic is the caller's own (e.g.
    Spearman's rho, or the tool's top-k IoU with its tie rule), so the null keeps the maps'
    values, ties and grid.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size != b.size:
        raise ValueError(f"maps differ in size: {a.size} vs {b.size}")
    if a.size <= exact_max:
        from itertools import permutations

        orders: Any = (np.asarray(o) for o in permutations(range(b.size)))
    else:
        if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
            raise ValueError(f"draws must be a whole number >= 1, got {draws!r}")
        rng = np.random.default_rng(seed)
        orders = (rng.permutation(b.size) for _ in range(draws))
    return np.asarray([statistic(a, b[o]) for o in orders], dtype=np.float64)


def permutation_p(observed: float, null: np.ndarray, alternative: str = "two-sided") -> float:
    """p of ``observed`` under a permutation ``null``: ``"greater"`` share of null >= observed,
    ``"two-sided"`` share with |null| >= |observed| (for statistics centred on 0, like rho).
    Exact when the null enumerates every order; (1 + count) / (1 + R) for sampled nulls is the
    caller's choice. NaNs in the null are left out; NaN when nothing is left."""
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    if null.size == 0 or not math.isfinite(observed):
        return math.nan
    eps = 1e-12
    if alternative == "greater":
        return float(np.mean(null >= observed - eps))
    if alternative == "two-sided":
        return float(np.mean(np.abs(null) >= abs(observed) - eps))
    raise ValueError(f"alternative must be 'greater' or 'two-sided', got {alternative!r}")


def bootstrap_ci(
    n: int,
    statistic: Callable[[np.ndarray], float],
    *,
    draws: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Percentile bootstrap interval of ``statistic(indices)`` over ``n`` items resampled with
    replacement (``draws`` resamples from ``numpy.random.default_rng(seed)``): the
    (1 - level) / 2 and (1 + level) / 2 quantiles of the resampled statistic, and its
    bootstrap standard error (std, ddof=1): ``(low, high, se)``; NaNs left out, all NaN if
    none is finite. The statistic gets the resampled item indices, so it can recompute
    anything from per-item rows (e.g. gate_gain from per-image excitations).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n < 1 or draws < 2:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    values = np.asarray([statistic(rng.integers(0, n, n)) for _ in range(draws)], np.float64)
    values = values[np.isfinite(values)]
    if values.size < 2:
        return math.nan, math.nan, math.nan
    lo, hi = np.quantile(values, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi), float(values.std(ddof=1))


def sign_flip_p(
    d: np.ndarray, *, draws: int = 2000, seed: int = 0, normal_above: int = 40
) -> float:
    """Two-sided sign-flip p of paired differences ``d`` (H0: each d_i is as likely -d_i).

    The statistic is |sum(d)|. n <= 12: exact over all 2^n sign flips. n <= ``normal_above``:
    ``draws`` random flips (``numpy.random.default_rng(seed)``), p = (1 + #{null >= observed})
    / (1 + draws). Larger n: the flip distribution's normal limit (sum(s_i d_i) has variance
    sum(d_i^2)), p = erfc(|sum d| / sqrt(2 sum d^2)), so the p-value is not floored at
    1 / (1 + draws) and a Holm adjustment over a large table stays meaningful. 1.0 when every
    d_i is 0, NaN for no items.
    """
    d = np.asarray(d, dtype=np.float64).ravel()
    n = d.size
    if n == 0:
        return math.nan
    observed = abs(d.sum())
    if observed == 0.0:
        return 1.0
    if n <= 12:
        signs = 1.0 - 2.0 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
        return float(np.mean(np.abs(signs @ d) >= observed * (1 - 1e-12)))
    if n > normal_above:
        return math.erfc(observed / math.sqrt(2.0 * float((d**2).sum())))
    rng = np.random.default_rng(seed)
    count = 0
    for start in range(0, draws, 500):
        k = min(500, draws - start)
        signs = rng.integers(0, 2, size=(k, n)) * 2.0 - 1.0
        count += int((np.abs(signs @ d) >= observed * (1 - 1e-12)).sum())
    return (1 + count) / (1 + draws)


def bootstrap_mean_ci(
    values: np.ndarray, *, draws: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``: as :func:`bootstrap_ci` with
    ``statistic = mean`` and the same resamples (``rng.integers(0, n, n)`` per draw, from
    ``numpy.random.default_rng(seed)``), vectorised in chunks of draws."""
    v = np.asarray(values, dtype=np.float64).ravel()
    n = v.size
    if n < 1 or draws < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    chunks = [
        v[rng.integers(0, n, (min(256, draws - start), n))].mean(axis=1)
        for start in range(0, draws, 256)
    ]
    means = np.concatenate(chunks)
    lo, hi = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)
