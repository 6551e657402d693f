"""write_analysis: the options checked before anything exists, then metrics, provenance, summary."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from opdlens import AnalyzeOptions, OpdlensError, open_run
from opdlens.analysis.frame import summarize
from opdlens.analysis.write import final_summary, write_analysis


def test_the_writer_checks_the_run_before_creating_anything(small_run: Path, tmp_path: Path):
    run = open_run(small_run)
    for bad in ({"final": 3}, {"tensors": ("nothing.*",)}):
        with pytest.raises(OpdlensError):
            write_analysis(run, tmp_path / "out", AnalyzeOptions(workers=1, **bad))
        assert not (tmp_path / "out").exists()
    opts = AnalyzeOptions(ranks=(1, 4), workers=1, tensors=("*.mlp.*",))
    result, _ = write_analysis(run, tmp_path / "out", opts)
    assert result.options is opts
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert prov["options"] == opts.record()  # every option, not only those passed
    assert prov["options"]["tensors"] == ["*.mlp.*"] and "progress" not in prov["options"]


def test_metrics_files_hold_the_frame_and_the_summary_is_the_final_step(
    small_run: Path, tmp_path: Path
) -> None:
    run = open_run(small_run)
    result, summary = write_analysis(run, tmp_path / "out", ranks=(1,), workers=1, consecutive=True)
    df = result.frame
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out" / "metrics.parquet"), df)
    csv = pd.read_csv(tmp_path / "out" / "metrics.csv")
    assert list(csv.columns) == list(df.columns) and len(csv) == len(df)
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert prov["final_step"] == run.final_step and prov["rows"] == len(df)
    assert set(prov["wall_time_s"]) == {"open", "sweep", "frame", "write"}
    final = df[(df["step"] == run.final_step) & (df["span"] == "cumulative")]
    want = summarize(final, by=("block",)).set_index("block")
    assert list(summary.columns) == [
        "block",
        "tensors",
        "update_share",
        "rel_update_norm",
        "energy_k1",
        "changed_frac",
        "changed_frac_tol",
    ]
    assert summary["update_share"].is_monotonic_decreasing
    for row in summary.itertuples():
        assert row.update_share == pytest.approx(want.loc[row.block, "update_share"])
    pd.testing.assert_frame_equal(final_summary(df, run.final_step), summary)
