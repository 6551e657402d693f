"""Overlap of two runs' updates of one tensor: changed masks, inner products, top-K subspaces."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..names import ModuleInfo, as_matrix
from .changes import exact_reading
from .metrics import frobenius_sq, inner, subspace_alignment
from .sparsity import changed_mask
from .sweep import Slice, piece
from .update import Update, digest, read_stored, read_weight, subtract_base

if TYPE_CHECKING:
    from ..run import Run
    from .cache import FactorCache

Factors = tuple[torch.Tensor, torch.Tensor]  # top-K U (rows, K) and V (cols, K), on the CPU
# One slice's top-K factors of Δ_A and Δ_B known before any SVD (an analyze's factor cache,
# another pair of a group): (rows, cols), K → (A's, B's), None where not known.
Cached = Callable[[tuple[int, int], int], tuple[Factors | None, Factors | None]]
# One update's factors computed so far, for the other pairs of a group: by (slice key, digest of
# the slice's rows, (rows, cols), K).
FactorMemo = dict[tuple[str, bytes, tuple[int, int], int], Factors]
# Told the factors an SVD computed for side 0 (A) or 1 (B) of a slice, with (rows, cols) and K.
Keep = Callable[[int, tuple[int, int], int, Factors], None]

# Summed over tensors for the aggregated scopes; every ratio is computed from these sums.
COUNT_COLUMNS = ["changed_a", "changed_b", "changed_both", "changed_either"]
SUM_COLUMNS = ["numel", *COUNT_COLUMNS, "dot", "sq_a", "sq_b"]


@dataclass(frozen=True)
class Side:
    """One run's update at one step, and the factor cache of an earlier `analyze` of it."""

    run: Run
    step: int
    cache: FactorCache | None = None


@dataclass
class TensorOverlap:
    """Rows of one tensor (one per expert / fused part) and the notes it raised."""

    name: str
    rows: list[dict[str, object]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    base_differs: bool = False  # the two bases' stored bytes of this tensor differ
    svd_calls: int = 0
    cache_hits: int = 0  # top-K factors taken from an analyze's factor cache
    lora: bool = False  # a LoRA step: no stored dense update, so no changed mask


def update_and_mask(
    side: Side, name: str, w0: torch.Tensor, h0: bytes, info: ModuleInfo, tol: float | None,
    view: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, bytes]:  # fmt: skip
    """Δ = W_step − W_0 in float32, the changed elements (as `view` would store both, if given)
    as a tensor whose nonzero elements they are, and the digest analyze's cache keys Δ by;
    W_step is read once.

    The changed tensor is Δ itself where Δ ≠ 0 exactly where the stored values differ (the
    usual case, checked block by block: no mask is held), else a bool mask. It is None for a
    LoRA step: its dense update is not stored, so no element is "unchanged as stored".
    Shape: w0 as stored; Δ and the changed tensor in `as_matrix` orientation.
    """
    f = side.run.factored_delta(name, side.step)
    if f is not None:
        return (f[0].float() @ f[1].float()), None, digest(f[0], f[1])  # already (out, in)
    ck = side.run.checkpoint(side.step)
    stored = ck.spec(name).stored
    if tol is None and view is None and exact_reading(stored) and _exact(w0):
        d, h = read_weight(ck, name)
        changed = _subtract_marking(d := d.contiguous(), w0)
        m = as_matrix(d, info)
        return m, m if changed is d else as_matrix(changed, info), h0 + h
    if exact_reading(stored):
        # The float32 reading holds the stored values: the mask and Δ both come from it.
        d, h = read_weight(ck, name)
        mask = changed_mask(w0, d, tol, view=view)
    else:  # float64, which float32 rounds: the mask compares the stored values
        w, h = read_stored(ck, name)
        mask = changed_mask(w0, w, tol, view=view)
        d = w.to(torch.float32)
        del w
    subtract_base(d, w0)  # by row blocks: W_0 is never upcast whole
    return as_matrix(d, info), as_matrix(mask, info), h0 + h


_CHUNK = 1 << 20  # elements per block of `_subtract_marking` and of the intersection counts


def _exact(w0: torch.Tensor) -> bool:
    """W_0 is a contiguous float tensor whose values float32 holds exactly."""
    return w0.is_contiguous() and w0.dtype in (torch.float32, torch.bfloat16, torch.float16)


def _subtract_marking(d: torch.Tensor, w0: torch.Tensor) -> torch.Tensor:
    """d −= W_0 in place by blocks; what marks the changed elements W ≠ W_0 by its nonzeros.

    That is d itself unless some W ≠ W_0 gives d == 0 or W == W_0 a nonzero d (equal
    infinities give NaN; a flushed subnormal gives 0): then a bool mask, the rows before the
    first such block taken from d. Shape: d float32 holding W, w0 the same shape.
    """
    flat_d, flat_w0 = d.view(-1), w0.view(-1)
    scratch = torch.empty(min(_CHUNK, flat_d.numel()), dtype=torch.float32)
    mask: torch.Tensor | None = None
    for i in range(0, flat_d.numel(), _CHUNK):
        di, bi = flat_d[i : i + _CHUNK], scratch[: flat_d[i : i + _CHUNK].numel()]
        bi.copy_(flat_w0[i : i + _CHUNK])  # exact: float32 holds W_0's values
        ne = torch.ne(di, bi)  # the stored values compared, as `changed_mask` compares them
        di.sub_(bi)
        if mask is None and not torch.equal(ne, di != 0):
            mask = torch.empty(flat_d.numel(), dtype=torch.bool)
            torch.ne(flat_d[:i], 0, out=mask[:i])
        if mask is not None:
            mask[i : i + _CHUNK] = ne
    return d if mask is None else mask.view(d.shape)


def count_both(pa: torch.Tensor, pb: torch.Tensor) -> int:
    """Elements nonzero in both, counted by row blocks (no full-size temporary).

    Shape: pa and pb the same, any shape.
    """
    if pa.dim() < 2:
        return int(torch.count_nonzero(torch.logical_and(pa != 0, pb != 0)))
    step = max(1, _CHUNK // max(1, pa[0].numel()))
    return sum(
        int(torch.count_nonzero(torch.logical_and(pa[i : i + step] != 0, pb[i : i + step] != 0)))
        for i in range(0, pa.shape[0], step)
    )


def subspace_columns(
    da: torch.Tensor, db: torch.Tensor, sq_a: float, sq_b: float, ranks: Sequence[int],
    device: str, cached: Cached | None = None, keep: Keep | None = None,
) -> tuple[dict[str, float], list[str], int]:  # fmt: skip
    """subspace_{left,right}_k{K}, their random baselines K/rows, K/cols, and SVDs computed.

    NaN where K exceeds min(rows, cols), for vectors, and where either update is zero or not
    finite (then with a note). `cached` gives factors known already (an earlier analyze's,
    another pair's), used instead of an SVD; `keep` is handed each side's computed factors.
    Shape: da and db (rows, cols) float32, or vectors.
    """
    out: dict[str, float] = {}
    for k in ranks:
        for side in ("left", "right"):
            out[f"subspace_{side}_k{k}"] = math.nan
            out[f"subspace_{side}_random_k{k}"] = math.nan
    if da.dim() != 2:
        return out, [], 0
    rows, cols = da.shape
    kk = min(max(ranks), rows, cols)
    for k in ranks:
        if k <= kk:
            out[f"subspace_left_random_k{k}"] = k / rows
            out[f"subspace_right_random_k{k}"] = k / cols
    if not (sq_a > 0 and sq_b > 0):
        return out, [], 0
    if not (math.isfinite(sq_a) and math.isfinite(sq_b)):
        return out, ["an update holds NaN or Inf: its subspaces are undefined (NaN)"], 0
    hits = cached((rows, cols), kk) if cached is not None else (None, None)
    bases: list[Factors] = []
    for which, (d, sq, hit) in enumerate(((da, sq_a, hits[0]), (db, sq_b, hits[1]))):
        if hit is None:
            top = Update(dense=d.to(device)).top_k(kk, total_sq=sq)
            hit = (top.U.cpu(), top.V.cpu())
            if keep is not None:
                keep(which, (rows, cols), kk, hit)
        bases.append(hit)
    (ua, va), (ub, vb) = bases
    for k in ranks:
        if k <= kk:
            out[f"subspace_left_k{k}"] = subspace_alignment(ua, ub, k)
            out[f"subspace_right_k{k}"] = subspace_alignment(va, vb, k)
    return out, [], sum(h is None for h in hits)


def slice_row(
    sl: Slice,
    info: ModuleInfo,
    deltas: tuple[torch.Tensor, torch.Tensor],
    masks: tuple[torch.Tensor | None, torch.Tensor | None],
    ranks: Sequence[int],
    device: str,
    cached: Cached | None = None,
    keep: Keep | None = None,
) -> tuple[dict[str, object], list[str], int]:
    """The counts, inner products and subspace overlaps of one slice; SVDs it computed."""
    da, db = (piece(d, sl, info) for d in deltas)
    row: dict[str, object] = {
        "expert": sl.expert, "part": sl.part, "kind": sl.kind,
        "rows": da.shape[0] if da.dim() == 2 else None,
        "cols": da.shape[1] if da.dim() == 2 else None, "numel": da.numel(),
    }  # fmt: skip
    ma, mb = masks
    if ma is None or mb is None:
        row.update(dict.fromkeys(COUNT_COLUMNS, None))
    else:
        # A mask that is Δ itself (see update_and_mask) is the piece already cut.
        pa = da if ma is deltas[0] else piece(ma, sl, info)
        pb = db if mb is deltas[1] else piece(mb, sl, info)
        na, nb = int(torch.count_nonzero(pa)), int(torch.count_nonzero(pb))
        both = count_both(pa, pb)
        row.update(changed_a=na, changed_b=nb, changed_both=both, changed_either=na + nb - both)
    sq_a, sq_b = frobenius_sq(da), frobenius_sq(db)
    row.update(dot=inner(da, db), sq_a=sq_a, sq_b=sq_b)
    cols, notes, svds = subspace_columns(da, db, sq_a, sq_b, ranks, device, cached, keep)
    row.update(cols)
    return row, notes, svds
