"""block_krylov: certified lower bounds on a planted spectrum, its pass budget, its stop point."""

from __future__ import annotations

import threading

import pytest
import torch
from planted import planted_spectrum

from opdlens._workers import stop_when
from opdlens.analysis import krylov
from opdlens.analysis.krylov import MIN_PASSES, block_krylov
from opdlens.analysis.metrics import frobenius_sq
from opdlens.errors import Stopped


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


def _svdvals(delta: torch.Tensor) -> torch.Tensor:
    """float64 singular values via the tall orientation (wide SVDs are slow on CPU)."""
    d = delta.double()
    return torch.linalg.svdvals(d if d.shape[0] >= d.shape[1] else d.T)


def _plateau(m: int, n: int, seed: int) -> torch.Tensor:
    """40 equal values (wider than a block of 24) over a 10 % bulk: k = 16 inside a tie."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(m, 40, generator=g))[0]
    v = torch.linalg.qr(torch.randn(n, 40, generator=g))[0]
    return u @ v.T + 0.3 * torch.randn(m, n, generator=g) / (m**0.5 + n**0.5)


def _slow_decay(m: int, n: int, seed: int) -> torch.Tensor:
    """σ_i = i^-1/2 over every index: no gap anywhere, most energy beyond k."""
    g = torch.Generator().manual_seed(seed)
    r = min(m, n)
    u = torch.linalg.qr(torch.randn(m, r, generator=g))[0]
    v = torch.linalg.qr(torch.randn(n, r, generator=g))[0]
    return (u * torch.arange(1, r + 1).pow(-0.5)) @ v.T


@pytest.mark.parametrize(
    "make",
    [
        lambda: planted_spectrum(600, 400, "rank4+bulk", 0.1, seed=4),
        lambda: planted_spectrum(400, 600, "powerlaw+bulk", 0.2, seed=5),
        lambda: planted_spectrum(500, 500, "rank4+bulk", 0.01, seed=6),
        lambda: _plateau(400, 600, seed=7),
        lambda: _slow_decay(600, 400, seed=8),
    ],
    ids=["rank4-10%", "powerlaw-20%", "rank4-1%", "plateau", "slow-decay"],
)
def test_upper_bounds_hold_against_an_exact_svd_at_every_pass(make, monkeypatch):
    # hi_i = min_{l≤i}(σ̃_l + ρ_l/√2) must stay above the exact σ_i at every pass, not only at
    # the certified one: the energy certificate and the ill-defined-subspace test rest on it.
    delta = make()
    exact = _svdvals(delta)
    seen = []
    upper = krylov._upper

    def record(ritz, rho):
        hi = upper(ritz, rho)
        seen.append(torch.cummin(hi, 0).values[:17])  # the k + 1 the certificate uses
        return hi

    monkeypatch.setattr(krylov, "_upper", record)
    _run(delta, budget=12)
    assert len(seen) >= 2
    for hi in seen:
        assert bool((hi >= exact[: hi.shape[0]] * (1 - 1e-6)).all()), hi - exact[: hi.shape[0]]


def test_the_jordan_wielandt_radius_saves_passes_over_a_noise_bulk():
    # A k_proj-like 512×1024 update with a 10 % bulk took 5 passes with the radius ρ (the
    # bound σ̃ + ρ); with ρ/√2 it takes 4, and the energies still match float64 to 1e-3.
    delta = planted_spectrum(512, 1024, "rank4+bulk", 0.1, seed=1)
    found, passes = _run(delta)
    assert found is not None and passes <= 4
    exact = _svdvals(delta)
    total = float((exact**2).sum())
    for k in (1, 4, 16):
        assert abs(float((found[1][:k] ** 2).sum() - (exact[:k] ** 2).sum())) / total <= 1e-3
