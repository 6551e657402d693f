"""The demo's lens numbers recomputed from its checkpoint files with numpy alone: bf16-rounded
changed masks (round-to-nearest-even on the float32 bits) and float64 SVDs of W_0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def weights(run: Path, step: int) -> dict[str, np.ndarray]:
    """One demo checkpoint's tensors (float32, as stored)."""
    return load_file(str(run / f"checkpoint-{step}" / "model.safetensors"))


def final_step(run: Path) -> int:
    return max(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*"))


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns by round-to-nearest-even; −0 folded onto +0 (no NaN)."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32)
    return np.where((bits & 0x7FFF) == 0, 0, bits)


def changed_masks(run: Path) -> dict[str, np.ndarray]:
    """Per tensor, the elements whose bf16 rounding differs between step 0 and the last step."""
    w0, wt = weights(run, 0), weights(run, final_step(run))
    return {k: bf16_bits(w0[k]) != bf16_bits(wt[k]) for k in w0}


def changed_frac(run: Path) -> float:
    """Share of all elements changed at the last step, in bf16."""
    masks = changed_masks(run)
    return sum(int(m.sum()) for m in masks.values()) / sum(m.size for m in masks.values())


def overlap_ratio(a: Path, b: Path) -> float:
    """Jaccard of two runs' bf16 changed masks over all elements, over its chance value."""
    ma, mb = changed_masks(a), changed_masks(b)
    both = sum(int((ma[k] & mb[k]).sum()) for k in ma)
    either = sum(int((ma[k] | mb[k]).sum()) for k in ma)
    n = sum(m.size for m in ma.values())
    pa, pb = sum(int(m.sum()) for m in ma.values()) / n, sum(int(m.sum()) for m in mb.values()) / n
    return (both / either) / (pa * pb / (pa + pb - pa * pb))


def principal_energy(run: Path, k: int) -> tuple[float, float]:
    """(Σ‖U_{0,k}ᵀΔ‖² / Σ‖Δ‖², Σ‖Δ‖²·k/rows / Σ‖Δ‖²) over the matrices with more than k rows
    and columns, at the last step; U_0 from a float64 SVD of W_0."""
    w0, wt = weights(run, 0), weights(run, final_step(run))
    num = den = rnd = 0.0
    for name, a in w0.items():
        if a.ndim != 2 or min(a.shape) < k:
            continue
        base = a.astype(np.float64)
        d = wt[name].astype(np.float64) - base
        u = np.linalg.svd(base, full_matrices=False)[0][:, :k]
        sq = float((d**2).sum())
        num += float(((u.T @ d) ** 2).sum())
        den += sq
        rnd += sq * k / a.shape[0]
    return num / den, rnd / den
