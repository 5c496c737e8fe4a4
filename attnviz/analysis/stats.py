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
"""

from __future__ import annotations

import math

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
