"""Which matrices a tensor is analysed as, and the rank-k truncation of each (design.md).

One rule for analyze, spectra, surgery and ablate: stacked experts (E, out, …) are E matrices
(out, rest), one per expert; any other tensor of two or more dimensions is one (out, rest)
matrix (conv kernels); vectors are no matrix.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .linalg import TopK, top_k_svd

if TYPE_CHECKING:
    import torch

__all__ = ["as_matrices", "from_factors", "low_rank", "matrix_of", "matrix_shape", "truncate"]


def matrix_shape(shape: tuple[int, ...], stacked: bool) -> tuple[int, int, int] | None:
    """(count, rows, cols) of the matrices a tensor of `shape` is analysed as; None for vectors.

    `stacked` says the module holds experts stacked along dimension 0 (`ModuleInfo.stacked_experts`).
    """
    shape = tuple(shape)
    if len(shape) < 2:
        return None
    if stacked and len(shape) >= 3:
        return shape[0], shape[1], math.prod(shape[2:])
    return 1, shape[0], math.prod(shape[1:])


def as_matrices(x: torch.Tensor, stacked: bool) -> torch.Tensor:
    """The matrices `x` is analysed as, as one (count, rows, cols) view.

    Raises:
        ValueError: `x` is a vector (fewer than two dimensions).
    """
    dims = matrix_shape(tuple(x.shape), stacked)
    if dims is None:
        raise ValueError(f"A tensor of shape {tuple(x.shape)} is a vector, not a matrix.")
    return x.reshape(dims)


def matrix_of(x: torch.Tensor, stacked: bool, expert: int | None = None) -> torch.Tensor:
    """The matrix of `x` that is analysed: expert `expert`'s when stacked; a vector as it is.

    Shape: x (E, out, …) when stacked with three or more dimensions, else (out, …); returns
    (out, rest).
    """
    if x.dim() < 2:
        return x
    mats = as_matrices(x, stacked)
    if stacked and x.dim() >= 3:
        if expert is None:
            raise ValueError(f"A stacked expert tensor {tuple(x.shape)} needs an expert index.")
        return mats[expert]
    return mats[0]


def from_factors(delta: torch.Tensor, top: TopK, k: int) -> torch.Tensor:
    """rank-k(Δ) from its top singular factors (k ≤ top.k), or Δ itself once k ≥ min(m, n).

    Shape: delta (m, n); top from `top_k_svd(delta, ≥ k)`; returns (m, n) in delta's dtype.
    """
    if k >= min(delta.shape):
        return delta  # every matrix has rank ≤ min(rows, cols): kept exactly
    u, s, v = top.U[:, :k], top.S[:k].to(top.U.dtype), top.V[:, :k]
    return ((u * s) @ v.T).to(delta.dtype)  # (m, n)


def low_rank(
    delta: torch.Tensor, rank: int, *, keep_norm: bool = False, method: str = "exact"
) -> torch.Tensor:
    """Best rank-k approximation of one matrix in float64, optionally rescaled to ‖Δ‖_F.

    The factors come from `linalg.top_k_svd(method=...)`: "exact" (eigh of the float64 Gram
    matrix) is accurate to float64 round-off; "auto" meets linalg's accuracy contract and is
    far cheaper on large matrices at small k. Shape: delta (m, n) float64; returns (m, n) float64.
    """
    import torch

    if delta.dtype != torch.float64:
        raise ValueError(f"low_rank works in float64; got {delta.dtype}. Call .double() first.")
    norm = float(torch.linalg.vector_norm(delta))
    if norm == 0.0:
        return delta.clone()
    if rank >= min(delta.shape):
        out = delta.clone()
    else:
        out = from_factors(delta, top_k_svd(delta, rank, method=method), rank)
    if keep_norm:
        got = float(torch.linalg.vector_norm(out))
        if got > 0:
            out.mul_(norm / got)
    return out


def truncate(
    delta: torch.Tensor, rank: int, stacked: bool, *, keep_norm: bool = False, method: str = "exact"
) -> torch.Tensor:
    """rank-k truncation of every matrix a tensor is analysed as, in float64, in its shape.

    Shape: delta any ≥ 2-D float64 tensor (see `matrix_shape`); returns the same shape.
    """
    import torch

    mats = as_matrices(delta, stacked)
    parts = [low_rank(m, rank, keep_norm=keep_norm, method=method) for m in mats]
    return torch.stack(parts).reshape(delta.shape)
