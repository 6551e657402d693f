"""Which elements an update changed: the counts behind changed_frac and the masks compare intersects."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Elements compared at a time: bounds the float64 temporaries of the tolerance test.
_CHUNK = 1 << 22
_NO_NE = {torch.float8_e4m3fn, torch.float8_e5m2}  # torch has no `!=` for these; upcast exactly


@dataclass(frozen=True)
class ChangedCount:
    """Elements changed in their stored dtype, elements with |Δ| > tol, and all elements."""

    changed: int
    changed_tol: int
    numel: int

    def __add__(self, other: ChangedCount) -> ChangedCount:
        return ChangedCount(
            self.changed + other.changed,
            self.changed_tol + other.changed_tol,
            self.numel + other.numel,
        )


def _comparable(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in _NO_NE else x


def changed_mask(
    base: torch.Tensor, current: torch.Tensor, tol: float | None = None
) -> torch.Tensor:
    """A bool mask of the elements the update changed: stored values differ, or |Δ| > tol.

    With tol None the stored values are compared as stored (a bf16 weight that rounds back to
    its base value is unchanged; +0 equals −0; NaN counts as changed). With a tol, Δ is taken in
    float64, so the test is exact for every stored dtype.

    Shape: base and current the same, any shape; the mask has that shape.
    """
    if base.shape != current.shape:
        raise ValueError(f"shapes differ: {tuple(base.shape)} and {tuple(current.shape)}")
    if tol is not None and not tol >= 0:
        raise ValueError(f"tol must be a non-negative number, got {tol}")
    b, c = base.reshape(-1), current.reshape(-1)
    out = torch.empty(b.numel(), dtype=torch.bool, device=b.device)
    for i in range(0, b.numel(), _CHUNK):
        bi, ci = b[i : i + _CHUNK], c[i : i + _CHUNK]
        if tol is None:
            torch.ne(_comparable(ci), _comparable(bi), out=out[i : i + _CHUNK])
        else:
            d = ci.to(torch.float64) - bi.to(torch.float64)
            torch.gt(d.abs_(), tol, out=out[i : i + _CHUNK])
            # NaN compares false with gt: an update to or from NaN is still a change
            out[i : i + _CHUNK] |= torch.isnan(d)
    return out.view(base.shape)


def count_changed(base: torch.Tensor, current: torch.Tensor, tol: float) -> ChangedCount:
    """How many elements changed as stored, how many by more than tol, out of how many.

    Shape: base and current the same, any shape.
    """
    if base.shape != current.shape:
        raise ValueError(f"shapes differ: {tuple(base.shape)} and {tuple(current.shape)}")
    b, c = base.reshape(-1), current.reshape(-1)
    total = ChangedCount(0, 0, 0)
    for i in range(0, b.numel(), _CHUNK):
        bi, ci = b[i : i + _CHUNK], c[i : i + _CHUNK]
        total += ChangedCount(
            int(changed_mask(bi, ci).sum()), int(changed_mask(bi, ci, tol).sum()), bi.numel()
        )
    return total


def jaccard_chance(p_a: float, p_b: float) -> float:
    """The Jaccard index expected of two independent masks with densities p_a and p_b."""
    union = p_a + p_b - p_a * p_b
    return p_a * p_b / union if union > 0 else float("nan")
