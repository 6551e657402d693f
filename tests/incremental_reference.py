"""Step-at-a-time metrics (analyse_step, watch) against a whole-run `analyze` of the same run."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from opdlens.analysis.incremental import is_final_column

KEYS = ["step", "tensor", "expert", "part"]


def by_slice(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in (step, tensor, expert, part) order."""
    return df.sort_values(KEYS, na_position="first").reset_index(drop=True)


def assert_equals_analyze(got: pd.DataFrame, want: pd.DataFrame, ranks: Sequence[int]) -> None:
    """Every column but the final-update ones equal (spectral ones within the accuracy contract),
    and align_latest_* equal to analyze's align_* (the latest step being the final one)."""
    got, want = by_slice(got), by_slice(want)
    assert not [c for c in got.columns if is_final_column(c)]
    assert len(got) == len(want)
    for col in want.columns:
        if is_final_column(col):
            continue
        a, b = got[col], want[col]
        if col.startswith(("energy_k", "gap_k", "stable_rank")):
            np.testing.assert_allclose(a.astype(float), b.astype(float), atol=1e-3, err_msg=col)
        elif pd.api.types.is_float_dtype(b):
            # float32 chunk dot products (BLAS): the last bits depend on the threads in use.
            np.testing.assert_allclose(a.astype(float), b.astype(float), rtol=1e-5, err_msg=col)
        else:
            assert a.tolist() == b.tolist(), col
    for k in ranks:
        for side in ("left", "right"):
            np.testing.assert_allclose(
                got[f"align_latest_{side}_k{k}"], want[f"align_{side}_k{k}"], atol=1e-2,
                equal_nan=True, err_msg=f"align_latest_{side}_k{k}",
            )  # fmt: skip
