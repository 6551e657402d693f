"""report/tables: every run's metrics and their provenance beside a figure set or report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.numpy import load_file
from viz.runs import write_run

from opdlens.analysis.options import AnalyzeOptions
from opdlens.report import SourceOptions, load_sources
from opdlens.report.tables import write_tables


def test_tables_hold_every_run_and_where_it_came_from(tmp_path: Path) -> None:
    runs = [write_run(tmp_path / name, seed) for name, seed in (("a", 0), ("b", 1))]
    options = SourceOptions(tuple(runs), ("A", "B"), analyze=AnalyzeOptions(ranks=(1,), workers=1),
                            spectra=0, foresight=False)  # fmt: skip
    src = load_sources(options, tmp_path / "out")
    path = write_tables(src, tmp_path / "out", {"labels": ["A", "B"]})
    df = pd.read_parquet(path)
    assert path.name == "run_metrics.parquet" and (tmp_path / "out" / "run_metrics.csv").is_file()
    assert list(pd.unique(df["run"])) == ["A", "B"]
    # The relative update norm of run B at its last step, against numpy on its files.
    last = int(df["step"].max())
    w0 = load_file(str(runs[1] / "checkpoint-0" / "model.safetensors"))
    wt = load_file(str(runs[1] / f"checkpoint-{last}" / "model.safetensors"))
    rows = df[(df["run"] == "B") & (df["step"] == last)].set_index("tensor")
    for name, rel in rows["rel_update_norm"].items():
        d = wt[name].astype(np.float64) - w0[name].astype(np.float64)
        expect = np.linalg.norm(d) / np.linalg.norm(w0[name].astype(np.float64))
        assert abs(rel - expect) <= 1e-5 * expect
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert prov["options"] == {"labels": ["A", "B"]}
    assert prov["runs"]["A"]["source"] == str(runs[0]) and prov["runs"]["A"]["metrics_dir"] is None
    assert prov["runs"]["B"]["analysis"]["final_step"] == last
