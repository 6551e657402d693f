"""Side inputs of figures and reports: foresight computed from runs, ablations read back or refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from viz.inputs import write_ablation
from viz.online import write_candidates, write_online_json
from viz.runs import write_run

from opdlens import open_run
from opdlens.analysis.foresight import foresee
from opdlens.analysis.foresight_write import write_foresight
from opdlens.errors import InputFileError, InputNotFoundError
from opdlens.extrapolation.ablate import Ablation
from opdlens.extrapolation.callback import CANDIDATE_COLUMNS, candidate_rows
from opdlens.io.paths import write_marker
from opdlens.report.side_inputs import (
    CANDIDATES_FILE,
    compute_foresight,
    find_online_effopd,
    load_ablation,
    load_online_effopd,
)


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
    assert got.ablation.attrs["scorer"] == "mlp_energy" and got.ablation.attrs["oracle"] is False


def test_load_ablation_takes_the_scorer_from_provenance(ablation_dir: Path, tmp_path: Path) -> None:
    """pandas before 2.1 writes no attrs into Parquet: the scorer's name is read from
    provenance.json, not from the table."""
    copy = shutil.copytree(ablation_dir, tmp_path / "abl")
    table = pd.read_parquet(copy / "ablation.parquet")
    table.attrs.clear()
    table.to_parquet(copy / "ablation.parquet")
    assert pd.read_parquet(copy / "ablation.parquet").attrs == {}
    assert load_ablation(copy).ablation.attrs["scorer"] == "mlp_energy"


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


def test_load_online_effopd_reads_the_callbacks_csv_and_the_demos_json(tmp_path: Path) -> None:
    rows = write_candidates(tmp_path / CANDIDATES_FILE)
    got = load_online_effopd(tmp_path / CANDIDATES_FILE, "OPD")
    assert got.label == "OPD" and got.comparison == {}
    assert list(got.candidates.columns) == list(CANDIDATE_COLUMNS)
    assert got.candidates["step"].tolist() == [r["step"] for r in rows]
    assert got.candidates["accepted"].tolist() == [r["accepted"] for r in rows]
    assert got.candidates["score"].to_numpy() == pytest.approx([r["score"] for r in rows])
    record = write_online_json(tmp_path / "online_effopd.json")
    demo = load_online_effopd(tmp_path / "online_effopd.json", "demo")
    tried = [r for rec in record["history"] for r in candidate_rows(rec)]
    assert len(demo.candidates) == len(tried) > 0
    assert demo.candidates["alpha"].to_numpy() == pytest.approx([r["alpha"] for r in tried])
    assert demo.comparison["plain_steps_to_target"] == 10
    assert demo.comparison["start_accuracy"] == 0.1  # the plain curve's step 0
    # Discovered where EffOPDCallback leaves it: in the run directory.
    assert [o.label for o in find_online_effopd([("A", tmp_path), ("B", tmp_path / "x")])] == ["A"]


def test_load_online_effopd_refuses_other_files(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match=r"missing.csv is not a file: expected an"):
        load_online_effopd(tmp_path / "missing.csv", "A")
    (tmp_path / "other.csv").write_text("step,loss\n1,2\n")
    with pytest.raises(InputFileError, match=r"not a candidates CSV of EffOPDCallback"):
        load_online_effopd(tmp_path / "other.csv", "A")
    (tmp_path / "other.json").write_text('{"history": []}')
    with pytest.raises(InputFileError, match=r"not the demo's online_effopd.json: it lacks"):
        load_online_effopd(tmp_path / "other.json", "A")
