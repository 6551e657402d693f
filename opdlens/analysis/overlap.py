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
    """Δ = W_step − W_0 in float32, the changed mask (as `view` would store both, if given),
    and the digest analyze's cache keys Δ by; W_step is read once.

    The mask is None for a LoRA step: its dense update is not stored, so no element is
    "unchanged as stored". Shape: w0 as stored; Δ and mask in `as_matrix` orientation.
    """
    f = side.run.factored_delta(name, side.step)
    if f is not None:
        return (f[0].float() @ f[1].float()), None, digest(f[0], f[1])  # already (out, in)
    ck = side.run.checkpoint(side.step)
    if exact_reading(ck.spec(name).stored):
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
        pa, pb = piece(ma, sl, info), piece(mb, sl, info)
        na, nb = int(torch.count_nonzero(pa)), int(torch.count_nonzero(pb))
        both = int(torch.count_nonzero(torch.logical_and(pa, pb)))
        row.update(changed_a=na, changed_b=nb, changed_both=both, changed_either=na + nb - both)
    sq_a, sq_b = frobenius_sq(da), frobenius_sq(db)
    row.update(dot=inner(da, db), sq_a=sq_a, sq_b=sq_b)
    cols, notes, svds = subspace_columns(da, db, sq_a, sq_b, ranks, device, cached, keep)
    row.update(cols)
    return row, notes, svds
