"""Analyse a run one saved step at a time, as `opdlens watch` does while a trainer writes it.

A step's own metrics do not depend on later steps, so each new step is analysed alone (its
factors cached). What does depend on the final update (cos_to_final, align_*) is not known
while the run trains: in its place come the provisional align_latest_* columns, the alignment
of every analysed step's top-K subspaces with the newest step's, read from the factor cache.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .options import AnalyzeOptions

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

    from ..run import Run
    from .analyze import Analysis

FINAL_PREFIXES = ("align_left_k", "align_right_k")
FINAL_COLUMNS = ("cos_to_final",)
PROVISIONAL_PREFIXES = ("align_latest_left_k", "align_latest_right_k")


def is_final_column(column: str) -> bool:
    """True for the columns that need the final update (left out until the run has ended)."""
    return column in FINAL_COLUMNS or column.startswith(FINAL_PREFIXES)


def is_provisional(column: str) -> bool:
    """True for the align_latest_* columns, which change with every newer step."""
    return column.startswith(PROVISIONAL_PREFIXES)


def analyse_step(
    run: Run,
    step: int,
    options: AnalyzeOptions,
    cache_dir: Path,
    cache_steps: Mapping[int, str],
    *,
    progress: bool = False,
) -> Analysis:
    """The rows of one saved step (every column but the final-update ones), its factors cached.

    `cache_steps` are the steps whose cached factors are kept beside this one's.
    """
    from .analyze import compute_analysis

    opts = dataclasses.replace(options, final=step)
    sub = run.only([step])
    result = compute_analysis(
        sub, opts, cache_dir=cache_dir, cache_steps=cache_steps, progress=progress
    )
    dropped = [c for c in result.frame.columns if is_final_column(c)]
    result.frame = result.frame.drop(columns=dropped)
    return result


def align_latest(
    frame: pd.DataFrame, cache_dir: Path, cache_steps: Mapping[int, str], ranks: Sequence[int]
) -> pd.DataFrame:
    """`frame` with align_latest_{left,right}_k{K}: each row's top-K subspaces against the newest
    step's, from cached factors only (NaN where analyze's align_* would be NaN)."""
    latest = int(frame["step"].max())
    values = alignment_with(frame, cache_dir, cache_steps, latest, ranks)
    out = frame.drop(columns=[c for c in frame.columns if is_provisional(c)])
    return out.assign(**{f"align_latest_{c}": v for c, v in values.items()})


def alignment_with(
    frame: pd.DataFrame,
    cache_dir: Path,
    cache_steps: Mapping[int, str],
    target: int,
    ranks: Sequence[int],
) -> dict[str, list[float]]:
    """left_k{K} / right_k{K} per row of `frame`: ‖U_{t,K}ᵀ U_{target,K}‖_F² / K (V for right),
    from the factors cached for the row's step and `target`; NaN where either is missing."""
    from .cache import FactorCache, slice_key

    cache = FactorCache(cache_dir, dict(cache_steps))
    values = {f"{side}_k{k}": [math.nan] * len(frame) for side in ("left", "right") for k in ranks}
    for name, idx in frame.groupby("tensor", sort=False).indices.items():
        tensor = cache.tensor(str(name))
        for i in idx:
            row = frame.iloc[i]
            sq = float(row["update_norm"]) ** 2
            if bool(row["nonfinite"]) or not math.isfinite(sq) or sq <= 0:
                continue  # analyze's alignment is NaN there too
            expert, part = _optional(row["expert"]), _optional(row["part"])
            key = slice_key(None if expert is None else int(expert), part)
            mine = tensor.get(int(row["step"]), key, None, False)
            theirs = tensor.get(target, key, None, False)
            if mine is None or theirs is None:
                continue
            top = min(max(ranks), mine.u.shape[1], theirs.u.shape[1])
            # One K×K product per side; every smaller K is its leading block (as subspace_alignment).
            left = _squared_cosines(mine.u, theirs.u, top)
            right = _squared_cosines(mine.v, theirs.v, top)
            for k in ranks:
                if k <= top:
                    values[f"left_k{k}"][i] = float(left[:k, :k].sum()) / k
                    values[f"right_k{k}"][i] = float(right[:k, :k].sum()) / k
    return values


def _squared_cosines(a: torch.Tensor, b: torch.Tensor, k: int) -> np.ndarray:
    """(U_{a,k}ᵀ U_{b,k})² elementwise, in float64.

    A torch product, not numpy's: numpy's OpenBLAS ignores torch's thread count and would spin
    its own threads inside each worker.
    """
    cross = (a[:, :k].double().T @ b[:, :k].double()).cpu().numpy()
    return cross * cross


def _optional(value: object) -> str | None:
    """None for a missing expert or part (NaN / pd.NA in a frame), else the value as text."""
    import pandas as pd

    if value is None or value is pd.NA:
        return None
    if isinstance(value, float):
        return None if math.isnan(value) else str(int(value))
    return str(value)


def foresight_step(
    run: Run, steps: Sequence[int], options: AnalyzeOptions
) -> dict[str, float | int] | None:
    """α* and rel_error of θ_t + α(θ_t − θ_a) for the newest step, t and a the two saves before it.

    `steps` are the saved steps analysed so far, newest last (a = 0, the base, when only one save
    came before). Over the attention and MLP matrices, the Gram way, as `foresee --anchor
    previous` computes it. None with fewer than two saves.
    """
    from .foresight import foresee

    saved = sorted(int(s) for s in steps if s > 0)
    if len(saved) < 2:
        return None
    newest, t = saved[-1], saved[-2]
    a = saved[-3] if len(saved) > 2 else 0
    sub = run.only([s for s in (a, t, newest) if s > 0])
    df = foresee(
        sub, anchor="previous", scopes=("overall",), alphas=(1.0,), workers=options.workers,
        device=options.device,
    )  # fmt: skip
    pick = df[
        (df["alpha_kind"] == "optimal") & (df["step"] == t) & (df["anchor"] == a)
        & (df["target_step"] == newest)
    ]  # fmt: skip
    if pick.empty:
        return None
    row = pick.iloc[0]
    return {
        "step": t, "anchor": a, "target_step": newest, "alpha_star": float(row["alpha"]),
        "rel_error": float(row["rel_error"]),
    }  # fmt: skip


__all__ = [
    "align_latest",
    "alignment_with",
    "analyse_step",
    "foresight_step",
    "is_final_column",
    "is_provisional",
]
