"""Singular-value spectra of Δ_T for the figures, as one tidy DataFrame: run, tensor, step, index, σ.

From the run (full spectra, one SVD per matrix) or, without it, from the factor cache an
analysis wrote (the top-K values, or the full spectra when it ran with full_spectrum).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..errors import OpdlensError
from .cache import FactorCache
from .linalg import singular_values
from .matrices import matrix_of

if TYPE_CHECKING:
    from ..run import Run

__all__ = ["SPECTRA_COLUMNS", "cached_spectra", "run_spectra", "spectra_frame", "top_matrices"]

SPECTRA_COLUMNS = ["run", "tensor", "step", "index", "sigma", "top_k_only"]


def spectra_frame(
    values: Mapping[str, np.ndarray], step: int, *, run: str = "run", top_k_only: bool = False
) -> pd.DataFrame:
    """Tidy rows (run, tensor, step, index 1.., sigma, top_k_only) from label → singular values."""
    frames = [
        pd.DataFrame({"run": run, "tensor": label, "step": int(step),
                      "index": np.arange(1, len(sigma) + 1),
                      "sigma": np.asarray(sigma, dtype="float64"), "top_k_only": top_k_only})
        for label, sigma in values.items()
    ]  # fmt: skip
    if not frames:
        return pd.DataFrame({c: [] for c in SPECTRA_COLUMNS})
    return pd.concat(frames, ignore_index=True)[SPECTRA_COLUMNS]


def top_matrices(df: pd.DataFrame, n: int, parts: bool) -> list[tuple[str, int | None, str | None]]:
    """(tensor, expert, part) of the n matrices with the largest update share at the last step.

    parts=False sums the parts of a fused tensor (qkv, gate_up) into the whole matrix.
    """
    at = df[(df["step"] == df["step"].max()) & df["stable_rank"].notna()]
    expert = at["expert"] if "expert" in at else pd.Series(pd.NA, index=at.index)
    part = at["part"] if parts and "part" in at else pd.Series(pd.NA, index=at.index)
    keyed = at.assign(_e=expert.astype("Int64").fillna(-1), _p=part.astype("string").fillna(""))
    shares = keyed.groupby(["tensor", "_e", "_p"])["update_share"].sum()
    top = shares.sort_values(ascending=False, kind="stable").head(n)
    return [(str(t), None if e < 0 else int(e), p or None) for t, e, p in top.index]


def _label(tensor: str, expert: int | None, part: str | None) -> str:
    extra = ", ".join(
        x for x in (f"expert {expert}" if expert is not None else "", part or "") if x
    )
    return f"{tensor} [{extra}]" if extra else tensor


def _run_label(df: pd.DataFrame, label: str | None) -> str:
    if label is not None:
        return label
    return str(df["run"].iloc[0]) if "run" in df.columns and len(df) else "run"


def run_spectra(
    run: Run, df: pd.DataFrame, n: int = 6, *, label: str | None = None
) -> pd.DataFrame:
    """Full spectra of Δ_T for the n matrices with the largest update share at the final step."""
    step = int(df["step"].max())
    values = {}
    for tensor, expert, _ in top_matrices(df, n, parts=False):
        delta = matrix_of(run.delta(tensor, step), run.module(tensor).stacked_experts, expert)
        values[_label(tensor, expert, None)] = singular_values(delta).double().cpu().numpy()
    return spectra_frame(values, step, run=_run_label(df, label), top_k_only=False)


def cached_spectra(
    metrics_dir: str | Path, df: pd.DataFrame, n: int = 6, *, label: str | None = None
) -> pd.DataFrame:
    """Spectra from an analysis' factor cache; the top-K values only unless it ran full_spectrum.

    Raises:
        OpdlensError: no cache, a damaged one, or no cached values for the final step.
    """
    metrics_dir = Path(metrics_dir)
    step = int(df["step"].max())
    cache = FactorCache.open(metrics_dir / "cache")
    values: dict[str, np.ndarray] = {}
    full = True
    for tensor, expert, part in top_matrices(df, n, parts=True):
        cached = cache.spectrum(tensor, step, part=part, expert=expert)
        if cached is not None and cached.values.numel():
            values[_label(tensor, expert, part)] = cached.values.double().numpy()
            full = full and cached.full
    if not values:
        raise OpdlensError(
            f"{metrics_dir / 'cache'} holds no cached singular values for step {step}; pass the "
            "run directory instead of its metrics to draw the spectra."
        )
    return spectra_frame(values, step, run=_run_label(df, label), top_k_only=not full)
