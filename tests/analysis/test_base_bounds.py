"""base_bounds' certificates against numpy float64 SVDs: each bound holds, and pins only when
the update is small against W_0's spectrum."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from opdlens.analysis.base_bounds import (
    MOVED_RTOL,
    pin_moved,
    spectral_norm_bound,
    value_brackets,
)
from opdlens.analysis.linalg import TopK


def _spiked(seed: int, m: int = 60, n: int = 40) -> torch.Tensor:
    """A matrix with four well-separated leading values over a small bulk."""
    g = torch.Generator().manual_seed(seed)
    a = torch.linalg.qr(torch.randn(m, 4, generator=g, dtype=torch.float64))[0]
    b = torch.linalg.qr(torch.randn(n, 4, generator=g, dtype=torch.float64))[0]
    spikes = (a * torch.tensor([8.0, 6.0, 4.0, 3.0], dtype=torch.float64)) @ b.T
    return spikes + 0.05 * torch.randn(m, n, generator=g, dtype=torch.float64)


def _top(w: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    u, s, vt = np.linalg.svd(w.numpy(), full_matrices=False)
    return u[:, :k], s, vt[:k].T


@pytest.mark.parametrize("noise", [0.0, 1e-3, 1e-1])
def test_value_brackets_hold_the_true_values(noise: float) -> None:
    w = _spiked(0)
    u, s, v = _top(w, 3)
    g = torch.Generator().manual_seed(1)
    top = TopK(torch.from_numpy(u) + noise * torch.randn(u.shape, generator=g, dtype=torch.float64),
               torch.from_numpy(s[:4]), torch.from_numpy(v), "exact", 0)  # fmt: skip
    top = TopK(torch.linalg.qr(top.U)[0], top.S, top.V, "exact", 0)
    lo, hi = value_brackets(w, top)
    assert (lo.numpy() <= s[:3] * (1 + 1e-12)).all() and (s[:3] <= hi.numpy() * (1 + 1e-12)).all()
    if noise == 0.0:  # exact vectors: the brackets close on the values
        np.testing.assert_allclose(lo.numpy(), s[:3], rtol=1e-10)


def test_spectral_norm_bound_is_an_upper_bound_and_tight_with_the_top_vectors() -> None:
    d = _spiked(2) * 1e-3
    s = np.linalg.svd(d.numpy(), compute_uv=False)
    total = float((d**2).sum())
    _, _, v = _top(d, 4)
    tight = spectral_norm_bound(d, torch.from_numpy(v), total)
    assert s[0] <= tight <= 1.05 * s[0]
    g = torch.Generator().manual_seed(3)
    rand = torch.linalg.qr(torch.randn(d.shape[1], 4, generator=g, dtype=torch.float64))[0]
    assert spectral_norm_bound(d, rand, total) >= s[0]  # any orthonormal V: still a bound


def test_pin_moved_pins_a_small_update_and_refuses_a_large_one() -> None:
    w0 = _spiked(4)
    u0, s0, v0 = _top(w0, 3)
    for scale, pinned in ((1e-5, True), (1e-1, False)):
        d = scale * _spiked(5)
        wt = w0 + d
        st = np.linalg.svd(wt.numpy(), compute_uv=False)
        e = float(np.linalg.svd(d.numpy(), compute_uv=False)[0]) * (1 + 1e-9)
        got = pin_moved(wt, torch.from_numpy(u0), torch.from_numpy(s0[:4]), torch.from_numpy(v0),
                        float(s0[3]) * (1 + 1e-9), e, (1, 3))  # fmt: skip
        assert (got is not None) == pinned
        if got is not None:
            err = np.abs(got.s.numpy() - st[:3])
            assert (err <= 2 * MOVED_RTOL * s0[:3]).all()
            ut = np.linalg.svd(wt.numpy())[0]
            exact = 1 - float(((u0[:, :3].T @ ut[:, :3]) ** 2).sum()) / 3
            assert got.rotation[3][0] == pytest.approx(exact, abs=1e-2)
