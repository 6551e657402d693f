"""Block Krylov iteration for the top-k singular triplets, with its a-posteriori certificate.

`linalg.top_k_svd` documents the method and the certificate; this module is its iteration.
"""

from __future__ import annotations

import math

import torch

from .._workers import stop_point
from .metrics import ILL_DEFINED_GAP

_ENERGY_TOL = 8e-4  # the gap-free bound of all K ≤ k, within the 1e-3 contract
_ANGLE_TOL = 2e-3  # ‖sin Θ‖_F per result; two results → alignment error ≤ 8e-3
_RANK_FLOOR = 1e-4  # σ_K/σ_1 below this: beyond the numerical rank, subspace not certified
MIN_PASSES = 2  # never certify from a single pass (guards against a missed direction)
_DEPTH = 8  # Krylov blocks kept before a restart from the Ritz vectors
_TINY_GAP = 1e-7  # keeps the ratio finite (and its progress measurable) while δ_K ≤ 0
_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def _start(
    delta: torch.Tensor, p: int, init: torch.Tensor | None, gen: torch.Generator
) -> torch.Tensor:
    """Orthonormal (n, p) start: init's columns first, Gaussian columns for the rest."""
    n = delta.shape[1]
    # A warm start from the cache or another step lives on the CPU: move it to Δ's device.
    cols = [] if init is None else [init[:, :p].to(device=delta.device, dtype=delta.dtype)]
    have = 0 if init is None else cols[0].shape[1]
    if have < p:
        cols.append(torch.randn(n, p - have, generator=gen, dtype=delta.dtype, device=delta.device))
    return torch.linalg.qr(torch.cat(cols, 1))[0]


def block_krylov(
    delta: torch.Tensor,
    k: int,
    p: int,
    init: torch.Tensor | None,
    gen: torch.Generator,
    total_sq: float,
    budget: int,
) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None, int]:
    """Block Krylov iteration with Rayleigh–Ritz until certified: ((U, S, V), passes), or
    (None, passes) when the certificate is not met within `budget` or will not be.

    Shape: delta (m, n); U (m, k), S (k+1,) float64 lower bounds, V (n, k); p the block size.

    The space grows by one block of p columns per pass, [Q, ΔᵀΔQ, (ΔᵀΔ)²Q, …], and restarts
    from its Ritz vectors when it reaches _DEPTH blocks or the matrix's smaller side. The Ritz
    problem is the SVD of ΔB = Q_Y R, with Q_Y R grown one block per pass (an SVD of the small
    R; the Gram (ΔB)ᵀΔB would square the condition number and lose the small Ritz values).
    """
    m, n = delta.shape
    depth = max(1, min(_DEPTH, (min(m, n) - p) // p))
    width = depth * p
    basis = delta.new_empty(n, width)  # orthonormal blocks Q_t of the space
    # (Δᵀ Δ Q_t)ᵀ = (ΔQ_t)ᵀ Δ by rows: the next block before orthogonalisation. Yᵀ·Δ runs ~1.6x
    # faster than Δᵀ·Y on this CPU's BLAS for large Δ (one pass over Δ's rows, not its columns).
    ct = delta.new_empty(width, n)
    qy = delta.new_empty(m, width)  # orthonormal Q_Y with ΔB = Q_Y R
    rr = torch.zeros(width, width, dtype=torch.float64, device=delta.device)
    q = _start(delta, p, init, gen)  # (n, p)
    used = 0
    ratios: list[float] = []
    for it in range(1, budget + 1):
        stop_point()
        s0, s1 = used, used + p
        basis[:, s0:s1] = q
        y = delta @ q  # (m, p)
        torch.mm(y.T, delta, out=ct[s0:s1])
        qy[:, s0:s1], rr[:s1, s0:s1] = _extend_qr(y, qy[:, :s0])
        used = s1
        if it < MIN_PASSES and used + p <= width:  # no certificate yet: no Ritz problem either
            q = _orthonormal_against(ct[s0:s1].T, basis[:, :used])
            continue
        ur, sy, wh = torch.linalg.svd(rr[:used, :used])  # float64, (used, used)
        r = min(p, int((sy > sy[0] * _RANK_FLOOR).sum()))  # directions above the noise floor
        w = wh[:r].T.to(delta.dtype)  # (used, r)
        inv = (1.0 / sy[:r]).to(delta.dtype)
        v = basis[:, :used] @ w  # (n, r): Δ vᵢ = σ̃ᵢ uᵢ
        z = (ct[:used].T @ w) * inv  # (n, r) = Δᵀ uᵢ
        rho = torch.linalg.vector_norm(z - v * sy[:r].to(delta.dtype), dim=0).double()
        low = torch.linalg.svdvals(z).double()  # σ(ΔᵀU): σ̃ᵢ ≤ lowᵢ ≤ σᵢ
        worst = _certificate(sy[:r], rho, low, k, total_sq) if r > k else math.inf
        if worst <= 1.0 and it >= MIN_PASSES:
            u = qy[:, :used] @ ur[:, :k].to(delta.dtype)  # (m, k)
            return (u, low[: k + 1].clone(), v[:, :k].contiguous()), it
        ratios.append(worst)
        if _hopeless(ratios, budget - it):
            return None, it
        nxt = ct[s0:s1].T
        if used + p > width:  # restart from the Ritz vectors (and the newest direction)
            nxt = torch.cat([v, nxt[:, : p - r]], 1) if r < p else v[:, :p]
            used = 0
            rr.zero_()
        q = _orthonormal_against(nxt, basis[:, :used])
    return None, budget


def _extend_qr(y: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Extend an orthonormal Q (rows, s) by the block y (rows, p): (new Q block, R column block).

    [Q, y] = [Q, Q_new] [[I, h], [0, r]]: returns Q_new (rows, p) and [h; r] (s + p, p), float64.
    """
    h = torch.zeros(q.shape[1], y.shape[1], dtype=torch.float64, device=y.device)
    x = y
    for _ in range(2):  # Gram–Schmidt twice
        if q.shape[1]:
            c = _tmm(q, x)
            x = x - q @ c
            h += c.double()
    qb, rb = torch.linalg.qr(x)
    if q.shape[1] and _shrunk(rb, y):  # x nearly inside span(Q): orthonormalise it once more
        t = _tmm(q, qb)
        qb2, rb2 = torch.linalg.qr(qb - q @ t)
        h += t.double() @ rb.double()
        qb, rb = qb2, rb2 @ rb
    return qb, torch.cat([h, rb.double()], 0)


def _orthonormal_against(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Orthonormal columns spanning x's part outside span(basis) (Gram–Schmidt twice, then QR).

    x may lie almost inside the basis (a converged space): its normalised remainder is then
    mostly rounding, so it is projected and orthonormalised once more.
    """
    if not basis.shape[1]:
        return torch.linalg.qr(x)[0]
    y = x
    for _ in range(2):
        x = x - basis @ _tmm(basis, x)
    q, r = torch.linalg.qr(x)
    return torch.linalg.qr(q - basis @ _tmm(basis, q))[0] if _shrunk(r, y) else q


def _tmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """aᵀ·b for tall a (rows, s) and b (rows, p), computed as (bᵀ·a)ᵀ: ~1.5x faster on this CPU."""
    return (b.T @ a).T


def _shrunk(r: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether QR of y's projection left some |r_jj| under 1/8 of ‖y_j‖: that direction is then
    mostly rounding, tilted towards the basis by up to 8ε, and needs one more pass."""
    ratio = torch.diagonal(r).abs() / torch.linalg.vector_norm(y, dim=0)
    return not bool((ratio >= 0.125).all())  # also 0/0 = NaN


def _certificate(
    ritz: torch.Tensor, rho: torch.Tensor, low: torch.Tensor, k: int, total_sq: float
) -> float:
    """Worst ratio of the error bounds to their tolerances (≤ 1: certified; inf: inconsistent).

    Shape: ritz, rho, low (p,) float64, p > k. ritz: σ̃ of ΔQ; rho: ρᵢ = ‖Δᵀuᵢ − σ̃ᵢvᵢ‖;
    low: σ(ΔᵀU) with σ̃ᵢ ≤ lowᵢ ≤ σᵢ. Upper bounds hiᵢ = min_{l≤i} _upper(σ̃_l, ρ_l) ≥ σᵢ.
    """
    hi = torch.cummin(_upper(ritz, rho), 0).values[: k + 1]
    lo = low[: k + 1]
    if bool((lo > hi * (1.0 + 1e-6)).any()):
        return math.inf  # a lower bound above an upper one: the subspace missed a direction
    s1 = float(lo[0])
    if s1 <= 0.0:
        return 0.0
    worst = float((hi[:k] ** 2 - lo[:k] ** 2).sum()) / total_sq / _ENERGY_TOL
    res = torch.cumsum(rho[:k] ** 2, 0).sqrt()  # ‖S_K‖_F for K = 1..k
    delta_k = ritz[:k] - hi[1 : k + 1]  # δ_K: σ̃_K above every possible σ_{K+1}
    floor = _TINY_GAP * s1
    # Ill-defined subspaces (design.md) need no certificate, and get no passes; their energy
    # is certified above. hi_K − lo_{K+1} ≥ σ_K − σ_{K+1}: below 1e-2·σ_1, gap_K is surely small.
    defined = (hi[:k] > _RANK_FLOOR * s1) & (hi[:k] - lo[1 : k + 1] >= ILL_DEFINED_GAP * s1)
    for kk in torch.nonzero(defined).flatten().tolist():
        worst = max(worst, float(res[kk]) / _ANGLE_TOL / max(float(delta_k[kk]), floor))
    return worst


def _upper(ritz: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """σ̃ᵢ + ρᵢ/√2: the top of the interval around σ̃ᵢ in which Δ has a singular value.

    Shape: ritz, rho (p,). Proof: J = [[0, Δ], [Δᵀ, 0]] is symmetric with eigenvalues ±σⱼ (and
    zeros); x = [uᵢ; vᵢ]/√2 is a unit vector with Jx − σ̃ᵢx = [Δvᵢ − σ̃ᵢuᵢ; Δᵀuᵢ − σ̃ᵢvᵢ]/√2
    = [0; rᵢ]/√2, since Δvᵢ = σ̃ᵢuᵢ exactly for a Ritz pair of ΔQ. For a symmetric matrix some
    eigenvalue lies within ‖Jx − σ̃ᵢx‖ = ρᵢ/√2 of σ̃ᵢ (Bauer–Fike), so Δ has a singular value (or
    a zero) there. Reading it as σᵢ ≤ σ̃ᵢ + ρᵢ/√2 is the premise `top_k_svd` states: the space
    has missed no direction above it. (The former σ̃ᵢ + ρᵢ took the radius of Δ, not of J.)
    The quadratic radius of ΔᵀΔ, σ̃ᵢ² + σ̃ᵢρᵢ, would be tighter still, but inside a noise bulk
    it fell below the exact σᵢ on planted spectra: the premise fails there, so it is not used.
    """
    return ritz + rho * _INV_SQRT2


def _hopeless(ratios: list[float], remaining: int) -> bool:
    """True when the certificate's rate of fall cannot reach 1 within the remaining passes."""
    if remaining <= 0:
        return True
    if len(ratios) < 4 or not math.isfinite(ratios[-1]):
        return False
    if not math.isfinite(ratios[-3]) or ratios[-3] <= 0.0:
        return False
    rate = (ratios[-1] / ratios[-3]) ** 0.5
    if rate >= 0.97:
        return True  # stalled: a near-tie, a flat spectrum or the float32 residual floor
    return math.log(ratios[-1]) / -math.log(rate) > remaining
