"""Statistics of groups of runs: mean ± sd per group, and seeded bootstrap intervals for a
difference of group means and for one group's mean."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import OptionError

__all__ = [
    "BOOTSTRAP_SAMPLES",
    "Difference",
    "Interval",
    "MeanSD",
    "bootstrap_difference",
    "bootstrap_mean",
    "mean_sd",
]

BOOTSTRAP_SAMPLES = 10_000


@dataclass(frozen=True)
class MeanSD:
    """Mean and sample standard deviation (ddof = 1; NaN for one value) of n numbers."""

    mean: float
    sd: float
    n: int

    def format(self, spec: str = ".3f") -> str:
        """'0.401 ± 0.012', or '0.401' alone when n = 1."""
        if self.n < 2:
            return f"{self.mean:{spec}}"
        return f"{self.mean:{spec}} ± {self.sd:{spec}}"


@dataclass(frozen=True)
class Difference:
    """mean(a) − mean(b) with its percentile bootstrap interval at `level`."""

    diff: float
    low: float
    high: float
    level: float
    n_a: int
    n_b: int
    samples: int
    seed: int

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0."""
        return self.low > 0 or self.high < 0

    def format(self, spec: str = ".3f") -> str:
        """'+0.034 [+0.010, +0.058]' (the interval at its level)."""
        sign = "+" + spec
        return f"{self.diff:{sign}} [{self.low:{sign}}, {self.high:{sign}}]"


@dataclass(frozen=True)
class Interval:
    """mean(values) with its percentile bootstrap interval at `level`."""

    mean: float
    low: float
    high: float
    level: float
    n: int
    samples: int
    seed: int

    def format(self, spec: str = ".3f") -> str:
        """'1.034 [1.010, 1.058]' (the interval at its level)."""
        return f"{self.mean:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


def _values(values: Sequence[float], name: str, func: str) -> np.ndarray:
    array = np.asarray(values, dtype="float64")
    if array.ndim != 1 or array.size == 0 or not np.isfinite(array).all():
        raise OptionError(
            f"The '{name}' argument of {func} must be a non-empty list of finite numbers (one per "
            f"run). Got {list(np.ravel(array))} instead."
        )
    return array


def mean_sd(values: Sequence[float]) -> MeanSD:
    """Mean and sample standard deviation (ddof = 1) of one group's values."""
    array = _values(values, "values", "mean_sd")
    sd = float(array.std(ddof=1)) if array.size > 1 else math.nan
    return MeanSD(float(array.mean()), sd, int(array.size))


def bootstrap_difference(
    a: Sequence[float],
    b: Sequence[float],
    *,
    level: float = 0.95,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> Difference:
    """Percentile bootstrap interval of mean(a) − mean(b), each group resampled on its own.

    Deterministic for a seed: `samples` resamples of a's indices are drawn first, as one
    (samples, len(a)) array from numpy.random.default_rng(seed), then those of b.

    Raises:
        OptionError: a group with fewer than two values (no spread to resample), non-finite
            values, a level outside (0, 1) or fewer than 100 samples.
    """
    x = _values(a, "a", "bootstrap_difference")
    y = _values(b, "b", "bootstrap_difference")
    if x.size < 2 or y.size < 2:
        raise OptionError(
            f"bootstrap_difference needs at least 2 runs per group to estimate an interval; got "
            f"{x.size} and {y.size}. Train or pass more runs (seeds) per group."
        )
    _check_resampling(level, samples, "bootstrap_difference")
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, x.size, size=(samples, x.size))  # (samples, n_a)
    ib = rng.integers(0, y.size, size=(samples, y.size))  # (samples, n_b)
    diffs = x[ia].mean(axis=1) - y[ib].mean(axis=1)
    low, high = np.percentile(diffs, [50 * (1 - level), 50 * (1 + level)])
    return Difference(
        float(x.mean() - y.mean()), float(low), float(high), level, x.size, y.size, samples, seed
    )


def bootstrap_mean(
    values: Sequence[float],
    *,
    level: float = 0.95,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of mean(values): `samples` resamples of their indices,
    drawn as one (samples, n) array from numpy.random.default_rng(seed).

    Raises:
        OptionError: fewer than two values, non-finite values, a level outside (0, 1) or fewer
            than 100 samples.
    """
    x = _values(values, "values", "bootstrap_mean")
    if x.size < 2:
        raise OptionError(
            f"bootstrap_mean needs at least 2 values to estimate an interval; got {x.size}."
        )
    _check_resampling(level, samples, "bootstrap_mean")
    idx = np.random.default_rng(seed).integers(0, x.size, size=(samples, x.size))
    low, high = np.percentile(x[idx].mean(axis=1), [50 * (1 - level), 50 * (1 + level)])
    return Interval(float(x.mean()), float(low), float(high), level, x.size, samples, seed)


def _check_resampling(level: float, samples: int, func: str) -> None:
    if not 0 < level < 1:
        raise OptionError(f"The 'level' parameter of {func} must be in (0, 1). Got {level}.")
    if samples < 100:
        raise OptionError(f"The 'samples' parameter of {func} must be ≥ 100. Got {samples}.")
