"""Side inputs of figures and reports: foresight computed from runs, ablations read back or refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from viz.inputs import write_ablation
from viz.runs import write_run

from opdlens import open_run
from opdlens.analysis.foresight import foresee
from opdlens.analysis.foresight_write import write_foresight
from opdlens.analysis.side_inputs import compute_foresight, load_ablation
from opdlens.errors import InputFileError, InputNotFoundError
from opdlens.extrapolation.ablate import Ablation
from opdlens.io.paths import write_marker


@pytest.fixture(scope="module")
def viz_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("side-runs")
    return {"opd": write_run(root / "opd", 0), "rl": write_run(root / "rl", 1)}


@pytest.fixture(scope="module")
def ablation_dir(viz_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ablation(viz_runs["opd"], tmp_path_factory.mktemp("abl") / "opd")


def test_load_ablation_reads_what_ablate_wrote(ablation_dir: Path) -> None:
    got = load_ablation(ablation_dir)
    assert isinstance(got, Ablation)
    want = pd.read_csv(ablation_dir / "ablation.csv")
    assert list(got.ablation["group"]) == list(want["group"])
    assert got.ablation["utility"].to_numpy() == pytest.approx(want["utility"].to_numpy())
    assert list(got.rank_curve["k"]) == [1, 2]


def test_load_ablation_refuses_what_ablate_did_not_finish(
    viz_runs: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(InputNotFoundError, match=r"--ablation .*nope is not a directory"):
        load_ablation(tmp_path / "nope")
    with pytest.raises(InputFileError, match="holds no opdlens ablate output: expected"):
        load_ablation(viz_runs["opd"])
    _, fore = write_foresight(open_run(viz_runs["opd"]), tmp_path / "fore", workers=1)
    with pytest.raises(InputFileError, match=r"holds the output of `opdlens foresee`"):
        load_ablation(fore)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    write_marker(unfinished, "ablate", complete=False)
    with pytest.raises(
        InputFileError, match=r"holds no ablation\.parquet.*\(again, to finish it\)"
    ):
        load_ablation(unfinished)


def test_compute_foresight_is_foresee_per_run_and_says_what_it_skipped(
    viz_runs: dict[str, Path], tmp_path: Path
) -> None:
    run = open_run(viz_runs["opd"])
    for step in (0, 1):  # a run saved once after the base: nothing later to predict
        shutil.copytree(
            viz_runs["rl"] / f"checkpoint-{step}", tmp_path / f"short/checkpoint-{step}"
        )
    short = open_run(tmp_path / "short")
    df, notes = compute_foresight({"OPD": run, "M": None, "S": short}, workers=1)
    want = foresee(run, scopes=("block", "overall"), workers=1).assign(run="OPD")
    pd.testing.assert_frame_equal(df, want)
    assert any(n.startswith("foresight of M skipped: it was given as a metrics directory")
               for n in notes)  # fmt: skip
    assert (
        "foresight of S skipped: it has 1 saved step(s) after the base, foresee needs 2" in notes[1]
    )
    assert compute_foresight({"M": None}) == (None, notes[:1])
