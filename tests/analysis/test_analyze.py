"""opdlens.analyze and compute_analysis: options and overrides, refusals, timings, the factor cache."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import opdlens
from opdlens import AnalyzeOptions, OpdlensError, OptionError, open_run
from opdlens.analysis.analyze import compute_analysis


def test_analyze_takes_options_and_keyword_overrides(small_run: Path) -> None:
    run = open_run(small_run)
    opts = AnalyzeOptions(ranks=(1, 4), workers=1)
    df = opdlens.analyze(run, opts)
    assert {"energy_k1", "energy_k4"} <= set(df.columns) and "energy_k16" not in df.columns
    pd.testing.assert_frame_equal(df, opdlens.analyze(run, opts))
    pd.testing.assert_frame_equal(df, opdlens.analyze(run, ranks=(1, 4), workers=1))
    # A keyword replaces that field of the options given, the others stay.
    assert set(opdlens.analyze(run, opts, ranks=(2,))["span"]) == {"cumulative"}
    assert "energy_k2" in opdlens.analyze(run, opts, ranks=(2,)).columns
    with_consecutive = opdlens.analyze(run, opts, consecutive=True)
    assert set(with_consecutive["span"]) == {"cumulative", "consecutive"}
    assert isinstance(df.attrs["warnings"], list)


def test_analyze_names_what_it_cannot_take(small_run: Path) -> None:
    run = open_run(small_run)
    with pytest.raises(OptionError, match=r"no option 'rank' \(did you mean 'ranks'\?\)"):
        opdlens.analyze(run, rank=(1,))
    with pytest.raises(OptionError, match=r"must be an AnalyzeOptions or None. Got tuple \(1, 4\)"):
        opdlens.analyze(run, (1, 4))  # type: ignore[arg-type]
    with pytest.raises(OpdlensError, match="--final 3 is not a saved step"):
        opdlens.analyze(run, final=3, workers=1)
    with pytest.raises(OpdlensError, match="No tensor matches"):
        opdlens.analyze(run, tensors=["nothing.*"], workers=1)


def test_a_second_analysis_reads_its_factors_from_the_cache(
    small_run: Path, tmp_path: Path
) -> None:
    run = open_run(small_run)
    opts = AnalyzeOptions(ranks=(1, 4), workers=1)
    first = compute_analysis(run, opts, cache_dir=tmp_path / "cache")
    assert first.svd_calls > 0 and first.cache_hits == 0
    assert sum(first.svd_methods.values()) == first.svd_calls
    assert set(first.timings) == {"open", "sweep", "frame"} and first.options is opts
    again = compute_analysis(open_run(small_run), opts, cache_dir=tmp_path / "cache")
    assert again.svd_calls == 0 and again.cache_hits == first.svd_calls
    pd.testing.assert_frame_equal(again.frame, first.frame)
    uncached = compute_analysis(run, opts)
    assert uncached.svd_calls == first.svd_calls  # no cache_dir: nothing is reused
