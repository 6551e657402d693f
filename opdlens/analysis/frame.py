"""Build the tidy metrics DataFrame from per-tensor rows, and aggregate it by module."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import OptionError
from ..frames import weighted_mean

ID_COLUMNS = [
    "step",
    "span",
    "tensor",
    "layer",
    "block",
    "kind",
    "expert",
    "part",
    "rows",
    "cols",
    "numel",
]

# Added by --base-geometry, per K (design.md; base_geometry.step_columns fills them).
GEOMETRY_METRICS = (
    "principal_energy_left", "principal_energy_right", "spectral_drift", "spectral_drift_mean",
    "principal_rotation_left", "principal_rotation_right", "base_gap",
)  # fmt: skip


def geometry_columns(ranks: Sequence[int]) -> list[str]:
    """The columns `analyze --base-geometry` adds, in order."""
    return [f"{c}_k{k}" for c in GEOMETRY_METRICS for k in ranks]


def metric_columns(
    ranks: Sequence[int], full_spectrum: bool, base_geometry: bool = False
) -> list[str]:
    """Metric columns in design.md's order and spelling."""
    cols = ["update_norm", "base_norm", "rel_update_norm", "update_share"]
    cols += [f"energy_k{k}" for k in ranks] + ["stable_rank"]
    cols += [f"align_left_k{k}" for k in ranks] + [f"align_right_k{k}" for k in ranks]
    cols += [f"gap_k{k}" for k in ranks] + ["cos_to_final"]
    if full_spectrum:
        cols.append("effective_rank")
    cols += ["changed_frac", "changed_frac_tol", "changed_count", "changed_tol_count"]
    if base_geometry:
        cols += geometry_columns(ranks)
    return cols + ["nonfinite"]


def build_frame(
    rows: list[dict[str, object]], order: Sequence[str], ranks: Sequence[int], full_spectrum: bool,
    base_geometry: bool = False,
) -> pd.DataFrame:  # fmt: skip
    """One row per (step, update, tensor, slice) with real dtypes and update_share filled in."""
    cols = ID_COLUMNS + metric_columns(ranks, full_spectrum, base_geometry)
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in cols})
    df = pd.DataFrame(rows)
    sq = df["update_sq"].astype("float64")
    total = sq.groupby([df["span"], df["step"]]).transform(lambda s: s.sum(min_count=1))
    df["update_share"] = np.where(total > 0, sq / total, np.nan)
    rank = {name: i for i, name in enumerate(order)}
    df["_order"] = df["tensor"].map(rank)
    df = df.sort_values(
        ["span", "step", "_order", "expert", "part"], na_position="first", kind="stable"
    )
    df = df[cols].reset_index(drop=True)
    return df.astype(
        {
            "step": "int64",
            "span": "string",
            "tensor": "string",
            "layer": "Int64",
            "block": "string",
            "kind": "string",
            "expert": "Int64",
            "part": "string",
            "rows": "int64",
            "cols": "int64",
            "numel": "int64",
            "changed_frac": "float64",
            "changed_frac_tol": "float64",
            "changed_count": "Int64",
            "changed_tol_count": "Int64",
            "nonfinite": "bool",
        }  # fmt: skip
    )


def summarize(df: pd.DataFrame, by: Sequence[str] = ("layer", "block")) -> pd.DataFrame:
    """Aggregate rows per step and group: shares sum, norms root-sum-square, ratios energy-weighted.

    changed_frac and changed_frac_tol are element-weighted (summed counts over summed numel),
    and NaN for a group where some row has no counts (LoRA factors).
    """
    missing = [
        c for c in ("step", "update_norm", "base_norm", "update_share", *by) if c not in df.columns
    ]
    if missing:
        raise OptionError(
            f"The 'df' argument of summarize needs the columns {missing}; got {list(df.columns)}. "
            "Pass the DataFrame returned by opdlens.analyze."
        )
    keys = [c for c in ("run", "span") if c in df.columns and c not in by] + ["step", *by]
    ratio_cols = [
        c for c in df.columns
        if c.startswith(("energy_k", "align_left_k", "align_right_k", "gap_k", "principal_energy_")) or c in ("cos_to_final", "stable_rank", "effective_rank")
    ]  # fmt: skip
    # principal_energy_*: the ‖Δ‖²-weighted mean is Σ‖U_0ᵀΔ‖² / Σ‖Δ‖², the group's own share.
    out = []
    for key, g in df.groupby(keys, dropna=False, sort=True):
        w = g["update_norm"] ** 2
        rec = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        rec["tensors"] = int(g["tensor"].nunique())
        rec["numel"] = int(g["numel"].sum()) if "numel" in g else 0
        rec["update_norm"] = float(np.sqrt(w.sum(min_count=1)))
        rec["base_norm"] = float(np.sqrt((g["base_norm"] ** 2).sum()))
        rec["rel_update_norm"] = (
            rec["update_norm"] / rec["base_norm"] if rec["base_norm"] > 0 else np.inf
        )
        rec["update_share"] = float(g["update_share"].sum(min_count=1))
        for c in ratio_cols:
            rec[c] = weighted_mean(g[c], w)
        if "changed_count" in g:
            rec.update(changed_share(g))
        out.append(rec)
    return pd.DataFrame(out)


def changed_share(rows: pd.DataFrame) -> dict[str, object]:
    """Summed changed counts of some rows and their element-weighted shares (design.md).

    Counts are None and shares NaN when any row has no counts (a LoRA update).
    """
    numel = int(rows["numel"].sum())
    out: dict[str, object] = {}
    for count, frac in (
        ("changed_count", "changed_frac"),
        ("changed_tol_count", "changed_frac_tol"),
    ):
        c = rows[count]
        known = bool(len(c)) and not c.isna().any()
        out[count] = int(c.sum()) if known else None
        out[frac] = int(c.sum()) / numel if known and numel else np.nan
    return out
