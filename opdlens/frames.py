"""Checks that a plot or a sentence runs on a usable DataFrame, and the small helpers they share."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from opdlens.errors import NothingToDrawError, OptionError

ANALYZE_HINT = "Pass the DataFrame returned by opdlens.analyze."
STEP_LABEL = "training step $t$"


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
