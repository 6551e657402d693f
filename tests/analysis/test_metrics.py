"""The metric functions against direct numpy/float64 computations of design.md's definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from opdlens.analysis import metrics as M


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_frobenius_sq_chunked_float32_and_exact_float64(monkeypatch):
    x = _rand(300, 70)
    want = float(np.sum(x.numpy().astype(np.float64) ** 2))
    # float32 chunks summed in float64: far inside the 1e-3 energy contract.
    assert M.frobenius_sq(x) == pytest.approx(want, rel=1e-6)
    assert M.frobenius_sq(x.double()) == pytest.approx(want, rel=1e-14)
    assert M.frobenius_sq(x.bfloat16()) == pytest.approx(
        float(np.sum(x.bfloat16().float().numpy().astype(np.float64) ** 2)), rel=1e-6
    )
    monkeypatch.setattr(M, "_CHUNK", 1000)  # several chunks, on a non-contiguous view
    assert M.frobenius_sq(x.T) == pytest.approx(want, rel=1e-6)
    assert M.frobenius_sq(torch.zeros(5)) == 0.0


def test_frobenius_sq_on_many_elements_stays_accurate():
    x = torch.randn(4096, 4096, generator=torch.Generator().manual_seed(1)) * 0.01 + 1e-3
    want = float((x.double() ** 2).sum())
    assert M.frobenius_sq(x) == pytest.approx(want, rel=1e-6)


def test_energy_k_matches_definition():
    x = _rand(40, 90).double()
    s = torch.linalg.svdvals(x)
    total = M.frobenius_sq(x)
    for k in (1, 3, 40):
        want = float((s[:k] ** 2).sum() / (x**2).sum())
        assert M.energy_k(s, total, k) == pytest.approx(want, rel=1e-12)
    assert M.energy_k(s, total, 40) == 1.0


def test_energy_k_never_above_one_and_nan_for_zero():
    s = torch.tensor([2.0, 0.0])
    assert M.energy_k(s, 4.0 * (1 - 1e-7), 1) == 1.0  # float rounding is clipped
    assert math.isnan(M.energy_k(torch.zeros(3), 0.0, 2))
    with pytest.raises(ValueError, match="same update"):
        M.energy_k(s, 3.0, 1)
    with pytest.raises(ValueError, match=r"'k' parameter of energy_k.*1\.\.2"):
        M.energy_k(s, 4.0, 3)


def test_stable_rank():
    x = _rand(30, 50).double()
    s = torch.linalg.svdvals(x)
    assert M.stable_rank(float(s[0]), M.frobenius_sq(x)) == pytest.approx(
        float((s**2).sum() / s[0] ** 2)
    )
    assert math.isnan(M.stable_rank(0.0, 0.0))


def test_effective_rank():
    assert M.effective_rank(torch.ones(7)) == pytest.approx(7.0)
    assert M.effective_rank(torch.tensor([3.0, 0.0, 0.0])) == pytest.approx(1.0)
    s = np.array([4.0, 2.0, 1.0, 0.5])
    p = s / s.sum()
    assert M.effective_rank(torch.tensor(s)) == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert math.isnan(M.effective_rank(torch.zeros(4)))
    with pytest.raises(ValueError, match="non-negative"):
        M.effective_rank(torch.tensor([1.0, -1.0]))


def test_subspace_alignment_identical_orthogonal_rotated():
    q = torch.linalg.qr(_rand(50, 8).double())[0]
    assert M.subspace_alignment(q, q, 8) == pytest.approx(1.0)
    rot = torch.linalg.qr(_rand(4, 4, seed=1).double())[0]
    assert M.subspace_alignment(q[:, :4] @ rot, q, 4) == pytest.approx(1.0)  # basis-independent
    assert M.subspace_alignment(q[:, :4], q[:, 4:], 4) == pytest.approx(0.0, abs=1e-12)
    half = torch.cat([q[:, :2], q[:, 4:6]], 1)
    assert M.subspace_alignment(half, q, 4) == pytest.approx(0.5)


def test_random_alignment_is_about_k_over_rows():
    rows, k = 256, 8
    vals = [
        M.subspace_alignment(
            torch.linalg.qr(_rand(rows, k, seed=2 * i))[0],
            torch.linalg.qr(_rand(rows, k, seed=2 * i + 1))[0],
            k,
        )
        for i in range(40)
    ]
    assert np.mean(vals) == pytest.approx(M.random_alignment_baseline(k, rows), rel=0.15)
    with pytest.raises(ValueError, match="1 ≤ k ≤ rows"):
        M.random_alignment_baseline(0, 10)


def test_subspace_alignment_errors():
    with pytest.raises(ValueError, match="same rows"):
        M.subspace_alignment(torch.eye(5, 2), torch.eye(6, 2), 2)
    with pytest.raises(ValueError, match=r"1\.\.2"):
        M.subspace_alignment(torch.eye(5, 2), torch.eye(5, 3), 3)


def test_gap_k():
    s = torch.tensor([4.0, 2.0, 1.0])
    assert M.gap_k(s, 1) == pytest.approx(0.5)
    assert M.gap_k(s, 2) == pytest.approx(0.25)
    assert M.gap_k(s, 3) == pytest.approx(0.25)  # σ beyond the spectrum is 0
    assert math.isnan(M.gap_k(torch.zeros(3), 1))


def test_cosine_and_inner():
    a, b = _rand(20, 30), _rand(20, 30, seed=1)
    an, bn = a.numpy().astype(np.float64).ravel(), b.numpy().astype(np.float64).ravel()
    want = an @ bn / (np.linalg.norm(an) * np.linalg.norm(bn))
    assert M.cosine(a, b) == pytest.approx(want, abs=1e-6)  # float32 chunks, float64 sums
    assert M.cosine(a, a) == pytest.approx(1.0)
    assert M.cosine(a, -2 * a) == pytest.approx(-1.0)
    assert math.isnan(M.cosine(a, torch.zeros_like(a)))
    with pytest.raises(ValueError, match="same shape"):
        M.inner(a, b.T)


def test_relative():
    assert M.relative(3.0, 2.0) == 1.5
    assert M.relative(1.0, 0.0) == math.inf
    assert M.relative(-1.0, 0.0) == -math.inf
    assert math.isnan(M.relative(0.0, 0.0))
    assert math.isnan(M.relative(math.nan, 1.0))


def _exact_dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """Σ a·b exactly rounded: float32 products are exact in float64, fsum adds them exactly."""
    return math.fsum((a.double().ravel() * b.double().ravel()).tolist())


def _magnitudes(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _rand(300, 700, seed=3), _rand(300, 700, seed=4)
    if kind == "1e30":
        return a * 1e30, b * 1e30
    if kind == "1e-30":
        return a * 1e-30, b * 1e-30
    if kind == "mixed":  # whole chunks at 1e30 and others at 1e-30, and rows in between
        scale = torch.where(torch.arange(300) % 3 == 0, 1e30, 1e-30).unsqueeze(1)
        scale[1::3] = 1.0
        return a * scale, b * scale.flip(0)
    return a, b  # random


@pytest.mark.parametrize("kind", ["1e30", "1e-30", "mixed", "random"])
def test_norms_and_dots_neither_overflow_nor_underflow(kind):
    a, b = _magnitudes(kind)
    assert M.frobenius_sq(a) == pytest.approx(_exact_dot(a, a), rel=1e-6)
    assert M.inner(a, b) == pytest.approx(
        _exact_dot(a, b), rel=1e-6, abs=1e-6 * math.sqrt(_exact_dot(a, a) * _exact_dot(b, b))
    )  # relative to ‖a‖‖b‖ where the sum cancels
    an = a.double().numpy() / np.abs(a.double().numpy()).max()  # scaled: no overflow
    assert math.sqrt(M.frobenius_sq(a)) == pytest.approx(
        np.linalg.norm(an) * float(a.abs().max()), rel=1e-6
    )
    assert M.cosine(a, 2 * a) == pytest.approx(1.0, rel=1e-9)
    assert M.cosine(a, -a) == pytest.approx(-1.0, rel=1e-9)


def test_float64_products_beyond_the_range_still_sum_correctly():
    a = torch.tensor([1e200, 1e200, 3.0], dtype=torch.float64)
    b = torch.tensor([1e200, -1e200, 2.0], dtype=torch.float64)
    # The products overflow (a plain float64 dot gives inf − inf = NaN); their sum does not, and
    # it is right to far below ‖a‖‖b‖ = 2e400.
    value = M.inner(a, b)
    assert math.isfinite(value) and abs(value) <= 6.0
    assert M.frobenius_sq(torch.tensor([1e-160, 0.0], dtype=torch.float64) * 1e150) > 0
    assert math.isinf(M.frobenius_sq(torch.tensor([1e200, 1e200], dtype=torch.float64)))
    nan = torch.tensor([float("nan"), 1.0])
    assert math.isnan(M.frobenius_sq(nan)) and math.isnan(M.inner(torch.zeros(2), nan))
    assert M.frobenius_sq(torch.zeros(100_000)) == 0.0


def test_energy_and_gap_at_or_beyond_min_rows_cols():
    x = _rand(4, 16).double()  # a router: (experts, hidden)
    s = torch.linalg.svdvals(x)
    total = M.frobenius_sq(x)
    for k in (4, 5, 10_000):
        assert M.energy_k(s, total, k, rank_cap=4) == 1.0  # exactly, design.md
    assert M.gap_k(s, 4, rank_cap=4) == pytest.approx(float(s[3] / s[0]), rel=1e-12)
    padded = torch.cat([s, torch.tensor([1e-9], dtype=torch.float64)])  # σ_5 is 0, whatever s says
    assert M.gap_k(padded, 4, rank_cap=4) == pytest.approx(float(s[3] / s[0]), rel=1e-12)
    assert M.gap_k(s, 5, rank_cap=4) == 0.0 and M.gap_k(s, 10_000, rank_cap=4) == 0.0
    assert M.energy_k(s, total, 2, rank_cap=4) == pytest.approx(
        float((s[:2] ** 2).sum()) / total, rel=1e-12
    )
    assert math.isnan(M.energy_k(torch.zeros(4), 0.0, 8, rank_cap=4))  # zero update
    assert math.isnan(M.gap_k(torch.zeros(4), 8, rank_cap=4))
