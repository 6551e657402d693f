"""Certified brackets for W's top-K values, and W_t = W_0 + Δ's top-K pinned from W_0's factors.

`pin_moved` is `analyze --base-geometry`'s shortcut for updates small against W_0's spectrum:
W_t's values and rotations are bounded through Weyl, interlacing and Wedin from W_0's certified
factors and an upper bound on ‖Δ‖_2, from two thin products with W_t and no decomposition of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .metrics import ILL_DEFINED_GAP

if TYPE_CHECKING:
    from .linalg import TopK

# Bracket widths hi_i − lo_i allowed: W_0's ≤ BASE_RTOL · lo_i, W_t's ≤ MOVED_RTOL · σ_i(W_0).
# A drift |σ_i(W_t) − σ_i(W_0)| / σ_i(W_0) is then off by at most MOVED_RTOL + BASE_RTOL ·
# σ_i(W_t)/σ_i(W_0): within the contract's 1e-3 while σ_i(W_t) ≤ 1.5 σ_i(W_0).
BASE_RTOL = 1e-4
MOVED_RTOL = 8.5e-4
# A pinned rotation is off by at most this; the rest of the contract's 1e-2 is left to W_0's
# own subspace error (U_0 enters the reported and the exact rotation alike).
ROTATION_TOL = 8e-3


def _pairs(
    wv: torch.Tensor, wtu: torch.Tensor, u: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """θ_l = u_lᵀWv_l and ε_l, the residual norm of [u_l; v_l]/√2 for [[0, W], [Wᵀ, 0]]: some
    singular value of W (or a zero) lies within ε_l of θ_l (Bauer–Fike for the symmetric matrix).

    From wv = W V (m, k) and wtu = Wᵀ U (n, k), all float64; returns two (k,) tensors.
    """
    theta = (u * wv).sum(0)
    eps = ((wv - u * theta).pow(2).sum(0) + (wtu - v * theta).pow(2).sum(0)).sqrt() / math.sqrt(2)
    return theta, eps


def _brackets(
    wv: torch.Tensor, wtu: torch.Tensor, u: torch.Tensor, v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`value_brackets` from the products wv = W V (m, k) and wtu = Wᵀ U (n, k), all float64."""
    theta, eps = _pairs(wv, wtu, u, v)
    lo = torch.linalg.svdvals(u.T @ wv)  # (k,) descending
    hi = torch.cummin(theta.abs() + eps, 0).values
    return lo.cpu(), hi.cpu()


def value_brackets(w: torch.Tensor, top: TopK) -> tuple[torch.Tensor, torch.Tensor]:
    """Brackets lo_i ≤ σ_i(W) ≤ hi_i for the returned triplets, from two passes over W.

    lo = σ(UᵀWV) (interlacing); hi_i = min_{l≤i} θ_l + ε_l with θ_l = u_lᵀWv_l and ε_l the
    residual norm of [u_l; v_l]/√2 for [[0, W], [Wᵀ, 0]] (`krylov._upper`'s premise: the space
    missed no direction above θ_l + ε_l). Shape: w (m, n); returns two (k,) float64 tensors.
    """
    wv, wtu = (w @ top.V).double(), (w.T @ top.U).double()  # (m, k), (n, k)
    return _brackets(wv, wtu, top.U.double(), top.V.double())


def spectral_norm_bound(delta: torch.Tensor, v: torch.Tensor, total_sq: float) -> float:
    """An upper bound on ‖Δ‖_2 from any orthonormal V (Δ's top-k right vectors make it tight).

    With P = VVᵀ, ‖Δx‖ ≤ ‖ΔP‖‖Px‖ + ‖Δ(I − P)‖‖(I − P)x‖, so by Cauchy–Schwarz
    ‖Δ‖_2² ≤ ‖ΔV‖_2² + ‖Δ(I − P)‖_F² = ‖ΔV‖_2² + ‖Δ‖_F² − ‖ΔV‖_F²: no premise about V.
    Shape: delta (m, n); v (n, k) orthonormal columns.
    """
    dv = (delta @ v.to(delta.device, delta.dtype)).double()  # (m, k)
    top = float(torch.linalg.matrix_norm(dv, ord=2))
    rest = max(0.0, total_sq - float(dv.pow(2).sum()))
    return math.sqrt(top * top + rest) * (1.0 + 1e-6)  # float32 products: a little headroom


@dataclass(frozen=True)
class Pinned:
    """W_t's top-k values and rotations, certified without W_t's decomposition.

    s (k,) float64: the middle of each σ_i(W_t)'s bracket, within MOVED_RTOL · σ_i(W_0) of it;
    rotation: per K, (left, right) `principal_rotation_*_k{K}` (see `pin_moved`).
    """

    s: torch.Tensor
    rotation: dict[int, tuple[float, float]]


def pin_moved(
    wt: torch.Tensor, u0: torch.Tensor, s0: torch.Tensor, v0: torch.Tensor, next_hi: float,
    e: float, ranks: Sequence[int],
) -> Pinned | None:  # fmt: skip
    """W_t's top-k values and rotations from W_0's certified factors and e ≥ ‖Δ‖_2, or None
    where the bounds below are too wide for the contract (then W_t must be decomposed).

    Values, for every i ≤ k (W_0's brackets are [s0_i, s0_i·(1 + BASE_RTOL)], `certified_top_k`):
    - σ_i(W_t) ≥ σ_i(U_0ᵀ W_t V_0) (interlacing) and ≥ s0_i − e, ≤ s0_i (1 + BASE_RTOL) + e (Weyl);
    - |σ_i(W_t) − θ_i| ≤ ε_i (`_pairs` of (u_{0,i}, v_{0,i})) where those k intervals are
      disjoint and above σ_{k+1}(W_t)'s Weyl bound, which makes σ_i the one in the i-th.
    None of it rests on a premise about missed directions, beyond W_0's own brackets.
    Kept when every bracket is at most 2 · MOVED_RTOL · s0_i wide; the middle is reported.
    Rotations, per K in ranks (K ≤ k):
    - where W_0's gap is surely below the contract's 1e-2 (s0_K (1 + BASE_RTOL) − s0_{K+1}
      < 1e-2 · s0_1, s0_{K+1} a lower bound), the subspace is not defined and the rotation is
      uncertified: the estimate below is reported as it is;
    - else Wedin's theorem (residual form, Stewart & Sun V.4.1) with Ũ = U_{0,K}, Ṽ = V_{0,K},
      Σ̃ = diag(s0_{≤K}), R = W_t Ṽ − Ũ Σ̃, S = W_tᵀ Ũ − Ṽ Σ̃, and α = hi_{K+1} + e ≥ σ_{K+1}(W_t)
      (Weyl; hi_{K+1} = s0_{K+1} (1 + BASE_RTOL), or next_hi at K = k), δ = s0_K − α > 0:
      ‖sin Φ‖_F² + ‖sin Θ‖_F² ≤ (‖R‖_F² + ‖S‖_F²) / δ², so each rotation ‖sin ·‖_F² / K lies in
      [0, b], b = (‖R‖_F² + ‖S‖_F²) / (K δ²). The estimate, 1 − ‖U_{0,K}ᵀ orth(W_t V_{0,K})‖_F² / K
      (one half-step of subspace iteration; V's from W_tᵀ U_{0,K}), is clipped to [0, b] and
      kept when it is within ROTATION_TOL of both ends.

    Shape: wt (m, n); u0 (m, k), v0 (n, k) orthonormal; s0 (k + 1,) W_0's values: s0_{≤k} the
    lower ends of certified brackets, s0_{k+1} a lower bound of σ_{k+1}(W_0) and next_hi an
    upper one (W_0 decomposed with k + 1 triplets; 0 where k = min(m, n)).
    """
    k = u0.shape[1]
    u, v = u0.to(wt.device).double(), v0.to(wt.device).double()
    wv = (wt @ v0.to(wt.device, wt.dtype)).double()  # (m, k)
    wtu = (wt.T @ u0.to(wt.device, wt.dtype)).double()  # (n, k)
    lo_rr = torch.linalg.svdvals(u.T @ wv).cpu()  # (k,) descending
    lo0 = s0[:k].double().cpu()
    hi0 = lo0 * (1.0 + BASE_RTOL)
    lo, hi = torch.maximum(lo_rr, lo0 - e), hi0 + e
    theta, eps = (x.cpu() for x in _pairs(wv, wtu, u, v))
    down, up = theta - eps, theta + eps
    # Each interval [down_l, up_l] holds a singular value of W_t. Disjoint, in order, and all
    # above σ_{k+1}(W_t) ≤ next_hi + e (Weyl), they hold σ_1 … σ_k one each, in order.
    if bool((down[:-1] > up[1:]).all()) and float(down[-1]) > next_hi + e:
        lo, hi = torch.maximum(lo, down), torch.minimum(hi, up)
    if not bool((hi - lo <= 2.0 * MOVED_RTOL * lo0).all() and (lo <= hi * (1 + 1e-9)).all()):
        return None
    sigma = s0.double().to(wt.device)[:k]
    r_sq = (wv - u * sigma).pow(2).sum(0).cumsum(0).cpu()  # ‖R_K‖_F², K = 1..k
    s_sq = (wtu - v * sigma).pow(2).sum(0).cumsum(0).cpu()
    next0 = s0.double().cpu()  # next0[K] ≤ σ_{K+1}(W_0) ≤ upper[K]
    upper = torch.cat([hi0, torch.tensor([next_hi], dtype=torch.float64)])
    rotation: dict[int, tuple[float, float]] = {}
    for kk in sorted({r for r in ranks if r <= k}):
        est = (_half_step(u[:, :kk], wv[:, :kk]), _half_step(v[:, :kk], wtu[:, :kk]))
        if float(hi0[kk - 1] - next0[kk]) < ILL_DEFINED_GAP * float(lo0[0]):
            rotation[kk] = est
            continue
        gap = float(lo0[kk - 1] - upper[kk]) - e
        if gap <= 0.0:
            return None
        b = min(1.0, float(r_sq[kk - 1] + s_sq[kk - 1]) / (kk * gap * gap))
        got = tuple(min(max(x, 0.0), b) for x in est)
        if max(max(x, b - x) for x in got) > ROTATION_TOL:
            return None
        rotation[kk] = (got[0], got[1])
    return Pinned((lo + hi) / 2.0, rotation)


def _half_step(q0: torch.Tensor, y: torch.Tensor) -> float:
    """1 − ‖Q_0ᵀ orth(Y)‖_F² / K. Shape: q0 (rows, K) orthonormal, y (rows, K) float64."""
    q = torch.linalg.qr(y)[0]
    return max(0.0, 1.0 - float((q0.T @ q).pow(2).sum()) / q0.shape[1])
