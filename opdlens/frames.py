"""Operations on tidy result frames that analysis, the report and the plots share: checks that a
frame is usable, weighted means, group curves, group checks and foresight's anchor choice."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import overload

import numpy as np
import pandas as pd

from opdlens.errors import NothingToDrawError, OptionError

ANALYZE_HINT = "Pass the DataFrame returned by opdlens.analyze."
STEP_LABEL = "training step $t$"
# Foresight's anchor: "previous" saved step, "base", a step, or None (every anchor)
Anchor = str | int | None


def check_frame(
    df: object, func: str, columns: Sequence[str], arg: str = "df", hint: str = ANALYZE_HINT
) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(
            f"The '{arg}' argument of {func} must be a pandas DataFrame. "
            f"Got {type(df).__name__} instead. {hint}"
        )
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise OptionError(
            f"The '{arg}' argument of {func} needs the columns {list(columns)}; got "
            f"{list(df.columns)} (missing {missing}). {hint}"
        )
    if df.empty:
        raise NothingToDrawError(f"The '{arg}' argument of {func} has no rows. {hint}")
    return df


def ks_of(df: pd.DataFrame, prefix: str, func: str) -> list[int]:
    pattern = re.compile(rf"^{prefix}_k(\d+)$")
    ks = sorted(int(m.group(1)) for c in df.columns if (m := pattern.match(str(c))))
    if not ks:
        raise OptionError(
            f"The 'df' argument of {func} needs at least one column named {prefix}_k{{K}} "
            f"(e.g. {prefix}_k4); got {list(df.columns)}. {ANALYZE_HINT}"
        )
    return ks


def values_of(series: pd.Series) -> np.ndarray:
    return series.to_numpy(dtype="float64", na_value=np.nan)


def run_names(df: pd.DataFrame, runs: Sequence[str] | None, func: str) -> list[str]:
    present = [str(r) for r in pd.unique(df["run"])]
    if runs is None:
        return present
    unknown = [r for r in runs if r not in present]
    if unknown or not runs:
        raise OptionError(
            f"The 'runs' parameter of {func} must name runs in df. Got {list(runs)} instead; "
            f"df holds {present}."
        )
    return list(runs)


def final_steps(df: pd.DataFrame, runs: Sequence[str], step: int | None, func: str) -> dict:
    out = {}
    for run in runs:
        steps = df.loc[df["run"] == run, "step"]
        if step is None:
            out[run] = int(steps.max())
        elif (steps == step).any():
            out[run] = int(step)
        else:
            raise OptionError(
                f"The 'step' parameter of {func} must be a step saved by every run. Got {step} "
                f"instead; run '{run}' has steps {sorted(int(s) for s in steps.unique())}."
            )
    return out


def ordered(values: Iterable[object], order: Sequence[str]) -> list[str]:
    items = {str(v) for v in values}
    return sorted(items, key=lambda v: (order.index(v) if v in order else len(order), v))


@overload
def weighted_mean(values: pd.Series, weights: pd.Series) -> float: ...
@overload
def weighted_mean(values: pd.Series, weights: pd.Series, by: Sequence[pd.Series]) -> pd.Series: ...
def weighted_mean(
    values: pd.Series, weights: pd.Series, by: Sequence[pd.Series] | None = None
) -> float | pd.Series:
    """Mean of `values` weighted by `weights` over rows where both are finite and the weight > 0.

    With `by` (columns aligned with `values`), one mean per group that has such a row; without,
    one number (NaN when no row counts).
    """
    ok = np.isfinite(values.astype(float)) & np.isfinite(weights.astype(float)) & (weights > 0)
    v, w = values[ok], weights[ok]
    if by is None:
        return float((v * w).sum() / w.sum()) if ok.any() else np.nan
    keys = [k[ok] for k in by]
    return (v * w).groupby(keys).sum() / w.groupby(keys).sum()


def group_curves(per_run: pd.Series, groups: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Across the runs of each group: mean, sd (ddof = 1), min, max and n of a per-run curve.

    per_run is indexed by `run` and further levels (step, block, …); the result is indexed by
    `group` and the same further levels. Runs in no group are left out.
    """
    others = [name for name in per_run.index.names if name != "run"]
    assert "run" in per_run.index.names and others, per_run.index.names
    member = {run: g for g, runs in groups.items() for run in runs}
    frame = per_run.rename("value").reset_index()
    frame["group"] = frame["run"].map(member)
    frame = frame[frame["group"].notna() & np.isfinite(frame["value"].astype(float))]
    stats = frame.groupby(["group", *others], sort=False)["value"].agg(
        mean="mean", sd="std", min="min", max="max", n="count"
    )
    return stats


def check_groups(groups: Mapping[str, Sequence[str]], runs: Sequence[str]) -> dict[str, list[str]]:
    """Groups as {name: [run labels]}, each run in `runs` and in one group only."""
    if not isinstance(groups, Mapping) or not groups:
        raise OptionError(
            "The 'groups' parameter must map a group name to its runs' labels, e.g. "
            f"{{'OPD': ['OPD-1', 'OPD-2']}}. Got {groups!r} instead."
        )
    out = {str(g): [str(r) for r in members] for g, members in groups.items()}
    seen = [r for members in out.values() for r in members]
    unknown = [r for r in seen if r not in runs]
    empty = [g for g, members in out.items() if not members]
    if unknown or empty or len(set(seen)) < len(seen):
        raise OptionError(
            f"The 'groups' parameter must name each run once, among the runs given {list(runs)}; "
            f"got {out} (unknown: {unknown}, empty groups: {empty})."
        )
    return out


def select_anchor(df: pd.DataFrame, anchor: Anchor = "previous") -> pd.DataFrame:
    """The rows of one anchor choice: 'previous' saved step, 'base', or a step (per run, if any)."""
    if anchor == "base":
        return df[df["anchor"] == 0]
    if anchor != "previous":
        if isinstance(anchor, bool) or not isinstance(anchor, int):
            raise OptionError(
                f"The 'anchor' parameter must be 'previous', 'base' or a step. Got {anchor!r} instead."
            )
        return df[df["anchor"] == anchor]
    keep = np.zeros(len(df), dtype=bool)
    groups = df.groupby("run", sort=False).indices if "run" in df else {None: np.arange(len(df))}
    for idx in groups.values():
        sub = df.iloc[idx]
        saved = np.unique(np.concatenate([[0], sub["step"], sub["anchor"], sub["target_step"]]))
        steps = sub["step"].to_numpy()
        prev = saved[np.searchsorted(saved, steps) - 1]
        keep[idx] = sub["anchor"].to_numpy() == prev
    return df[keep]
