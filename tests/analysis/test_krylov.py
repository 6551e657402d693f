"""block_krylov: certified lower bounds on a planted spectrum, its pass budget, its stop point."""

from __future__ import annotations

import threading

import pytest
import torch
from planted import planted_spectrum

from opdlens._workers import Stopped, stop_when
from opdlens.analysis.krylov import MIN_PASSES, block_krylov
from opdlens.analysis.metrics import frobenius_sq


def _run(delta: torch.Tensor, budget: int = 30):
    gen = torch.Generator().manual_seed(0)
    return block_krylov(delta, 16, 24, None, gen, frobenius_sq(delta), budget)


def test_certified_values_are_lower_bounds_with_the_energy_of_an_exact_svd():
    delta = planted_spectrum(300, 500, "powerlaw+bulk", 0.1, seed=3)
    found, passes = _run(delta)
    assert found is not None and MIN_PASSES <= passes < 30
    u, s, v = found
    exact = torch.linalg.svdvals(delta.double())
    assert u.shape == (300, 16) and s.shape == (17,) and v.shape == (500, 16)
    assert bool((s <= exact[:17] * (1 + 1e-6)).all())  # S holds σ(ΔᵀU) ≤ σ
    total = float((exact**2).sum())
    for k in (1, 4, 16):
        assert abs(float((s[:k] ** 2).sum() - (exact[:k] ** 2).sum())) / total <= 1e-3
    # The factors are orthonormal and Δv_i = σ̃_i u_i up to float32 rounding.
    assert torch.allclose(u.T @ u, torch.eye(16), atol=1e-5)
    assert torch.allclose(v.T @ v, torch.eye(16), atol=1e-5)


def test_one_pass_never_certifies():
    delta = planted_spectrum(200, 300, "rank4+bulk", 0.01, seed=1)
    assert _run(delta, budget=1) == (None, 1)


def test_a_set_stop_event_ends_the_iteration_at_its_next_pass():
    delta = planted_spectrum(200, 300, "rank4+bulk", 0.01, seed=1)
    stop = threading.Event()
    stop.set()
    stop_when(stop)
    try:
        with pytest.raises(Stopped):
            _run(delta)
    finally:
        stop_when(None)
    assert _run(delta)[0] is not None  # unbound again: runs to its certificate
