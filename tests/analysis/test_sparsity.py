"""changed_mask / count_changed against numpy counts on the stored bits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from opdlens.analysis import sparsity
from opdlens.analysis.sparsity import ChangedCount, changed_mask, count_changed, jaccard_chance


def _bf16_values(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns as the float32 values they stand for (numpy has no bf16)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _update(dtype: torch.dtype, n: int = 5000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(n, generator=g).to(dtype)
    # Small float32 steps: many round back to the base value in bf16 / f16.
    step = torch.randn(n, generator=g) * 1e-3 * (torch.rand(n, generator=g) < 0.5)
    w1 = (w0.float() + step).to(dtype)
    w0[:4] = torch.tensor([0.0, -0.0, 1.0, 2.0]).to(dtype)
    w1[:4] = torch.tensor([-0.0, 0.0, 1.0, 2.5]).to(dtype)
    return w0, w1


def _numpy_changed(w0: torch.Tensor, w1: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Values as float64 by numpy alone, from the raw bits for bf16."""
    if w0.dtype == torch.bfloat16:
        a = _bf16_values(w0.view(torch.int16).numpy().view(np.uint16)).astype(np.float64)
        b = _bf16_values(w1.view(torch.int16).numpy().view(np.uint16)).astype(np.float64)
    else:
        a, b = w0.numpy().astype(np.float64), w1.numpy().astype(np.float64)
    return a, b


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_counts_match_numpy_and_round_back_values_are_unchanged(dtype: torch.dtype) -> None:
    w0, w1 = _update(dtype)
    a, b = _numpy_changed(w0, w1)
    expect_changed = int(np.count_nonzero(a != b))  # +0 == -0 in numpy too
    expect_tol = int(np.count_nonzero(np.abs(b - a) > 1e-4))
    got = count_changed(w0.view(50, 100), w1.view(50, 100), 1e-4)
    assert got == ChangedCount(expect_changed, expect_tol, 5000)
    # Some steps rounded back to the base value, some did not: the test can tell the two apart.
    assert 0 < expect_changed < 2500
    assert not changed_mask(w0, w1)[:2].any() and changed_mask(w0, w1)[3]


def test_chunks_and_nan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sparsity, "_CHUNK", 7)
    w0, w1 = _update(torch.float32, n=100, seed=1)
    w1[10] = float("nan")
    a, b = _numpy_changed(w0, w1)
    mask = changed_mask(w0, w1, 0.0)
    assert mask.tolist() == ((np.abs(b - a) > 0) | np.isnan(b)).tolist()
    assert count_changed(w0, w1, 0.0).changed == int(np.count_nonzero(a != b))


def test_float8_compares_exactly() -> None:
    w0 = torch.tensor([0.5, 1.0, -0.0, 2.0]).to(torch.float8_e4m3fn)
    w1 = torch.tensor([0.5, 1.5, 0.0, 2.01]).to(torch.float8_e4m3fn)  # 2.01 rounds back to 2
    assert changed_mask(w0, w1).tolist() == [False, True, False, False]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        changed_mask(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="tol"):
        changed_mask(torch.zeros(2), torch.zeros(2), -1.0)


def test_jaccard_chance_matches_simulated_independent_masks() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random(400_000) < 0.2, rng.random(400_000) < 0.3
    simulated = np.count_nonzero(a & b) / np.count_nonzero(a | b)
    assert jaccard_chance(0.2, 0.3) == pytest.approx(simulated, rel=0.02)
    assert np.isnan(jaccard_chance(0.0, 0.0))


def test_tolerance_is_exact_where_the_float32_difference_rounds() -> None:
    # |Δ| just above tol, but fl32(Δ) rounds down to float32(tol) < tol: decided in float64.
    t32 = np.float32(1e-5)  # 9.99999974738e-06, below 1e-5
    base = torch.tensor([-3.5e-13, 0.0, -3.5e-13], dtype=torch.float32)  # τ − t32 ≈ 2.5e-13
    cur = torch.tensor([float(t32), float(t32), float(np.nextafter(t32, np.float32(1)))])
    exact = np.abs(cur.numpy().astype(np.float64) - base.numpy().astype(np.float64)) > 1e-5
    assert exact.tolist() == [True, False, True]
    assert float(cur[0] - base[0]) == float(t32)  # the float32 Δ alone would say "not above"
    assert changed_mask(base, cur, 1e-5).tolist() == exact.tolist()
    assert count_changed(base.bfloat16().float(), cur, 1e-5).changed_tol == int(
        np.count_nonzero(
            np.abs(cur.numpy().astype(np.float64) - base.bfloat16().float().numpy()) > 1e-5
        )
    )
