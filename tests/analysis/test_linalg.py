"""top_k_svd, factored_top_k_svd and singular_values against an exact float64 SVD."""

from __future__ import annotations

import json
import math

import pytest
import torch
from planted import SPECTRA as BULK_SPECTRA
from planted import planted_spectrum, write_state_run

from opdlens import open_run
from opdlens.analysis import metrics as M
from opdlens.analysis.linalg import (
    TopK,
    factored_top_k_svd,
    singular_values,
    svd_label,
    top_k_svd,
)
from opdlens.analysis.write import write_analysis

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
    top = top_k_svd(flat(512, 1536), 16, method="randomized")
    assert top.method == "exact" and top.iterations > 0
    # A smaller flat spectrum: the Krylov space nears its whole side, so it is certified.
    delta = flat(256, 768)
    assert_contract(delta, top_k_svd(delta, 16, method="randomized"), 16)


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


def test_given_total_sq_changes_nothing_and_is_still_checked():
    delta = planted(256, 768)
    sq = M.frobenius_sq(delta)
    for method in ("randomized", "exact"):
        a = top_k_svd(delta, 6, method=method, generator=_gen(3))
        b = top_k_svd(delta, 6, method=method, generator=_gen(3), total_sq=sq)
        assert torch.equal(a.U, b.U) and torch.equal(a.S, b.S) and a.iterations == b.iterations
        assert_contract(delta, b, 6)
    assert torch.equal(top_k_svd(delta, 4, total_sq=0.0).S, torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN or Inf"):
        top_k_svd(delta, 4, total_sq=math.inf)


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


def _exact_energies(delta: torch.Tensor, ks: tuple[int, ...]) -> list[float]:
    d = delta.double()
    gram = d.T @ d if d.shape[0] >= d.shape[1] else d @ d.T
    ev = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0.0)
    total = float(d.pow(2).sum())
    return [float(ev[:k].sum()) / total for k in ks]


@pytest.mark.parametrize("kind", BULK_SPECTRA)
@pytest.mark.parametrize("shape", [(512, 1024), (1024, 512)])
def test_energy_over_a_noise_bulk_is_certified_without_exact(kind, shape):
    # K = 16 sits inside the noise bulk: per-vector residuals there never converge, yet the
    # energy of the top 16 is pinned down, so no matrix may fall back to the exact SVD.
    fell, passes = 0, []
    for share in (0.05, 0.1, 0.2):
        d0 = planted_spectrum(*shape, kind, share, seed=1)
        d1 = planted_spectrum(*shape, kind, share, seed=2, scale=1.1)  # the next step
        top0 = top_k_svd(d0, 16)
        top1 = top_k_svd(d1, 16, init=top0.V)
        for d, top in ((d0, top0), (d1, top1)):
            fell += svd_label(top) == "fallback_to_exact"
            passes.append(top.iterations)
            want = _exact_energies(d, (1, 4, 16))
            got = [M.energy_k(top.S, M.frobenius_sq(d), k) for k in (1, 4, 16)]
            assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= ENERGY_TOL
            s = torch.linalg.svdvals(d.double())
            assert bool((top.S[:16] <= s[:16] + 1e-5 * s[0]).all())  # lower bounds, per index
    assert fell == 0, passes
    assert top0.method == "randomized" and top1.method == "subspace"


def test_ill_defined_subspaces_do_not_hold_back_the_certificate():
    # A rank-4 signal over a bulk: K = 5..16 are near-ties (gap_k < 1e-2), so only K ≤ 4 need
    # converged vectors; K = 4 is well defined and its alignment still meets the contract.
    delta = planted_spectrum(768, 256, "rank4+bulk", 0.1, seed=3)
    top = top_k_svd(delta, 16, method="randomized")
    assert top.method == "randomized" and top.iterations <= 8
    u, s, v = exact_svd(delta)
    assert M.gap_k(s, 4) > 0.1 and M.gap_k(s, 16) < 1e-2
    assert 1 - M.subspace_alignment(top.U, u, 4) <= ALIGN_TOL
    assert 1 - M.subspace_alignment(top.V, v, 4) <= ALIGN_TOL
    assert (
        abs(M.energy_k(top.S, M.frobenius_sq(delta), 16) - M.energy_k(s, M.frobenius_sq(delta), 16))
        <= ENERGY_TOL
    )


def test_svd_label_tells_fallbacks_apart():
    assert svd_label(top_k_svd(planted(256, 768), 4, method="exact")) == "exact"
    assert svd_label(top_k_svd(planted(256, 768), 4, method="randomized")) == "randomized"
    assert svd_label(top_k_svd(flat(512, 1536), 16, method="randomized")) == "fallback_to_exact"


def test_provenance_counts_svd_calls_by_method(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = {
        "model.layers.0.mlp.down_proj.weight": 0.02 * torch.randn(384, 1152, generator=g),
        "model.layers.0.self_attn.q_proj.weight": 0.02 * torch.randn(16, 16, generator=g),
    }
    states = {0: base}
    for step in (1, 2, 4):
        states[step] = {
            "model.layers.0.mlp.down_proj.weight": base["model.layers.0.mlp.down_proj.weight"]
            + 1e-3 * planted_spectrum(384, 1152, "rank4+bulk", 0.05, seed=step, scale=step),
            "model.layers.0.self_attn.q_proj.weight": base["model.layers.0.self_attn.q_proj.weight"]
            + 1e-3 * step * torch.randn(16, 16, generator=g),
        }
    root = write_state_run(tmp_path / "run", states, {"model_type": "llama"})
    write_analysis(open_run(root), tmp_path / "out", ranks=(1, 4, 16), workers=1)
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    # The large matrix: cold at the final step, then warm (from the final's V, then step 1's).
    assert prov["svd_methods"] == {"randomized": 1, "subspace": 2, "exact": 3}
    assert sum(prov["svd_methods"].values()) == prov["svd_calls"]
