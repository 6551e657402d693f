"""Spectra of Δ_T for the figures: from the run (full SVDs) or from an analysis' factor cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from opdlens import OpdlensError, open_run
from opdlens.analysis.spectra import (
    SPECTRA_COLUMNS,
    cached_spectra,
    run_spectra,
    spectra_frame,
    top_matrices,
)
from opdlens.analysis.write import write_analysis


def test_spectra_frame_is_tidy_and_empty_keeps_its_columns() -> None:
    df = spectra_frame({"a": np.array([3.0, 1.0]), "b": np.array([2.0])}, 8, run="opd")
    assert list(df.columns) == SPECTRA_COLUMNS
    assert df[["tensor", "index", "sigma"]].values.tolist() == [
        ["a", 1, 3.0],
        ["a", 2, 1.0],
        ["b", 1, 2.0],
    ]
    assert set(df["run"]) == {"opd"} and set(df["step"]) == {8} and not df["top_k_only"].any()
    assert list(spectra_frame({}, 1).columns) == SPECTRA_COLUMNS


def test_top_matrices_rank_the_final_step_and_sum_parts_on_request() -> None:
    rows = [  # (tensor, part, step, share); stable_rank None marks a vector
        ("qkv", "q", 4, 0.20), ("qkv", "k", 4, 0.15), ("mlp", None, 4, 0.30),
        ("norm", None, 4, 0.90), ("mlp", None, 1, 0.99),
    ]  # fmt: skip
    df = pd.DataFrame(rows, columns=["tensor", "part", "step", "update_share"])
    df["stable_rank"] = [1.0, 1.0, 1.0, None, 1.0]
    assert top_matrices(df, 2, parts=True) == [("mlp", None, None), ("qkv", None, "q")]
    assert top_matrices(df, 2, parts=False) == [("qkv", None, None), ("mlp", None, None)]  # 0.35


@pytest.fixture(scope="module")
def analysed(
    small_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("spectra") / "metrics"
    result, _ = write_analysis(open_run(small_run), out, ranks=(1, 3), workers=1)
    return out, result.frame


def test_run_spectra_are_the_singular_values_of_the_final_update(small_run: Path, analysed) -> None:
    _, df = analysed
    run = open_run(small_run)
    sp = run_spectra(run, df, n=2, label="opd")
    final = run.final_step
    assert set(sp["step"]) == {final} and set(sp["run"]) == {"opd"} and not sp["top_k_only"].any()
    for tensor, _, _ in top_matrices(df, 2, parts=False):
        want = torch.linalg.svdvals(run.delta(tensor, final).double()).numpy()
        np.testing.assert_allclose(sp[sp["tensor"] == tensor]["sigma"], want, rtol=1e-5, atol=1e-9)


def test_cached_spectra_are_the_top_k_the_analysis_kept(small_run: Path, analysed) -> None:
    out, df = analysed
    run = open_run(small_run)
    sp = cached_spectra(out, df, n=3)
    assert sp["top_k_only"].all() and sp.groupby("tensor").size().max() <= 4  # K = 3 (+ σ_4)
    for tensor, group in sp.groupby("tensor"):
        want = torch.linalg.svdvals(run.delta(str(tensor), run.final_step).double()).numpy()
        got = group["sigma"].to_numpy()
        np.testing.assert_allclose(got[:3], want[:3], rtol=1e-4)


def test_cached_spectra_without_a_cache_say_what_to_pass(analysed, tmp_path: Path) -> None:
    _, df = analysed
    (tmp_path / "metrics").mkdir()
    with pytest.raises(OpdlensError, match=r"metrics/cache: no factor cache here \(missing steps\.json\);"
                       r" run `opdlens analyze RUN --out DIR`"):  # fmt: skip
        cached_spectra(tmp_path / "metrics", df)
