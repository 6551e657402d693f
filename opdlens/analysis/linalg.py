"""Top-K singular triplets of an update with an accuracy contract, and its full spectrum."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from .krylov import MIN_PASSES, block_krylov
from .metrics import frobenius_sq

logger = logging.getLogger(__name__)

METHODS = ("auto", "exact", "randomized", "subspace")
_MAX_PASSES = 60  # cap for an explicit "randomized"/"subspace" request
_BUDGET_SHARE = 0.5  # "auto" spends at most this share of the exact cost on passes
_P_EXTRA = 8  # block size p = k + 8
_SEED = 0


@dataclass(frozen=True)
class TopK:
    """Top-k singular triplets of one update, plus σ_{k+1} for gap_k.

    Shape: U (m, k), S (k+1,) float64, descending, σ beyond min(m, n) = 0; V (n, k).
    `method` says how they were computed; `iterations` counts subspace passes (an "exact"
    result with iterations > 0 is a fallback after the certificate failed).
    """

    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor
    method: str
    iterations: int

    @property
    def k(self) -> int:
        """Number of triplets."""
        return self.U.shape[1]


def top_k_svd(
    delta: torch.Tensor,
    k: int,
    *,
    init: torch.Tensor | None = None,
    method: str = "auto",
    generator: torch.Generator | None = None,
    total_sq: float | None = None,
) -> TopK:
    """Top-k singular triplets of Δ meeting the design's accuracy contract.

    Contract (design.md): energies and alignments computed from the returned factors match an
    exact float64 SVD to |energy error| ≤ 1e-3 and |alignment error| ≤ 1e-2 for every K ≤ k
    whose subspace is well defined: σ_K above the numerical floor (σ_K > 1e-4·σ_1) and a gap
    (σ_K − σ_{K+1}) / σ_1 ≥ 1e-2. Below that the design flags the alignment as meaningless
    (gap_k < 1e-2: near-ties, a noise bulk, K above the update's rank) — no method resolves such
    a subspace stably, exact included — so only its energy is certified.

    Methods:
    - "exact": eigh of the float64 Gram matrix of the small side, then an SVD of Δᵀ·U_{k+1}
      (n, k+1) in float64 for the values and the other side. On this 2-core CPU it beats
      torch.linalg.svd at every size measured (3072×1024: 0.3 s against 1.3–2.9 s float32).
    - "randomized" (cold Gaussian start) and "subspace" (warm start from `init`, the previous
      step's V, padded with Gaussian columns): block Krylov iteration with Rayleigh–Ritz, blocks
      of p = k + 8 columns. Pass t adds Q_t (orthonormalised against the space) and computes
      Y_t = ΔQ_t and C_t = ΔᵀY_t; the SVD of [Y_0 … Y_t] gives Ritz triplets (u_i, σ̃_i, v_i)
      with Δv_i = σ̃_i u_i exactly, and C·W/σ̃ gives Δᵀu_i for free. The space restarts from its
      Ritz vectors after 8 blocks (`krylov`). A Krylov space resolves the top of a noise bulk in
      a few passes where subspace iteration needs many (planted rank-4 + 20 % bulk, 512×1024:
      7 passes against more than 10).
    - "factored": Δ = b @ a via QR of b and aᵀ and an SVD of the r×r core, never forming Δ.

    Certificate (checked after every pass; ρ_i = ‖Δᵀu_i − σ̃_i v_i‖):
    - per-index brackets lo_i ≤ σ_i ≤ hi_i: lo = σ(ΔᵀU) (the Ritz values one half-step on;
      σ̃_i ≤ lo_i by interlacing, since σ̃ = σ(UᵀΔQ)), hi_i = min_{l≤i} (σ̃_l + ρ_l/√2) (a singular
      value lies within ρ_l/√2 of σ̃_l: the residual of [u_l; v_l]/√2 for [[0, Δ], [Δᵀ, 0]],
      `krylov._upper`; and σ_i ≤ σ_l). The reported S is lo.
    - energy, gap-free: Σ_{i≤k} (hi_i² − lo_i²) ≤ 8e-4·‖Δ‖_F² bounds |energy error| for every
      K ≤ k at once. Inside a noise bulk no Ritz vector converges, but the bulk's top values are
      all pinned between lo and the bulk edge, which is all the energy needs.
    - subspaces, only where they may be well defined: σ_K > 1e-4·σ_1 and hi_K − lo_{K+1}
      ≥ 1e-2·lo_1 (an upper bound on the gap; below it design.md flags the subspace and no pass
      is spent on it): Wedin's bound ‖S_K‖_F / δ_K ≤ 2e-3 with δ_K = σ̃_K − hi_{K+1}; that keeps
      ‖sin Θ‖_F of U_K and V_K ≤ 2e-3, so an alignment between two certified results is off by
      at most 2·2·2e-3/√K ≤ 8e-3.
    hi rests on the premise of every iterative method: the space has not missed a direction
    above σ̃_l + ρ_l/√2. Two passes at least, and a Gaussian block in every start, guard it.
    If the certificate is not met within the pass budget, or the progress of the worst ratio
    predicts it will not be (flat spectra, near-ties, float32 residual floor), the result is
    recomputed exactly: `method` is then "exact" with `iterations` > 0, the passes spent.
    The budget under "auto" is a flop model: passes cost 4mnp, exact costs 2·max·min² + 8·min³.

    Figures: BENCHMARKS.md (issue 11). Exact wins below about 384×1152 on this 2-core CPU.

    Shape: delta (m, n) float32 or float64; init (n, k') any basis of a right subspace
    (e.g. the previous step's V of the same tensor), orthonormalised here. total_sq: ‖Δ‖_F² as
    `metrics.frobenius_sq(delta)` gives it, when the caller has it (saves one pass over Δ).

    Raises:
        ValueError: delta not a finite 2-D float32/float64 tensor, k outside 1..min(m, n),
            init of the wrong shape, unknown method, or method="subspace" without init.
    """
    _check_delta(delta, "delta", finite=False)  # checked below from ‖Δ‖², without a pass
    m, n = delta.shape
    if not isinstance(k, int) or not 1 <= k <= min(m, n):
        raise ValueError(
            f"The 'k' parameter of top_k_svd must be an integer in 1..min(m, n) = 1..{min(m, n)} "
            f"for a ({m}, {n}) update. Got {k!r} instead; clamp k to min(m, n)."
        )
    if method not in METHODS:
        raise ValueError(
            f"The 'method' parameter of top_k_svd must be one of {METHODS}. Got {method!r}."
        )
    if init is not None:
        if init.dim() != 2 or init.shape[0] != n or init.shape[1] < 1:
            raise ValueError(
                f"The 'init' parameter of top_k_svd must be an (n, k') right basis with n = {n} "
                f"rows for a ({m}, {n}) update. Got shape {tuple(init.shape)}; pass the V of the "
                "same tensor (not U, and not of a transposed or sliced tensor)."
            )
        if not bool(torch.isfinite(init).all()):
            raise ValueError(
                "The 'init' parameter of top_k_svd contains NaN or Inf; pass init=None."
            )
    elif method == "subspace":
        raise ValueError("method='subspace' needs a warm start: pass init=V of a related update.")

    if total_sq is None:
        total_sq = frobenius_sq(delta)
    if not math.isfinite(total_sq):  # any NaN or Inf makes the sum of squares non-finite
        raise ValueError("The 'delta' parameter contains NaN or Inf; its spectrum is undefined.")
    if total_sq == 0.0:
        return _zero(m, n, k, delta.dtype, delta.device)
    p = min(min(m, n), k + _P_EXTRA)
    if method == "exact" or p < k + 2:
        return _exact(delta, k, iterations=0)
    if method == "auto":
        budget = _pass_budget(m, n, p)
        if p >= min(m, n) // 2 or budget < MIN_PASSES + (0 if init is not None else 2):
            return _exact(delta, k, iterations=0)
    else:
        budget = _MAX_PASSES
    if generator is None:
        generator = torch.Generator(device=delta.device).manual_seed(_SEED)
    found, passes = block_krylov(delta, k, p, init, generator, total_sq, budget)
    if found is not None:
        u, sv, v = found
        return TopK(u, sv, v, "randomized" if init is None else "subspace", passes)
    logger.debug("top_k_svd: no certificate after %d passes on %s; exact instead", passes, (m, n))
    return _exact(delta, k, iterations=passes)


def svd_label(top: TopK) -> str:
    """How a result was computed, for provenance: its method, or "fallback_to_exact"."""
    return "fallback_to_exact" if top.method == "exact" and top.iterations > 0 else top.method


def factored_top_k_svd(b: torch.Tensor, a: torch.Tensor, k: int) -> TopK:
    """Exact top-k triplets of Δ = b @ a without forming Δ (LoRA; scale folded into b).

    Shape: b (m, r), a (r, n). Directions beyond rank r (σ = 0) are an arbitrary, fixed
    orthonormal completion; their subspace is undefined and gap_k flags it.
    """
    _check_delta(b, "b")
    _check_delta(a, "a")
    if b.shape[1] != a.shape[0]:
        raise ValueError(
            f"factored_top_k_svd needs b (m, r) and a (r, n) with the same r. Got b "
            f"{tuple(b.shape)} and a {tuple(a.shape)}; pass lora_B (out, r) as b and lora_A (r, in) as a."
        )
    m, n = b.shape[0], a.shape[1]
    if not isinstance(k, int) or not 1 <= k <= min(m, n):
        raise ValueError(
            f"The 'k' parameter of factored_top_k_svd must be an integer in 1..{min(m, n)} for a "
            f"({m}, {n}) update. Got {k!r}; clamp k to min(m, n)."
        )
    out_dtype = torch.promote_types(b.dtype, torch.float32)
    qb, rb = torch.linalg.qr(b.double())  # (m, r'), (r', r)
    qa, ra = torch.linalg.qr(a.double().T)  # (n, r''), (r'', r)
    uc, sc, vch = torch.linalg.svd(rb @ ra.T)  # core (r', r'')
    c = sc.shape[0]
    u, v = qb @ uc[:, :c], qa @ vch[:c].T
    gen = torch.Generator(device=b.device).manual_seed(_SEED)
    u, v = _complete(u, k, gen), _complete(v, k, gen)
    s = torch.zeros(k + 1, dtype=torch.float64, device=b.device)
    s[: min(c, k + 1)] = sc[: k + 1]
    return TopK(u[:, :k].to(out_dtype), s, v[:, :k].to(out_dtype), "factored", 0)


def singular_values(delta: torch.Tensor, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """All min(m, n) singular values of Δ, descending, in `dtype`.

    Shape: delta (m, n). A float32 Δ goes through the float64 Gram matrix (error ≤ ~1e-8·σ_1,
    below the float32 resolution of Δ itself, and 4× faster than svdvals here); a float64 Δ
    through torch.linalg.svdvals in float64.
    """
    _check_delta(delta, "delta")
    if delta.dtype == torch.float64:
        tall = delta if delta.shape[0] >= delta.shape[1] else delta.T  # svdvals is slow on wide
        return torch.linalg.svdvals(tall).to(dtype)
    d = delta.double()
    gram = d.T @ d if d.shape[0] >= d.shape[1] else d @ d.T  # (min, min)
    evals = torch.linalg.eigvalsh(gram).flip(0)
    return evals.clamp_min(0.0).sqrt().to(dtype)


def _check_delta(x: torch.Tensor, name: str, *, finite: bool = True) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"The '{name}' parameter must be a 2-D (out, in) tensor. Got {got}.")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"The '{name}' parameter must be float32 or float64. Got {x.dtype}; call .float() first."
        )
    if x.numel() == 0:
        raise ValueError(f"The '{name}' parameter is empty (shape {tuple(x.shape)}).")
    if finite and not bool(torch.isfinite(x).all()):
        raise ValueError(f"The '{name}' parameter contains NaN or Inf; its spectrum is undefined.")


def _pass_budget(m: int, n: int, p: int) -> int:
    """Passes worth spending before exact is cheaper (flop model, deterministic)."""
    lo, hi = min(m, n), max(m, n)
    exact_cost = 2.0 * hi * lo * lo + 8.0 * lo**3
    pass_cost = 4.0 * m * n * p + 20.0 * (m + n) * p * p
    return min(_MAX_PASSES, int(_BUDGET_SHARE * exact_cost / pass_cost))


def _zero(m: int, n: int, k: int, dtype: torch.dtype, device: torch.device) -> TopK:
    """Δ = 0: all σ are 0 and any orthonormal bases will do; take the first unit vectors."""
    u = torch.eye(m, k, dtype=dtype, device=device)
    v = torch.eye(n, k, dtype=dtype, device=device)
    return TopK(u, torch.zeros(k + 1, dtype=torch.float64, device=device), v, "exact", 0)


def _exact(delta: torch.Tensor, k: int, *, iterations: int) -> TopK:
    """Top-k triplets from eigh of the float64 Gram matrix of the small side."""
    d = delta.double()
    lo = min(d.shape)
    k1 = min(k + 1, lo)
    wide = d.shape[0] <= d.shape[1]
    side = d if wide else d.T  # (lo, hi): its left singular vectors are the small side
    _, evecs = torch.linalg.eigh(side @ side.T)  # ascending, (lo, lo)
    basis = evecs.flip(1)[:, :k1]  # (lo, k1)
    y = side.T @ basis  # (hi, k1) = other side · Σ · rotation
    other, s, wh = torch.linalg.svd(y, full_matrices=False)
    small = basis @ wh.T  # (lo, k1)
    u, v = (small, other) if wide else (other, small)
    out = torch.zeros(k + 1, dtype=torch.float64, device=d.device)
    out[:k1] = s
    return TopK(u[:, :k].to(delta.dtype), out, v[:, :k].to(delta.dtype), "exact", iterations)


def _complete(q: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Extend orthonormal columns q (rows, c) to at least k with a fixed Gaussian complement."""
    rows, c = q.shape
    if c >= k:
        return q
    x = torch.randn(rows, k - c, generator=gen, dtype=q.dtype, device=q.device)
    for _ in range(2):  # twice is enough for orthogonality to working precision
        x = x - q @ (q.T @ x)
    return torch.cat([q, torch.linalg.qr(x)[0]], 1)
