"""The top eigenvectors of a Gram matrix against numpy's float64 eigh, and the BLAS thread cap."""

import threading

import checkpoints
import numpy as np
import pandas as pd
import pytest
import torch
from planted import spiked_update
from threadpoolctl import threadpool_info

import opdlens
from opdlens import open_run
from opdlens.analysis import base_geometry as BG
from opdlens.analysis import top_eigh as T


def _planted(rows: int, cols: int, seed: int) -> torch.Tensor:
    """A float32 matrix whose top singular values are well apart. Shape: (rows, cols)."""
    g = torch.Generator().manual_seed(seed)
    r = min(rows, cols)
    u = torch.linalg.qr(torch.randn(rows, r, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(cols, r, generator=g, dtype=torch.float64))[0]
    s = torch.cat([torch.linspace(10.0, 4.0, 6, dtype=torch.float64), torch.full((r - 6,), 0.5)])
    s[6:] *= torch.rand(r - 6, generator=g, dtype=torch.float64)
    return ((u * s) @ v.T).float()


@pytest.mark.parametrize("transposed", [False, True], ids=["row-major", "column-major"])
def test_top_vectors_match_float64_eigh(transposed):
    w = _planted(700, 300, 0)
    side = w.T if transposed else w.T.contiguous()  # (300, 700) either way
    assert side.is_contiguous() != transposed
    got = T.top_gram_eigvecs(side, 6).double().numpy()
    gram = side.double().numpy() @ side.double().numpy().T
    want = np.linalg.eigh(gram)[1][:, ::-1][:, :6]
    assert got.shape == (300, 6)
    np.testing.assert_allclose(np.abs((got * want).sum(0)), 1.0, atol=1e-5)  # same lines, in order
    np.testing.assert_allclose(got.T @ got, np.eye(6), atol=1e-5)


def test_k_beyond_the_small_side_is_capped():
    side = _planted(40, 90, 1)
    got = T.top_gram_eigvecs(side, 50)
    assert got.shape == (40, 40)
    np.testing.assert_allclose(got.double().T @ got.double(), np.eye(40), atol=1e-5)


def _blas_threads() -> list[int]:
    return [d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas"]


def test_blas_cap_holds_while_any_thread_is_inside_and_is_restored():
    T.top_gram_eigvecs(_planted(20, 30, 2), 2)  # scipy's BLAS loaded
    before = _blas_threads()
    seen: list[list[int]] = []

    def worker() -> None:  # as analyze's worker threads: inside the starter's cap
        with T.blas_threads(2):
            seen.append(_blas_threads())
            T.top_gram_eigvecs(_planted(20, 30, 3), 2)
        seen.append(_blas_threads())  # it left; the starter's cap still holds

    with T.blas_threads(1):
        t = threading.Thread(target=worker)
        t.start()
        t.join(10)
        seen.append(_blas_threads())
    assert seen == [[1] * len(before)] * 3
    assert _blas_threads() == before


def test_analyze_workers_run_base_geometry_with_scipy_blas_capped(tmp_path, monkeypatch):
    """Two worker threads: every eigensolve sees one BLAS thread, the numbers are one worker's,
    and the count is back afterwards."""
    root = checkpoints.write_hf_run(tmp_path / "run", "llama", (0, 2), update=spiked_update)
    one = opdlens.analyze(open_run(root), ranks=(1, 4), base_geometry=True, workers=1)
    seen: list[list[int]] = []
    solve = BG.top_gram_eigvecs

    def watched(side: torch.Tensor, k: int) -> torch.Tensor:
        seen.append(_blas_threads())
        return solve(side, k)

    monkeypatch.setattr(BG, "top_gram_eigvecs", watched)
    before = _blas_threads()
    two = opdlens.analyze(open_run(root), ranks=(1, 4), base_geometry=True, workers=2)
    assert seen and all(s == [1] * len(before) for s in seen)
    assert _blas_threads() == before
    cols = [c for c in one.columns if c.startswith(("principal_", "spectral_drift"))]
    key = ["step", "tensor"]
    a, b = (d.sort_values(key).reset_index(drop=True)[cols] for d in (one, two))
    # a drift is a difference of two σ: BLAS threads' rounding shows in it at ~1e-8 (scipy 1.10)
    pd.testing.assert_frame_equal(a, b, rtol=1e-6, atol=1e-6)
