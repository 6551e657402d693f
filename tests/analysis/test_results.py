"""What figures and reports load: labels, metrics, replay history, extrapolation errors, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from opdlens import InputFileError, InputNotFoundError, OptionError, open_run
from opdlens.analysis.results import (
    checkpoint_table,
    is_metrics_dir,
    load_errors,
    load_history,
    load_metrics,
)
from opdlens.analysis.write import write_analysis
from opdlens.report import SourceOptions, load_sources


@pytest.fixture(scope="module")
def metrics(small_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("results") / "metrics-OPD"
    write_analysis(open_run(small_run), out, ranks=(1,), workers=1, consecutive=True)
    return out


def test_a_metrics_directory_loads_with_its_checkpoints_from_provenance(
    metrics: Path, small_run: Path, tmp_path: Path
) -> None:
    assert is_metrics_dir(metrics) and not is_metrics_dir(small_run)
    df = load_metrics(metrics)
    assert set(df["run"]) == {"OPD"} and set(df["span"]) == {"cumulative"}  # consecutive dropped
    src = load_sources(SourceOptions((metrics,), spectra=0), tmp_path / "out")
    (rm,) = src.runs
    assert rm.run is None and rm.final_step == open_run(small_run).final_step
    table, warnings = checkpoint_table(rm)
    assert table["step"].tolist() == [0, 1, 2, 4] and warnings == []
    assert table["bytes"].tolist() == [
        (small_run / f"checkpoint-{s}" / "model.safetensors").stat().st_size for s in (0, 1, 2, 4)
    ]
    assert rm.summary["update_share"].sum() == pytest.approx(1.0)
    assert not (tmp_path / "out").exists()  # nothing analysed, nothing written


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (None, r"have the same directory names \['OPD', 'OPD'\]; name them with --labels"),
        (["A"], r"--labels names 1 run\(s\) \(A\) but 2 were given"),
        (["A", "A"], r"--labels must be distinct names"),
        (["A", "B/C"], r"--labels must be distinct names of letters, digits"),
    ],
)
def test_labels_must_name_each_run_once(metrics: Path, tmp_path: Path, labels, message) -> None:
    twin = Path(shutil.copytree(metrics, tmp_path / "elsewhere" / metrics.name))
    with pytest.raises(OptionError, match=message):
        given = None if labels is None else tuple(labels)
        load_sources(SourceOptions((metrics, twin), given, spectra=0), tmp_path / "out")


def test_checkpoints_go_with_a_run_not_a_metrics_directory(metrics: Path, tmp_path: Path) -> None:
    with pytest.raises(OptionError, match=r"--checkpoint adds checkpoints to a run directory"):
        load_sources(SourceOptions((metrics,), checkpoints={8: tmp_path}, spectra=0), tmp_path)
    with pytest.raises(InputNotFoundError, match=r"nowhere does not exist: expected a run"):
        load_sources(SourceOptions((tmp_path / "nowhere",)), tmp_path)


def test_an_unreadable_side_file_is_named(metrics: Path, tmp_path: Path) -> None:
    broken = tmp_path / "metrics-X"
    broken.mkdir()
    (broken / "metrics.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputFileError, match=r"metrics\.parquet cannot be read as the metrics"):
        load_metrics(broken)
    (broken / "metrics.parquet").unlink()
    shutil.copy(metrics / "metrics.parquet", broken)
    (broken / "provenance.json").write_text("[1, 2]")
    with pytest.raises(InputFileError, match=r"provenance\.json holds a JSON list, expected"):
        load_sources(SourceOptions((broken,), spectra=0), tmp_path / "out")


def test_replay_history_carries_its_scorer_and_note(tmp_path: Path) -> None:
    pd.DataFrame({"step": [1, 2], "accepted": [True, False]}).to_csv(tmp_path / "history.csv")
    meta = {"scorer": "hindsight", "oracle": True, "note": "offline", "other": 1}
    (tmp_path / "history.json").write_text(json.dumps(meta))
    history = load_history(tmp_path)
    assert len(history) == 2 and history.attrs == {"scorer": "hindsight", "oracle": True,
                                                   "note": "offline"}  # fmt: skip
    with pytest.raises(
        InputNotFoundError, match=r"none does not exist: --replay takes the --out directory"
    ):
        load_history(tmp_path / "none")


def test_extrapolation_errors_keep_overall_rows_of_one_step_and_anchor(tmp_path: Path) -> None:
    def errors(name: str, alpha: float, step: int = 4) -> Path:
        rows = {"scope": ["tensor", "overall"], "alpha": alpha, "step": step, "anchor": 2,
                "target_step": 8, "rel_error": [0.3, 0.5]}  # fmt: skip
        pd.DataFrame(rows).to_csv(tmp_path / name, index=False)
        return tmp_path / name

    df = load_errors([errors("a.csv", 1.0), errors("b.csv", 2.0)])
    assert df["alpha"].tolist() == [1.0, 2.0] and (df["scope"] == "overall").all()
    with pytest.raises(OptionError, match=r"from 2 different \(step, anchor\) pairs"):
        load_errors([errors("a.csv", 1.0), errors("c.csv", 1.0, step=8)])
    pd.DataFrame({"alpha": [1.0]}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(InputFileError, match=r"lack \['target_step', 'rel_error'\]"):
        load_errors([tmp_path / "d.csv"])
