"""The base-geometry lens over a trajectory: how much of each run's update lies in the base's
top-K singular directions, against a random direction's share, and how far the top-K singular
values drifted, per step, for each run or group (`analyze --base-geometry`'s columns)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from opdlens.frames import group_curves, ks_of, values_of, weighted_mean

__all__ = ["CURVE_COLUMNS", "principal_curves", "principal_sentence"]

CURVE_COLUMNS = [
    "label", "step", "k", "runs", "energy_left", "energy_right", "random_left", "random_right",
    "drift", "energy_left_min", "energy_left_max", "drift_min", "drift_max",
]  # fmt: skip
_SHOWN = ("energy_left", "energy_right", "random_left", "random_right", "drift")


def principal_curves(
    frames: Mapping[str, pd.DataFrame],
    groups: Mapping[str, Sequence[str]] | None = None,
    k: int | None = None,
) -> pd.DataFrame:
    """Per run (or group: the mean of its runs, with their min and max) and step, at rank K:

    energy_left/right: Σ‖U_{0,K}ᵀΔ‖² / Σ‖Δ‖² over the run's matrices (principal_energy_*_k{K}
    weighted by ‖Δ‖², so the run's own share); random_left/right: the same weighting of
    K/rows (K/cols), a random update's share; drift: spectral_drift_k{K} averaged over the
    matrices weighted by their element counts. Cumulative rows only. K defaults to the
    largest rank the frames hold; a run without the columns is left out.
    """
    if k is None:  # the largest K every run with the columns has (they may differ in --ranks)
        held = [set(ks_of(df, "principal_energy_left", "principal_curves"))
                for df in frames.values() if _has_geometry(df)]  # fmt: skip
        common = set.intersection(*held) if held else set()
        k = max(common) if common else None
    curves = {label: c for label, df in frames.items() if (c := _run_curve(df, k)) is not None}
    if not curves:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    kk = int(next(iter(curves.values()))["k"].iloc[0])
    per_run = pd.concat(curves, names=["run", "row"]).reset_index(level="row", drop=True)
    per_run = per_run.set_index("step", append=True)
    sets = {str(g): list(m) for g, m in groups.items()} if groups is not None else None
    if sets is None:
        sets = {label: [label] for label in curves}
    out = []
    for col in _SHOWN:
        stats = group_curves(
            per_run[col], {g: [r for r in m if r in curves] for g, m in sets.items()}
        )
        part = stats["mean"].rename(col).to_frame()
        if col in ("energy_left", "drift"):
            part[f"{col}_min"], part[f"{col}_max"] = stats["min"], stats["max"]
        if col == "energy_left":
            part["runs"] = stats["n"]
        out.append(part)
    table = pd.concat(out, axis=1).reset_index().rename(columns={"group": "label"})
    table["k"] = kk
    return table[CURVE_COLUMNS].reset_index(drop=True)


def _has_geometry(df: pd.DataFrame) -> bool:
    return any(str(c).startswith("principal_energy_left_k") for c in df.columns)


def _run_curve(df: pd.DataFrame, k: int | None) -> pd.DataFrame | None:
    """One run's curve at rank k, or None without base-geometry columns at k."""
    if k is None or not _has_geometry(df):
        return None
    kk = k
    if kk not in ks_of(df, "principal_energy_left", "principal_curves"):
        return None
    if "span" in df.columns:
        df = df[df["span"] == "cumulative"]
    energy = values_of(df[f"principal_energy_left_k{kk}"])
    df = df[np.isfinite(energy)]
    if df.empty:
        return None
    w = df["update_norm"].astype("float64") ** 2
    rows, cols = df["rows"].astype("float64"), df["cols"].astype("float64")
    by = [df["step"]]
    curve = pd.DataFrame({
        "energy_left": weighted_mean(df[f"principal_energy_left_k{kk}"], w, by),
        "energy_right": weighted_mean(df[f"principal_energy_right_k{kk}"], w, by),
        "random_left": weighted_mean(np.minimum(kk, rows) / rows, w, by),
        "random_right": weighted_mean(np.minimum(kk, cols) / cols, w, by),
        "drift": weighted_mean(df[f"spectral_drift_k{kk}"], df["numel"].astype("float64"), by),
    })  # fmt: skip
    curve.index.name = "step"
    return curve.reset_index().assign(k=kk)


def principal_sentence(curves: pd.DataFrame) -> str:
    """What the curves found at each label's last step (empty without rows).

    E.g. 'At the last analysed step, OPD put 3.1 % of its update into the base's top-16 left
    singular directions (a random update: 0.8 %) and RL 1.2 % (0.8 %); the top-16 singular
    values drifted by 0.41 % and 0.12 % (mean over matrices). RL puts the least of its update
    into the base's principal directions.'
    """
    if curves.empty:
        return ""
    last = curves.loc[curves.groupby("label", sort=False)["step"].idxmax()]
    k = int(last["k"].iloc[0])
    puts = [f"{r.label} {_pct(r.energy_left)} ({_pct(r.random_left)})" for r in last.itertuples()]
    r0 = last.iloc[0]
    puts[0] = (f"{r0.label} put {_pct(r0.energy_left)} of its update into the base's top-{k} "
               f"left singular directions (a random update: {_pct(r0.random_left)})")  # fmt: skip
    drifts = " and ".join(_pct(d) for d in last["drift"])
    text = (f"At the last analysed step, {_and(puts)}; the top-{k} singular values drifted by "
            f"{drifts} (mean over matrices).")  # fmt: skip
    energy = values_of(last["energy_left"])
    if len(last) > 1 and np.isfinite(energy).all():
        if energy.max() - energy.min() < 0.001:
            return text + " The shares are the same to 0.1 %."
        least = last["label"].iloc[int(np.argmin(energy))]
        text += f" {least} puts the least of its update into the base's principal directions."
    return text


def _and(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %" if abs(x) >= 0.001 or x == 0 else f"{100 * x:.2g} %"
