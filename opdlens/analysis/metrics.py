"""The metric definitions of design.md as pure functions of tensors; ratios of nothing are NaN."""

from __future__ import annotations

import math

import torch

from . import ILL_DEFINED_GAP as ILL_DEFINED_GAP  # design.md's gap rule, defined torch-free there

# Dot products run in float32 over 64 Ki-element chunks, summed in float64: relative error
# ~2e-8 on 32 M elements (1e-6 for 1 Mi chunks). Measured here (1 thread, 32 M float32): 13 ms
# for a squared norm, as fast as 128 Ki–1 Mi chunks (a chunk stays in L2) and 2–3× faster
# than converting chunks or larger blocks to float64. A chunk whose float32 sum may have
# overflowed (not finite) or underflowed (below _TINY) is summed again exactly (_exact_chunk).
_CHUNK = 1 << 16
# Below this a float32 chunk sum may have lost products to underflow: each loses < 2^-126, so a
# 64 Ki chunk loses < 2^-110, under 1e-9 of a sum ≥ 2^-80. float64 chunks: the same reasoning.
_TINY = {torch.float32: 2.0**-80, torch.float64: 2.0**-900}
_ENERGY_SLACK = 1e-3  # Σσ² may exceed ‖Δ‖² by float rounding, never by more than this (relative)


def frobenius_sq(x: torch.Tensor) -> float:
    """‖x‖_F², chunk sums accumulated in float64 (any shape; never a full float64 copy)."""
    return _dot64(x, x)


def inner(a: torch.Tensor, b: torch.Tensor) -> float:
    """⟨a, b⟩_F = Σ a_ij b_ij, chunk sums accumulated in float64.

    Shape: a and b the same shape.
    """
    if a.shape != b.shape:
        raise ValueError(
            f"inner needs tensors of the same shape. Got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    return _dot64(a, b)


def relative(num: float, den: float) -> float:
    """num / den, where x/0 is ±inf for x ≠ 0 and 0/0 (or any NaN) is NaN, never an error or 0."""
    num, den = float(num), float(den)
    if math.isnan(num) or math.isnan(den):
        return math.nan
    if den == 0.0:
        return math.nan if num == 0.0 else math.copysign(math.inf, num)
    return num / den


def energy_k(top_s: torch.Tensor, total_sq: float, k: int, *, rank_cap: int | None = None) -> float:
    """energy_k = Σ_{i≤k} σ_i² / ‖Δ‖_F²; NaN for a zero update.

    Shape: top_s (≥ k,) descending singular values. Clipped to 1 only within float rounding.
    rank_cap = min(rows, cols): for k ≥ rank_cap the energy is 1.0 exactly (design.md), and
    top_s needs no k values.

    Raises:
        ValueError: k outside 1..len(top_s) (below rank_cap), or Σσ² exceeding total_sq by more
            than rounding (top_s and total_sq of different updates).
    """
    if rank_cap is not None and isinstance(k, int) and k >= rank_cap >= 1:
        return relative(total_sq, total_sq)  # 1.0; NaN for a zero or non-finite update
    _check_k(k, top_s, "energy_k", need=k)
    head = float(torch.sum(top_s[:k].double() ** 2))
    value = relative(head, total_sq)
    if math.isnan(value) or value <= 1.0:
        return value
    if value > 1.0 + _ENERGY_SLACK:
        raise ValueError(
            f"energy_k: Σ_(i≤{k}) σ_i² = {head:.6g} exceeds ‖Δ‖_F² = {float(total_sq):.6g}; "
            "top_s and total_sq must come from the same update."
        )
    return 1.0


def stable_rank(sigma1: float, total_sq: float) -> float:
    """‖Δ‖_F² / σ_1²; NaN for a zero update."""
    return relative(total_sq, float(sigma1) ** 2)


def effective_rank(s_full: torch.Tensor) -> float:
    """Roy & Vetterli effective rank exp(−Σ p_i log p_i), p_i = σ_i / Σ_j σ_j; NaN for Δ = 0.

    Shape: s_full (min(m, n),) the full spectrum.
    """
    s = s_full.double().flatten()
    if bool((s < 0).any()) or not bool(torch.isfinite(s).all()):
        raise ValueError("effective_rank needs finite, non-negative singular values.")
    total = float(s.sum())
    if total == 0.0:
        return math.nan
    p = s[s > 0] / total
    return math.exp(-float((p * p.log()).sum()))


def subspace_alignment(u_t: torch.Tensor, u_T: torch.Tensor, k: int) -> float:
    """‖U_{t,K}ᵀ U_{T,K}‖_F² / K: mean squared cosine of the principal angles of two top-K subspaces.

    Shape: u_t (rows, ≥ k) and u_T (rows, ≥ k) with orthonormal columns, best first.
    """
    if u_t.dim() != 2 or u_T.dim() != 2 or u_t.shape[0] != u_T.shape[0]:
        raise ValueError(
            "subspace_alignment needs two (rows, k) bases with the same rows. "
            f"Got {tuple(u_t.shape)} and {tuple(u_T.shape)}; compare U with U and V with V."
        )
    if not isinstance(k, int) or not 1 <= k <= min(u_t.shape[1], u_T.shape[1]):
        raise ValueError(
            f"The 'k' parameter of subspace_alignment must be in 1..{min(u_t.shape[1], u_T.shape[1])} "
            f"(the columns both bases have). Got {k!r}."
        )
    cross = u_t[:, :k].double().T @ u_T[:, :k].double()  # (k, k)
    return float((cross**2).sum()) / k


def gap_k(s: torch.Tensor, k: int, *, rank_cap: int | None = None) -> float:
    """(σ_K − σ_{K+1}) / σ_1 with σ beyond the spectrum = 0; NaN for Δ = 0.

    Shape: s (≥ k,) descending; a missing σ_{K+1} counts as 0 only when s is the full spectrum
    (len(s) == k), so pass k+1 values from a truncated SVD. rank_cap = min(rows, cols): every
    σ_i with i > rank_cap is 0, so gap_k is σ_K / σ_1 at k = rank_cap and 0 beyond it.
    """
    if rank_cap is not None and isinstance(k, int) and k > rank_cap >= 1:
        _check_k(1, s, "gap_k", need=1)
        return relative(0.0, float(s[0]))
    _check_k(k, s, "gap_k", need=k)
    s = s.double()
    nxt = float(s[k]) if s.shape[0] > k and k != rank_cap else 0.0
    return relative(float(s[k - 1]) - nxt, float(s[0]))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """⟨a, b⟩_F / (‖a‖_F ‖b‖_F), in float64; NaN when either is zero.

    Shape: a and b the same shape, e.g. Δ_t and Δ_T (out, in).
    """
    return relative(inner(a, b), math.sqrt(frobenius_sq(a)) * math.sqrt(frobenius_sq(b)))


def random_alignment_baseline(k: int, rows: int) -> float:
    """Expected subspace_alignment of two random K-dim subspaces of R^rows: K / rows."""
    if not 1 <= k <= rows:
        raise ValueError(f"random_alignment_baseline needs 1 ≤ k ≤ rows. Got k={k}, rows={rows}.")
    return k / rows


def _check_k(k: int, s: torch.Tensor, name: str, need: int) -> None:
    if s.dim() != 1:
        raise ValueError(
            f"{name} needs a 1-D tensor of singular values. Got shape {tuple(s.shape)}."
        )
    if not isinstance(k, int) or not 1 <= k <= s.shape[0] or need > s.shape[0]:
        raise ValueError(
            f"The 'k' parameter of {name} must be an integer in 1..{s.shape[0]} (the singular "
            f"values given). Got {k!r}; compute the top-k SVD with a larger k."
        )


def _dot64(a: torch.Tensor, b: torch.Tensor) -> float:
    """Σ a·b over all elements: float32 chunk sums added in float64, never over- or underflowing.

    Any finite input gives a finite sum unless the true value exceeds the float64 range.
    """
    same = b is a
    work = torch.float64 if a.dtype == torch.float64 else torch.float32
    tiny = _TINY[work]
    fa, fb = a.reshape(-1), b.reshape(-1)
    conv_a, conv_b = fa.dtype != work, fb.dtype != work  # converts one chunk at a time, if at all
    dot = torch.dot
    total = 0.0
    for start in range(0, fa.numel(), _CHUNK):
        ca = fa[start : start + _CHUNK]
        if conv_a:
            ca = ca.to(work)
        if same:
            cb = ca
        else:
            cb = fb[start : start + _CHUNK]
            if conv_b:
                cb = cb.to(work)
        part = float(dot(ca, cb))
        if not (abs(part) >= tiny and math.isfinite(part)):  # rare: tiny, zero, huge or NaN
            part = _exact_chunk(ca, cb)
        total += part
    return total


def _exact_chunk(a: torch.Tensor, b: torch.Tensor) -> float:
    """Σ a·b in float64 with both sides scaled by powers of two (as BLAS nrm2 scales).

    Shape: a and b (n,). NaN or Inf inside gives a non-finite result, as it should.
    """
    ma = _max_abs(a)
    mb = ma if b is a else _max_abs(b)
    if not (math.isfinite(ma) and math.isfinite(mb)):
        return float(torch.dot(a.double(), b.double()))  # NaN or Inf inside: propagated
    if ma == 0.0 or mb == 0.0:
        return 0.0  # a zero chunk (a frozen tensor): no float64 copy
    a64 = a.double()
    b64 = a64 if b is a else b.double()
    # Exponents clamped so that 2^-e stays a normal float64: scaled maxima lie in [2^-74, 2^24].
    ea = min(max(math.frexp(ma)[1], -1000), 1000)
    eb = min(max(math.frexp(mb)[1], -1000), 1000)
    sa = a64 * 2.0**-ea
    sb = sa if b is a else b64 * 2.0**-eb
    try:
        return math.ldexp(float(torch.dot(sa, sb)), ea + eb)
    except OverflowError:  # the true sum lies beyond the float64 range
        return math.copysign(math.inf, float(torch.dot(sa, sb)))


def _max_abs(x: torch.Tensor) -> float:
    """max |x|, NaN when x holds a NaN (aminmax: 4× faster than abs().max() on 64 Ki floats)."""
    lo, hi = (float(v) for v in torch.aminmax(x))
    return math.nan if math.isnan(lo) or math.isnan(hi) else max(-lo, hi)
