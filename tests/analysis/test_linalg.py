"""top_k_svd, factored_top_k_svd and singular_values against an exact float64 SVD."""

from __future__ import annotations

import math

import pytest
import torch

from opdlens.analysis import metrics as M
from opdlens.analysis.linalg import TopK, factored_top_k_svd, singular_values, top_k_svd

ENERGY_TOL, ALIGN_TOL = 1e-3, 1e-2  # design.md's contract


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _orth(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=g, dtype=torch.float64))[0]


def spectrum_update(m: int, n: int, sigmas: list[float], noise: float, seed: int) -> torch.Tensor:
    """U diag(sigmas) Vᵀ plus Gaussian noise of spectral norm about `noise`. Shape: (m, n)."""
    g = _gen(seed)
    r = len(sigmas)
    signal = _orth(m, r, g) * torch.tensor(sigmas, dtype=torch.float64) @ _orth(n, r, g).T
    scale = noise / (math.sqrt(m) + math.sqrt(n))
    return (signal + scale * torch.randn(m, n, generator=g, dtype=torch.float64)).float()


def planted(m: int, n: int, seed: int = 0) -> torch.Tensor:
    return spectrum_update(m, n, [10.0, 6.0, 4.0, 3.0, 2.0, 1.5, 1.2, 1.0], 0.01, seed)


def flat(m: int, n: int, seed: int = 0) -> torch.Tensor:
    return spectrum_update(m, n, [0.0], 5.0, seed)


def decaying(m: int, n: int, seed: int = 0) -> torch.Tensor:
    lo = min(m, n)
    return spectrum_update(m, n, [1.0 / (i + 1) for i in range(lo)], 0.0, seed)


SPECTRA = {"planted": planted, "flat": flat, "decaying": decaying}


def exact_svd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 (U, σ, V) via LAPACK on the tall orientation (wide SVDs are slow on CPU)."""
    x = x.double()
    if x.shape[0] >= x.shape[1]:
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        return u, s, vh.T
    v, s, uh = torch.linalg.svd(x.T, full_matrices=False)
    return uh.T, s, v


def assert_contract(
    delta: torch.Tensor,
    top: TopK,
    k: int,
    other: torch.Tensor | None = None,
    refs: tuple | None = None,
) -> None:
    """Energies and alignments from `top` match float64 SVD of delta (and `other`) for every K ≤ k."""
    u, s, v = refs[0] if refs else exact_svd(delta)
    total = M.frobenius_sq(delta)
    ou = ov = None
    if other is not None:
        ou, _, ov = refs[1] if refs else exact_svd(other)
    assert top.U.shape == (delta.shape[0], k) and top.V.shape == (delta.shape[1], k)
    assert top.S.shape == (k + 1,)
    eye = torch.eye(k, dtype=torch.float64)
    assert torch.allclose(top.U.double().T @ top.U.double(), eye, atol=1e-5)
    assert torch.allclose(top.V.double().T @ top.V.double(), eye, atol=1e-5)
    for K in range(1, k + 1):
        energy = M.energy_k(top.S, total, K)
        assert energy <= 1.0
        assert abs(energy - M.energy_k(s, total, K)) <= ENERGY_TOL, K
        if s[K - 1] <= 1e-4 * s[0] or M.gap_k(s, K) < 1e-2:
            # Beyond the numerical rank or inside a near-tie: no well-defined subspace to
            # match (design.md; gap_k flags it), so only the energy is held to the contract.
            assert M.gap_k(top.S, K) < 2e-2, K
            continue
        assert 1 - M.subspace_alignment(top.U, u, K) <= ALIGN_TOL, K
        assert 1 - M.subspace_alignment(top.V, v, K) <= ALIGN_TOL, K
        if ou is not None:
            ref = M.subspace_alignment(u, ou, K)
            assert abs(M.subspace_alignment(top.U, ou, K) - ref) <= ALIGN_TOL, K
            assert (
                abs(M.subspace_alignment(top.V, ov, K) - M.subspace_alignment(v, ov, K))
                <= ALIGN_TOL
            )


@pytest.mark.parametrize("shape", [(256, 768), (768, 256)])
@pytest.mark.parametrize("spectrum", sorted(SPECTRA))
@pytest.mark.parametrize("method", ["auto", "randomized", "exact"])
def test_contract_against_float64_svd(shape, spectrum, method):
    delta = SPECTRA[spectrum](*shape)
    other = SPECTRA[spectrum](*shape, seed=1) + 0.5 * delta
    refs = exact_svd(delta), exact_svd(other)
    for k in (4, 16):
        top = top_k_svd(delta, k, method=method)
        assert_contract(delta, top, k, other, refs)
        assert top.method in ("exact", method if method != "auto" else "randomized")


def test_flat_spectrum_falls_back_to_exact_and_says_so():
    top = top_k_svd(flat(256, 768), 16, method="randomized")
    assert top.method == "exact" and top.iterations > 0


def test_planted_spectrum_is_certified_without_exact():
    delta = planted(1024, 384)
    top = top_k_svd(delta, 6, method="randomized")
    assert top.method == "randomized" and 2 <= top.iterations <= 20
    assert_contract(delta, top, 6)


def test_rank_above_update_rank_gives_small_gap_and_full_energy():
    g = _gen(3)
    b, a = torch.randn(256, 2, generator=g), torch.randn(2, 768, generator=g)
    delta = b @ a
    for method in ("auto", "randomized", "exact"):
        top = top_k_svd(delta, 4, method=method)
        assert_contract(delta, top, 4)
        total = M.frobenius_sq(delta)
        assert M.energy_k(top.S, total, 2) == pytest.approx(1.0, abs=1e-6)
        assert M.energy_k(top.S, total, 4) <= 1.0
        assert M.gap_k(top.S, 3) < 1e-2 and M.gap_k(top.S, 4) < 1e-2
        assert M.gap_k(top.S, 2) > 0.01


def test_warm_start_needs_fewer_passes_and_meets_contract():
    g = _gen(7)
    delta = planted(768, 256)
    related = 1.3 * delta + 0.003 * torch.randn(768, 256, generator=g)
    cold = top_k_svd(related, 6, method="randomized")
    warm = top_k_svd(related, 6, init=top_k_svd(delta, 6, method="randomized").V, method="subspace")
    assert warm.method == "subspace" and cold.method == "randomized"
    assert warm.iterations <= cold.iterations
    assert_contract(related, warm, 6, other=delta)


def test_warm_start_with_unrelated_init_still_meets_contract():
    init = torch.randn(256, 3, generator=_gen(9))
    delta = decaying(768, 256)
    assert_contract(delta, top_k_svd(delta, 8, init=init), 8)


def test_deterministic_given_generator():
    delta = planted(256, 768)
    a, b = top_k_svd(delta, 6, method="randomized"), top_k_svd(delta, 6, method="randomized")
    assert torch.equal(a.U, b.U) and torch.equal(a.S, b.S) and a.iterations == b.iterations
    c = top_k_svd(delta, 6, method="randomized", generator=_gen(5))
    d = top_k_svd(delta, 6, method="randomized", generator=_gen(5))
    assert torch.equal(c.V, d.V)


def test_zero_update_gives_zeros_and_nan_ratios():
    top = top_k_svd(torch.zeros(64, 96), 4)
    assert torch.equal(top.S, torch.zeros(5, dtype=torch.float64))
    assert torch.allclose(top.U.T @ top.U, torch.eye(4))
    assert math.isnan(M.energy_k(top.S, 0.0, 4)) and math.isnan(M.gap_k(top.S, 2))


def test_k_equal_min_dimension_pads_sigma_with_zero():
    delta = planted(12, 40)
    top = top_k_svd(delta, 12)
    assert top.S[12] == 0.0
    assert torch.allclose(top.S[:12], torch.linalg.svdvals(delta.double()), rtol=1e-6)


@pytest.mark.parametrize("shape", [(256, 768), (768, 256)])
@pytest.mark.parametrize("r", [4, 16])
def test_factored_matches_dense_svd(shape, r):
    g = _gen(r)
    b = torch.randn(shape[0], r, generator=g) * torch.linspace(2, 0.1, r)
    a = torch.randn(r, shape[1], generator=g)
    top = factored_top_k_svd(b, a, 8)
    assert top.method == "factored" and top.U.dtype == torch.float32
    s = torch.linalg.svdvals(b.double() @ a.double())
    want = torch.zeros(9, dtype=torch.float64)
    want[: min(9, r)] = s[: min(9, r)]
    assert torch.allclose(top.S, want, rtol=1e-9, atol=1e-9 * float(s[0]))
    assert_contract(b @ a, top, 8)


def test_factored_zero_lora_b():
    top = factored_top_k_svd(torch.zeros(64, 4), torch.randn(4, 32, generator=_gen(0)), 6)
    assert torch.equal(top.S, torch.zeros(7, dtype=torch.float64))
    assert torch.allclose(top.U.T @ top.U, torch.eye(6), atol=1e-6)


@pytest.mark.parametrize("shape", [(96, 200), (200, 96)])
def test_singular_values_full_spectrum(shape):
    delta = decaying(*shape)
    ref = torch.linalg.svdvals(delta.double())
    got = singular_values(delta, dtype=torch.float64)
    assert got.dtype == torch.float64 and got.shape == (96,)
    assert torch.allclose(got, ref, atol=1e-7 * float(ref[0]))
    assert singular_values(delta).dtype == torch.float32
    assert torch.allclose(singular_values(delta.double(), dtype=torch.float64), ref, rtol=1e-10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "'k' parameter of top_k_svd"),
        ({"k": 33}, r"1\.\.32"),
        ({"k": 2, "method": "lanczos"}, "'method' parameter"),
        ({"k": 2, "method": "subspace"}, "needs a warm start"),
        ({"k": 2, "init": torch.zeros(32, 2)}, "n = 64 rows"),
    ],
)
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        top_k_svd(torch.ones(32, 64), **kwargs)


def test_input_errors():
    with pytest.raises(ValueError, match="2-D"):
        top_k_svd(torch.ones(2, 3, 4), 1)
    with pytest.raises(ValueError, match=r"float32 or float64.*\.float\(\)"):
        top_k_svd(torch.ones(8, 8, dtype=torch.bfloat16), 1)
    with pytest.raises(ValueError, match="NaN or Inf"):
        top_k_svd(torch.full((8, 8), math.nan), 1)
    with pytest.raises(ValueError, match="same r"):
        factored_top_k_svd(torch.ones(8, 2), torch.ones(3, 8), 1)


@pytest.mark.slow
def test_large_warm_start_sequence():
    g = _gen(11)
    base = spectrum_update(1024, 3072, [1.0 / (i + 1) ** 1.5 for i in range(64)], 1e-3, 2)
    prev = top_k_svd(base, 16)
    assert_contract(base, prev, 16)
    step = 1.05 * base + 1e-4 * torch.randn(1024, 3072, generator=g)
    warm = top_k_svd(step, 16, init=prev.V)
    assert warm.method == "subspace" and warm.iterations <= 6
    assert_contract(step, warm, 16, other=base)
