"""Step-at-a-time analysis (what `opdlens watch` appends) against a whole-run `analyze`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from incremental_reference import assert_equals_analyze

import opdlens
from opdlens.analysis.foresight import foresee
from opdlens.analysis.incremental import (
    align_latest,
    alignment_with,
    analyse_step,
    foresight_step,
    is_provisional,
)
from opdlens.analysis.options import AnalyzeOptions

RANKS = (1, 4)


def _stepwise(run: opdlens.Run, cache: Path, steps: list[int]) -> pd.DataFrame:
    opts = AnalyzeOptions(ranks=RANKS, workers=1)
    frames, paths = [], {}
    for step in steps:
        paths[step] = str(run.checkpoint(step).path)
        frames.append(analyse_step(run, step, opts, cache, paths).frame)
    return align_latest(pd.concat(frames, ignore_index=True), cache, paths, RANKS)


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_stepwise_rows_equal_a_whole_run_analysis(hf_run, tmp_path: Path, arch: str) -> None:
    run = opdlens.open_run(hf_run(arch))
    got = _stepwise(run, tmp_path / "cache", run.steps)
    assert_equals_analyze(got, opdlens.analyze(run, ranks=RANKS, workers=1), RANKS)


def test_align_latest_against_numpy_svds(hf_run, tmp_path: Path) -> None:
    run = opdlens.open_run(hf_run("llama"))
    steps = run.steps[:2]  # the run is still "training": its latest step is not the final one
    got = _stepwise(run, tmp_path / "cache", steps)
    assert [c for c in got.columns if is_provisional(c)]
    latest = steps[-1]
    name = "model.layers.0.mlp.down_proj.weight"
    for step in steps:
        d = run.delta(name, step).double().numpy()
        d_latest = run.delta(name, latest).double().numpy()
        u, _, vt = np.linalg.svd(d)
        u2, _, vt2 = np.linalg.svd(d_latest)
        row = got[(got["tensor"] == name) & (got["step"] == step)].iloc[0]
        for k in RANKS:
            left = np.linalg.norm(u[:, :k].T @ u2[:, :k]) ** 2 / k
            right = np.linalg.norm(vt[:k] @ vt2[:k].T) ** 2 / k
            assert row[f"align_latest_left_k{k}"] == pytest.approx(left, abs=1e-2)
            assert row[f"align_latest_right_k{k}"] == pytest.approx(right, abs=1e-2)


def test_alignment_is_nan_where_factors_are_missing(hf_run, tmp_path: Path) -> None:
    run = opdlens.open_run(hf_run("llama"))
    cache = tmp_path / "cache"
    got = _stepwise(run, cache, run.steps[:1])
    values = alignment_with(got, cache, {}, 999, (1,))  # no step 999 cached
    assert np.isnan(values["left_k1"]).all() and np.isnan(values["right_k1"]).all()


def test_foresight_step_equals_foresee_with_the_previous_anchor(hf_run) -> None:
    run = opdlens.open_run(hf_run("llama"))
    steps = run.steps
    assert foresight_step(run, steps[:1], AnalyzeOptions(workers=1)) is None
    ref = foresee(run, anchor="previous", scopes=("overall",), alphas=(1.0,), workers=1)
    ref = ref[ref["alpha_kind"] == "optimal"]
    for n in range(2, len(steps) + 1):
        got = foresight_step(run, steps[:n], AnalyzeOptions(workers=1))
        assert got is not None
        t, newest = steps[n - 2], steps[n - 1]
        a = steps[n - 3] if n > 2 else 0
        assert (got["step"], got["anchor"], got["target_step"]) == (t, a, newest)
        want = ref[(ref["step"] == t) & (ref["anchor"] == a) & (ref["target_step"] == newest)]
        assert got["alpha_star"] == pytest.approx(float(want["alpha"].iloc[0]), rel=1e-9)
        assert got["rel_error"] == pytest.approx(float(want["rel_error"].iloc[0]), rel=1e-9)
