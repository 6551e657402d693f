"""Changed-element counts of one tensor's slices during a sweep: against W_0 and the previous step."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .sparsity import ChangedCount, count_changed

# Stored dtypes whose float32 reading is the stored value itself (float64 is rounded by it).
EXACT_IN_FLOAT32 = frozenset({"BF16", "F16", "F32", "F8_E5M2", "F8_E4M3"})
# Kept copies of earlier steps narrow back to these exactly (half the memory of float32).
_NARROW = {"BF16": torch.bfloat16, "F16": torch.float16}
COLUMNS = ("changed_count", "changed_tol_count", "changed_frac", "changed_frac_tol")

Pieces = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def lora_note(tensors: int) -> str:
    """The run-level note for tensors whose update is stored only as LoRA factors."""
    return (
        f"{tensors} tensor(s) are updated through LoRA factors: the dense weights are not "
        "stored, so their changed_frac and changed_frac_tol (and counts) are empty."
    )


def columns(count: ChangedCount | None) -> dict[str, object]:
    """A row's sparsity columns from its counts; empty (None / NaN) without counts."""
    if count is None:
        return {
            "changed_count": None, "changed_tol_count": None,
            "changed_frac": math.nan, "changed_frac_tol": math.nan,
        }  # fmt: skip
    n = count.numel
    return {
        "changed_count": count.changed,
        "changed_tol_count": count.changed_tol,
        "changed_frac": count.changed / n if n else math.nan,
        "changed_frac_tol": count.changed_tol / n if n else math.nan,
    }


class ChangeTracker:
    """Counts per slice of W_t ≠ W_0 and of W_t ≠ W_prev, compared on the stored values.

    The sweep hands each step's weights to `observe` exactly as stored (the float32 reading
    of a bf16/f16/f32/float8 tensor, before W_0 is subtracted from it in place), in any step
    order. With `consecutive`, the copies a later comparison needs are kept in their stored
    dtype: the final step's (read first) and the previous step's. With `view` (e.g.
    torch.bfloat16), the stored-value counts compare both sides rounded to it.
    """

    def __init__(
        self, w0: torch.Tensor, pieces: Pieces, tol: float, consecutive: bool, final: int,
        view: torch.dtype | None = None,
    ) -> None:  # fmt: skip
        self.w0, self.pieces, self.tol, self.view = w0, pieces, tol, view
        self.consecutive, self.final = consecutive, final
        self.cumulative: dict[int, dict[str, ChangedCount]] = {}
        self._kept: dict[int, torch.Tensor] = {}

    def observe(self, step: int, wt: torch.Tensor, stored: str) -> None:
        """Count step `step`'s changes against W_0, and keep a copy if a later step needs it.

        Shape: wt as W_0 (oriented like it); `stored` is W_t's safetensors dtype name.
        """
        self.cumulative[step] = self._count(self.w0, wt)
        if self.consecutive:
            narrow = _NARROW.get(stored)
            self._kept[step] = wt.to(narrow) if narrow is not None else wt.clone()

    def step_counts(self, step: int, prev: int | None) -> dict[str, ChangedCount] | None:
        """Counts of W_step against W_prev (W_0 when prev is None), or None if not observed.

        Called in step order; copies no later step needs are freed.
        """
        if prev is None:
            out = self.cumulative.get(step)
        elif step in self._kept and prev in self._kept:
            out = self._count(self._kept[prev], self._kept[step])
        else:
            out = None
        for s in [s for s in self._kept if s < step and s != self.final]:
            del self._kept[s]
        if step >= self.final:
            self._kept = {s: t for s, t in self._kept.items() if s >= step}
        return out

    def _count(self, a: torch.Tensor, b: torch.Tensor) -> dict[str, ChangedCount]:
        pa, pb = self.pieces(a), self.pieces(b)
        return {k: count_changed(pa[k], pb[k], self.tol, view=self.view) for k in pa}


def exact_reading(stored: str) -> bool:
    """True when the float32 reading of a tensor stored as `stored` is its stored value."""
    return stored in EXACT_IN_FLOAT32
