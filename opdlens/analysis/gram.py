"""Each tensor's Gram matrix of its updates over every saved step, for foresee (streamed by spans)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .sweep import TensorResult

if TYPE_CHECKING:
    from ..run import Run

# float64 elements of one Gram row block over every saved step: 32 MiB whatever the model.
GRAM_BUDGET = 1 << 22


def gram_tensor(
    run: Run, name: str, budget: int = GRAM_BUDGET, device: str = "cpu"
) -> TensorResult:
    """G[i, j] = ⟨Δ_i, Δ_j⟩ over [0, *run.steps] (Δ_0 = 0) of one tensor, in float64.

    Reads every step's copy of the tensor once, one flat span (a block of rows) of every step
    at a time, so memory is `budget` float64 values plus O(steps²), never steps × tensor (on
    `device` too, where the products run).
    """
    result = TensorResult()
    cks = [run.base, *(run.checkpoint(s) for s in run.steps)]
    n = len(cks)
    gram = np.zeros((n, n))
    spec = run.base.spec(name)
    numel = spec.numel
    span = max(1024, budget // n)
    ranged = all(ck.byte_range(name) is not None for ck in cks)
    if not ranged and numel > span:
        result.warnings.append(
            f"tensor '{name}' is stored without byte ranges (.bin, FSDP rank files or LoRA): "
            f"foresee read it {-(-numel // span)} times, once per row block, to keep memory "
            "at O(steps²)."
        )
    wide = spec.stored == "F64"  # float64 stays float64; every other dtype upcasts exactly
    for start in range(0, numel, span):
        stop = min(numel, start + span)
        block = np.empty((n, stop - start))  # (steps + 1, span), float64
        for i, ck in enumerate(cks):
            block[i] = ck.array(name, float32=not wide, span=(start, stop))
        gram[1:, 1:] += _span_gram(block, device)
    if not np.isfinite(gram).all():
        result.warnings.append(
            f"tensor '{name}' has NaN or Inf at some saved step; its foresight rows are NaN."
        )
    result.gram = gram
    return result


def _span_gram(block: np.ndarray, device: str) -> np.ndarray:
    """ΔΔᵀ of one span, Δ = block[1:] − block[0], in float64 on `device`.

    Shape: block (steps + 1, span); returns (steps, steps).
    """
    if device == "cpu":
        delta = block[1:]
        delta -= block[0]  # float64: exact for float32 inputs whose exponents differ by ≤ 29
        return delta @ delta.T
    b = torch.from_numpy(block).to(device)
    d = b[1:] - b[0]
    return (d @ d.T).cpu().numpy()
