"""analysis.stats: mean ± sd, and the seeded bootstrap interval of a difference of group means."""

from __future__ import annotations

import itertools
import re
import statistics

import numpy as np
import pytest

from opdlens.analysis.stats import bootstrap_difference, bootstrap_mean, mean_sd
from opdlens.errors import OptionError


def test_mean_sd_is_the_sample_standard_deviation() -> None:
    got = mean_sd([0.40, 0.42, 0.47])
    assert got.mean == pytest.approx(statistics.mean([0.40, 0.42, 0.47]))
    assert got.sd == pytest.approx(statistics.stdev([0.40, 0.42, 0.47]))
    assert got.n == 3 and got.format() == "0.430 ± 0.036"
    one = mean_sd([0.5])
    assert np.isnan(one.sd) and one.format() == "0.500"


def test_bootstrap_matches_a_loop_over_the_same_random_draws() -> None:
    a, b = [0.41, 0.39, 0.45], [0.36, 0.37, 0.35, 0.40]
    got = bootstrap_difference(a, b, samples=2000, seed=7)
    rng = np.random.default_rng(7)
    ia, ib = rng.integers(0, 3, (2000, 3)), rng.integers(0, 4, (2000, 4))
    diffs = [statistics.fmean(a[i] for i in ra) - statistics.fmean(b[i] for i in rb)
             for ra, rb in zip(ia, ib, strict=True)]  # fmt: skip
    assert got.diff == pytest.approx(statistics.fmean(a) - statistics.fmean(b))
    assert (got.low, got.high) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])))
    assert got == bootstrap_difference(a, b, samples=2000, seed=7)  # deterministic
    assert got != bootstrap_difference(a, b, samples=2000, seed=8)


def test_bootstrap_agrees_with_the_exact_bootstrap_distribution() -> None:
    """For n = 3 per group every resample pair is enumerable: 27 × 27 equally likely ones."""
    a, b = [1.0, 2.0, 4.0], [0.0, 0.5, 3.0]
    exact = sorted(
        statistics.fmean(a[i] for i in ra) - statistics.fmean(b[i] for i in rb)
        for ra in itertools.product(range(3), repeat=3)
        for rb in itertools.product(range(3), repeat=3)
    )
    cdf = np.arange(1, len(exact) + 1) / len(exact)
    lo = exact[int(np.searchsorted(cdf, 0.025))]
    hi = exact[int(np.searchsorted(cdf, 0.975))]
    got = bootstrap_difference(a, b, samples=40_000, seed=1)
    assert got.low == pytest.approx(lo, abs=0.2) and got.high == pytest.approx(hi, abs=0.2)


def test_interval_excludes_zero_only_for_separated_groups() -> None:
    apart = bootstrap_difference([1.0, 1.1, 1.2], [0.0, 0.1, 0.2])
    assert apart.excludes_zero and apart.low > 0
    assert re.fullmatch(r"\+1\.000 \[\+0\.\d{3}, \+1\.\d{3}\]", apart.format())
    below = bootstrap_difference([0.0, 0.1, 0.2], [1.0, 1.1, 1.2])
    assert below.excludes_zero and below.high < 0
    overlap = bootstrap_difference([0.0, 1.0, 2.0], [0.5, 1.5, 2.5])
    assert overlap.low < 0 < overlap.high and not overlap.excludes_zero


def test_bootstrap_refuses_groups_it_cannot_resample() -> None:
    with pytest.raises(OptionError, match="at least 2 runs per group.*got 1 and 3"):
        bootstrap_difference([0.4], [0.1, 0.2, 0.3])
    with pytest.raises(OptionError, match="'a' argument of bootstrap_difference must be .*finite"):
        bootstrap_difference([0.4, float("nan")], [0.1, 0.2])
    with pytest.raises(OptionError, match="'level' parameter"):
        bootstrap_difference([0.4, 0.5], [0.1, 0.2], level=95)


def test_bootstrap_mean_is_exact_for_an_enumerable_resampling() -> None:
    """n = 3: all 27 resamples are equally likely; 20,000 draws approach their percentiles."""
    values = [0.98, 1.03, 1.10]
    means = [statistics.fmean(values[i] for i in idx)
             for idx in itertools.product(range(3), repeat=3)]  # fmt: skip
    got = bootstrap_mean(values, samples=20_000, seed=3)
    assert got.mean == pytest.approx(statistics.fmean(values)) and got.n == 3
    # the ends are values of the discrete distribution (each extreme has probability 1/27)
    assert got.low == pytest.approx(np.percentile(means, 2.5, method="inverted_cdf"))
    assert got.high == pytest.approx(np.percentile(means, 97.5, method="inverted_cdf"))
    assert got == bootstrap_mean(values, samples=20_000, seed=3)
    assert got.format() == f"{got.mean:.3f} [{got.low:.3f}, {got.high:.3f}]"


@pytest.mark.parametrize(
    ("values", "kw", "match"),
    [([1.0], {}, "at least 2 values"), ([1.0, float("nan")], {}, "finite numbers"),
     ([1.0, 2.0], {"level": 1.0}, "'level' parameter of bootstrap_mean"),
     ([1.0, 2.0], {"samples": 10}, "'samples' parameter of bootstrap_mean")],
)  # fmt: skip
def test_bootstrap_mean_refuses_bad_input(values, kw, match) -> None:
    with pytest.raises(OptionError, match=match):
        bootstrap_mean(values, **kw)
