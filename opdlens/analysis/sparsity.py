"""Which elements an update changed: the counts behind changed_frac and the masks compare intersects."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import OptionError
from .options import SPARSITY_DTYPE_NAMES

# Elements compared at a time: bounds the float64 temporaries of the tolerance test.
_CHUNK = 1 << 22
_NO_NE = {torch.float8_e4m3fn, torch.float8_e5m2}  # torch has no `!=` for these; upcast exactly
# Dtypes whose values float32 holds exactly: their Δ in float32 is within 2^-24 relative of the
# exact Δ, so |Δ| > tol is decided in float32 outside a narrow band around tol (see _above).
_IN_FLOAT32 = {torch.float32, torch.bfloat16, torch.float16, *_NO_NE}
_BAND = 2.0**-22  # relative half-width of the band re-checked in float64 (> 2 · 2^-24)


# changed_frac's optional view: a dtype the stored values are rounded to before they are
# compared, and the stored dtypes (safetensors names) it is no wider than.
SPARSITY_DTYPES: dict[str, tuple[torch.dtype, frozenset[str]]] = {
    "bfloat16": (torch.bfloat16, frozenset({"BF16", "F32", "F64"})),
    "float16": (torch.float16, frozenset({"F16", "F32", "F64"})),
    "float32": (torch.float32, frozenset({"F32", "F64"})),
}
assert tuple(SPARSITY_DTYPES) == SPARSITY_DTYPE_NAMES  # options checks the names without torch


def sparsity_view(name: str | None) -> torch.dtype | None:
    """The torch dtype changed_frac rounds to, or None to compare the stored values."""
    return None if name is None else SPARSITY_DTYPES[name][0]


def check_view_of(name: str | None, stored: str, tensor: str, where: object) -> None:
    """Refuse a sparsity_dtype wider than a tensor's stored dtype (it would invent precision).

    Raises:
        OptionError: naming the tensor, the file and both dtypes.
    """
    if name is None or stored in SPARSITY_DTYPES[name][1]:
        return
    raise OptionError(
        f"--sparsity-dtype {name} is wider than '{tensor}' as stored in {where} ({stored}): "
        f"rounding to it cannot show how a {name} checkpoint would store the weights. Drop "
        "--sparsity-dtype, or pick one no wider than the stored dtype."
    )


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
    base: torch.Tensor,
    current: torch.Tensor,
    tol: float | None = None,
    *,
    view: torch.dtype | None = None,
) -> torch.Tensor:
    """A bool mask of the elements the update changed: stored values differ, or |Δ| > tol.

    With tol None the stored values are compared as stored (a bf16 weight that rounds back to
    its base value is unchanged; +0 equals −0; NaN counts as changed); with `view` (e.g.
    torch.bfloat16) both are first rounded to that dtype, as a checkpoint stored in it would
    hold them. With a tol, Δ is taken in float64, so the test is exact for every stored dtype
    (`view` is then ignored).

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
        if tol is None and view is not None:
            torch.ne(ci.to(view), bi.to(view), out=out[i : i + _CHUNK])
        elif tol is None:
            torch.ne(_comparable(ci), _comparable(bi), out=out[i : i + _CHUNK])
        elif bi.dtype in _IN_FLOAT32 and ci.dtype in _IN_FLOAT32:
            _above(bi, ci, tol, out[i : i + _CHUNK])
        else:
            _above64(bi, ci, tol, out[i : i + _CHUNK])
    return out.view(base.shape)


def _above64(b: torch.Tensor, c: torch.Tensor, tol: float, out: torch.Tensor) -> None:
    d = c.to(torch.float64) - b.to(torch.float64)
    torch.gt(d.abs_(), tol, out=out)
    out |= torch.isnan(d)  # NaN compares false with gt: an update to or from NaN is a change


def _above(b: torch.Tensor, c: torch.Tensor, tol: float, out: torch.Tensor) -> None:
    """|c − b| > tol exactly, for values float32 holds: decided on the float32 Δ, whose rounding
    error is at most 2^-24 of it (a subnormal Δ is exact), except inside [lo, hi] around tol,
    where the few elements are re-checked in float64.
    """
    a = (c.float() - b.float()).abs_()
    if tol == 0.0:
        hi = 0.0  # fl(x − y) = 0 exactly when x = y
    else:
        lo = float(np.nextafter(np.float32(tol * (1 - _BAND)), np.float32(0)))
        hi = float(np.nextafter(np.float32(tol * (1 + _BAND)), np.float32(np.inf)))
    torch.le(a, hi, out=out)
    out.logical_not_()  # not (a ≤ hi): above, or NaN (an update to or from NaN is a change)
    if tol != 0.0:
        near = ((a >= lo) & (a <= hi)).nonzero().squeeze(1)
        if near.numel():
            out[near] = (c[near].double() - b[near].double()).abs() > tol


def count_changed(
    base: torch.Tensor, current: torch.Tensor, tol: float, *, view: torch.dtype | None = None
) -> ChangedCount:
    """How many elements changed as stored (as `view` would store them, if given), how many by
    more than tol (on the stored values), out of how many.

    Shape: base and current the same, any shape.
    """
    if base.shape != current.shape:
        raise ValueError(f"shapes differ: {tuple(base.shape)} and {tuple(current.shape)}")
    b, c = base.reshape(-1), current.reshape(-1)
    total = ChangedCount(0, 0, 0)
    for i in range(0, b.numel(), _CHUNK):
        bi, ci = b[i : i + _CHUNK], c[i : i + _CHUNK]
        total += ChangedCount(
            int(torch.count_nonzero(changed_mask(bi, ci, view=view))),
            int(torch.count_nonzero(changed_mask(bi, ci, tol))),
            bi.numel(),
        )
    return total


def jaccard_chance(p_a: float, p_b: float) -> float:
    """The Jaccard index expected of two independent masks with densities p_a and p_b."""
    union = p_a + p_b - p_a * p_b
    return p_a * p_b / union if union > 0 else float("nan")
