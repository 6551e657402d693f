"""The base model's principal directions: W_0's top-K triplets and how each step's update meets them."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

import torch

from . import metrics as M
from .base_bounds import (
    BASE_RTOL,
    MOVED_RTOL,
    Pinned,
    pin_moved,
    spectral_norm_bound,
    value_brackets,
)
from .cache import CachedFactors, TensorCache, content_key
from .krylov import block_krylov
from .linalg import TopK, svd_label, top_k_svd
from .top_eigh import top_gram_eigvecs

if TYPE_CHECKING:
    from .update import Update

BASE_PREFIX = "w0/"  # cache slice keys of W_0's factors: "w0/all", "w0/e3/q"
BASE_STEP = 0  # the step W_0's cache entries are stored under
_WARM_PASSES = 6  # Krylov passes from W_0's V before W_t is decomposed through its Gram matrix
# σ_{K+1}(W_0) ≥ FLAT_TOP · σ_1(W_0): a flat top (random init: 0.92–0.98 on the 207 M model's
# shapes; a pretrained-like decaying spectrum: 0.3), where the warm start seldom certifies W_t
# within its passes and W_t goes to its Gram matrix at once. A wrong guess costs time only.
FLAT_TOP = 0.9


def certified_top_k(
    w: torch.Tensor,
    k: int,
    *,
    init: torch.Tensor | None = None,
    ref: torch.Tensor | None = None,
    total_sq: float | None = None,
) -> TopK:
    """Top-k triplets of a weight matrix W with σ_1..σ_k pinned by certified brackets.

    `linalg.top_k_svd` certifies energies against ‖W‖_F², which for a slowly decaying weight
    spectrum leaves single σ_i loose; spectral drift needs each σ_i. So, in order, the first
    result whose `value_brackets` are narrow enough (S then holds lo): hi_i − lo_i ≤
    MOVED_RTOL · ref_i with `ref` (W_0's σ, for W_t), else ≤ BASE_RTOL · lo_i:
    1. with `init` (W_0's V for W_t), block Krylov from it, at most _WARM_PASSES passes, under
       linalg's certificate (energies; subspaces where the gap is ≥ 1e-2): "subspace";
    2. the top k + 8 eigenvectors of the float32 Gram matrix of the small side, refined by a
       Rayleigh–Ritz step in float64 (half the time of linalg's float64 Gram): "gram32";
    3. linalg's exact float64 decomposition: "exact" (iterations > 0 when 1 was tried, so
       `svd_label` says "fallback_to_exact").

    Shape: w (m, n) float32; init (n, k') a right basis to warm-start from; ref (≥ k,).
    """
    tol = None if ref is None else MOVED_RTOL * ref[:k].double().cpu()
    passes = 0
    p = min(min(w.shape), k + 8)
    if init is not None and p >= k + 2:
        if total_sq is None:
            total_sq = M.frobenius_sq(w)
        gen = torch.Generator(device=w.device).manual_seed(0)
        found, passes = block_krylov(w, k, p, init, gen, total_sq, _WARM_PASSES)
        if found is not None:
            top = _bracketed(w, TopK(found[0], found[1], found[2], "subspace", passes), tol)
            if top is not None:
                return top
    if w.dtype == torch.float32:
        top = _bracketed(w, _gram32(w, k), tol)
        if top is not None:
            return top
    return replace(top_k_svd(w, k, method="exact", total_sq=total_sq), iterations=passes)


def _bracketed(w: torch.Tensor, top: TopK, tol: torch.Tensor | None) -> TopK | None:
    """top with S[:k] = lo when every bracket is narrower than tol (None: BASE_RTOL · lo)."""
    lo, hi = value_brackets(w, top)
    if not bool(((hi - lo).cpu() <= (BASE_RTOL * lo.cpu() if tol is None else tol)).all()):
        return None
    s = top.S.clone()
    s[: top.k] = lo.to(s.dtype)
    return replace(top, S=s)


def _gram32(w: torch.Tensor, k: int) -> TopK:
    """Top-k triplets from the float32 Gram matrix of the small side's top eigenvectors,
    refined by a Rayleigh–Ritz step in float64."""
    lo_dim = min(w.shape)
    k1 = min(k + 8, lo_dim)
    wide = w.shape[0] <= w.shape[1]
    side = w if wide else w.T  # (lo, hi)
    basis = torch.linalg.qr(top_gram_eigvecs(side, k1).to(w.device).double())[0]  # (lo, k1)
    y = (side.T @ basis.to(w.dtype)).double()  # (hi, k1)
    other, sv, wh = torch.linalg.svd(y, full_matrices=False)
    small = basis @ wh.T  # (lo, k1)
    u, v = (small, other) if wide else (other, small)
    s = torch.zeros(k + 1, dtype=torch.float64, device=w.device)
    s[: min(k + 1, k1)] = sv[: k + 1]
    return TopK(u[:, :k].to(w.dtype), s, v[:, :k].to(w.dtype), "gram32", 0)


def principal_energies(
    u0: torch.Tensor, v0: torch.Tensor, delta: torch.Tensor, total_sq: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cumulative ‖U_{0,K}ᵀΔ‖_F² / ‖Δ‖_F² and ‖ΔV_{0,K}‖_F² / ‖Δ‖_F² for K = 1..k.

    Shape: u0 (m, k), v0 (n, k) orthonormal columns, best first; delta (m, n); returns two
    (k,) float64 tensors (NaN for Δ = 0).
    """
    if total_sq == 0.0 or not math.isfinite(total_sq):
        nan = torch.full((u0.shape[1],), math.nan, dtype=torch.float64)
        return nan, nan.clone()
    d = delta.to(u0.dtype)
    left = (u0.T @ d).double().pow(2).sum(1).cumsum(0) / total_sq  # rows of (k, n)
    right = (d @ v0).double().pow(2).sum(0).cumsum(0) / total_sq  # columns of (m, k)
    return left.clamp(max=1.0), right.clamp(max=1.0)


def step_columns(
    ranks: Sequence[int],
    base: CachedFactors | None,
    cap: int,
    energies: tuple[torch.Tensor, torch.Tensor] | None,
    moved: CachedFactors | Pinned | None,
) -> dict[str, float]:
    """The columns of one row: energies of Δ (None: NaN), drift and rotation of W_t (None: NaN).

    moved: W_t's factors, or its values and rotations pinned without them (`pin_moved`).

    base: W_0's factors (k columns, k+1 values; None: a vector, every column NaN); cap =
    min(rows, cols). K above the columns computed (K > cap) gives NaN, except base_gap (0, as
    gap_k defines it). The keys are `frame.geometry_columns(ranks)`.
    """
    out: dict[str, float] = {}
    have = 0 if base is None else base.u.shape[1]
    for k in ranks:
        ok = base is not None and k <= have
        e_l = e_r = drift = drift_mean = rot_l = rot_r = math.nan
        if ok and energies is not None:
            e_l, e_r = float(energies[0][k - 1]), float(energies[1][k - 1])
        if ok and moved is not None:
            assert base is not None
            pairs = zip(moved.s.double()[:k].tolist(), base.s.double()[:k].tolist(), strict=True)
            rel = [M.relative(abs(a - b), b) for a, b in pairs]
            drift, drift_mean = max(rel), sum(rel) / k
            if isinstance(moved, Pinned):
                rot_l, rot_r = moved.rotation[k]
            else:
                rot_l = 1.0 - M.subspace_alignment(base.u, moved.u, k)
                rot_r = 1.0 - M.subspace_alignment(base.v, moved.v, k)
        out[f"principal_energy_left_k{k}"], out[f"principal_energy_right_k{k}"] = e_l, e_r
        out[f"spectral_drift_k{k}"], out[f"spectral_drift_mean_k{k}"] = drift, drift_mean
        out[f"principal_rotation_left_k{k}"] = max(0.0, rot_l) if rot_l == rot_l else rot_l
        out[f"principal_rotation_right_k{k}"] = max(0.0, rot_r) if rot_r == rot_r else rot_r
        gap = math.nan
        if base is not None:
            gap = M.gap_k(base.s.double(), k, rank_cap=cap)
        out[f"base_gap_k{k}"] = gap
    return out


class Counts(Protocol):
    """Where SVD calls and cache hits are counted (sweep.TensorResult)."""

    svd_calls: int
    cache_hits: int
    svd_methods: dict[str, int]


def _factors(top: TopK) -> CachedFactors:
    return CachedFactors(top.U.cpu(), top.S.cpu(), top.V.cpu(), top.method, top.iterations)


class SweepGeometry:
    """Per-tensor state of `--base-geometry` inside one TensorSweep: W_0's factors per slice.

    `piece(key)` gives W_0's matrix of a slice in its stored dtype; SVDs (by label, "base_w0:…"
    and "base_wt:…") and cache hits of W_0's factors are counted in `counts`. `donors()` gives
    this tensor's files in other runs' caches (read, never written): W_0's factors found there
    under the same content key (the same base bytes) are taken and stored in `cache` too.
    """

    def __init__(
        self, piece: Callable[[str], torch.Tensor], kmax: int, device: str,
        cache: TensorCache | None, w0_digest: bytes, slice_digests: dict[str, bytes],
        counts: Counts, donors: Callable[[], Sequence[TensorCache]] = tuple,
    ) -> None:  # fmt: skip
        self.piece, self.kmax, self.device, self.cache = piece, kmax, device, cache
        self.h0, self.slice_digests, self.counts = w0_digest, slice_digests, counts
        self.base: dict[str, CachedFactors | None] = {}
        self.next_hi: dict[str, float] = {}  # per slice: an upper bound on σ_{K+1}(W_0)
        self._donors = donors
        self._donor_caches: list[TensorCache] | None = None  # loaded at the first miss

    def _count(self, label: str | None) -> None:
        """One SVD of this label, or (None) one cache hit."""
        if label is None:
            self.counts.cache_hits += 1
            return
        self.counts.svd_calls += 1
        self.counts.svd_methods[label] = self.counts.svd_methods.get(label, 0) + 1

    def _w0(self, key: str, *, copy: bool = False) -> torch.Tensor:
        return self.piece(key).to(self.device, torch.float32, copy=copy)

    def base_factors(self, key: str) -> CachedFactors | None:
        """W_0's top-K factors of one slice: from the cache, or computed once (None: a vector)."""
        if key in self.base:
            return self.base[key]
        w0 = self._w0(key)
        fac = None
        # ‖W_0‖_F² is summed exactly where float32 would overflow: finite iff every entry is.
        if w0.dim() == 2 and math.isfinite(M.frobenius_sq(w0)):
            shape = (w0.shape[0], w0.shape[1])
            content = content_key(b"w0;", self.h0, self.slice_digests[key])
            ck = BASE_PREFIX + key
            # One triplet beyond K: its bracket bounds σ_{K+1}(W_0) from above (`pin_moved`).
            k = min(self.kmax, min(shape))
            kw = min(k + 1, min(shape))
            if self.cache is not None:
                fac = self.cache.get(BASE_STEP, ck, kw, False, content, shape)
            if fac is None:
                fac = self._donated(ck, kw, content, shape)
            if fac is not None:
                self._count(None)
            else:
                top = certified_top_k(w0, kw)
                self._count("base_w0:" + svd_label(top))
                fac = _factors(top)
                if self.cache is not None:
                    self.cache.put(BASE_STEP, ck, fac, min(shape), content)
            self.next_hi[key] = float(fac.s[k]) * (1.0 + BASE_RTOL) if kw > k else 0.0
            fac = fac.truncated(k)
        self.base[key] = fac
        return fac

    def _donated(
        self, ck: str, kw: int, content: str, shape: tuple[int, int]
    ) -> CachedFactors | None:
        """W_0's factors from another run's cache (the same base bytes), kept in ours too."""
        if self._donor_caches is None:
            self._donor_caches = list(self._donors())
        for donor in self._donor_caches:
            fac = donor.get(BASE_STEP, ck, kw, False, content, shape)
            if fac is not None:
                if self.cache is not None:
                    self.cache.put(BASE_STEP, ck, fac, min(shape), content)
                return fac
        return None

    def columns(
        self, ranks: Sequence[int], key: str, kind: str, u: Update, total_sq: float,
        top: CachedFactors | None,
    ) -> dict[str, float]:  # fmt: skip
        """This row's columns; drift and rotation only for a cumulative update (W_t = W_0 + Δ).

        top: Δ's top-k factors (None: not computed), whose V bounds ‖Δ‖_2 so that W_t's
        columns may be pinned from W_0's factors (`pin_moved`, label "pinned").
        """
        base = self.base_factors(key)
        if base is None or not u.is_matrix:
            return step_columns(ranks, None, 0, None, None)
        cap = min(base.u.shape[0], base.v.shape[0])
        finite = math.isfinite(total_sq)
        delta = u.to_dense() if finite else None
        energies = None
        if delta is not None:
            dev = delta.device
            energies = principal_energies(base.u.to(dev), base.v.to(dev), delta, total_sq)
        moved: CachedFactors | Pinned | None = None
        if delta is not None and kind == "cumulative":
            wt = self._w0(key, copy=True).to(delta.device)  # never W_0 itself (float32 W_0)
            wt += delta  # (rows, cols) float32: W_t = W_0 + Δ_t
            if top is not None:
                e = spectral_norm_bound(delta, top.v, total_sq)
                moved = pin_moved(wt, base.u, base.s, base.v, self.next_hi[key], e, ranks)
            if moved is not None:
                self._count("base_wt:pinned")
            else:
                kb = base.u.shape[1]
                flat = float(base.s[kb]) >= FLAT_TOP * float(base.s[0])
                init = None if flat else base.v.to(wt.device)
                ref = base.s[:kb]
                found = certified_top_k(wt, base.u.shape[1], init=init, ref=ref)
                self._count("base_wt:" + svd_label(found))
                moved = _factors(found)
            del wt
        return step_columns(ranks, base, cap, energies, moved)
