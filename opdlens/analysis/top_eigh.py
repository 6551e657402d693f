"""The top eigenvectors of a float32 Gram matrix: LAPACK's subset solver on the CPU."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from .._workers import SharedSetting

_blas = SharedSetting()
_controller: Any = None  # threadpoolctl's view of the loaded BLAS libraries, found once


@contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """numpy's and scipy's OpenBLAS capped at n threads while any caller is inside.

    torch.set_num_threads does not reach them, and OpenBLAS threads spin while they wait: a
    2-thread solver on 2 busy cores ran ten times slower than on one. The first caller in sets
    the cap, the last one out restores what was there. scipy's OpenBLAS takes a cap only from
    the thread that loaded it (here the main thread): a pool of worker threads is capped by
    the thread that starts it (`executors.iter_local`); inside a worker this is a no-op.
    """
    with _blas.held(lambda: _cap_blas(n)):
        yield


def _cap_blas(n: int) -> Callable[[], None]:
    """Cap the BLAS libraries at n threads; returns what restores them."""
    global _controller
    if _controller is None:
        import scipy.linalg  # noqa: F401  (loads scipy's OpenBLAS before the search)
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    # A limiter restores every library its controller holds to what it was when made: one
    # over all of them would put OpenMP (torch's threads) back to what it was then.
    return _controller.select(user_api="blas").limit(limits=max(1, n)).restore_original_limits


def top_gram_eigvecs(side: torch.Tensor, k: int) -> torch.Tensor:
    """Eigenvectors of side·sideᵀ for its k largest eigenvalues, largest first.

    On the CPU the Gram matrix is one symmetric rank update (half a product's work) and only
    k eigenpairs are solved for (LAPACK ?syevx), about a third of a full eigh's time; on
    another device it is torch's full eigh. Shape: side (lo, hi) float32; returns (lo, k).
    """
    lo = side.shape[0]
    k = min(k, lo)
    if side.device.type != "cpu":
        vecs = torch.linalg.eigh(side @ side.T)[1]  # ascending
        return vecs[:, lo - k :].flip(1)
    from scipy.linalg import blas, eigh

    a = side.detach().numpy()
    with blas_threads(torch.get_num_threads()):
        if a.flags.f_contiguous:  # a is (lo, hi) in column order: syrk's A Aᵀ reads it as it is
            gram = blas.ssyrk(1.0, a, trans=0)
        else:  # aᵀ is then (hi, lo) in column order: Aᵀ A with A = aᵀ
            gram = blas.ssyrk(1.0, np.ascontiguousarray(a).T, trans=1)
        vecs = eigh(
            gram, lower=False, subset_by_index=[lo - k, lo - 1], driver="evx",
            overwrite_a=True, check_finite=False,
        )[1]  # fmt: skip
    return torch.from_numpy(np.ascontiguousarray(vecs[:, ::-1]))
