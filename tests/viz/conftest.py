"""Two tiny Llama-named runs (OPD-like and RL-like) in HF layout, and their analyses, per session."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from opdlens import open_run
from opdlens.analysis.write import write_analysis
from viz.planted import metrics_frame
from viz.runs import write_run


@pytest.fixture(scope="session")
def viz_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """label → run directory."""
    root = tmp_path_factory.mktemp("viz-runs")
    return {label: write_run(root / label, seed) for label, seed in (("opd", 0), ("rl", 1))}


@pytest.fixture(scope="session")
def viz_metrics(viz_runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """label → analysis output directory (metrics.parquet, provenance.json, cache/)."""
    root = tmp_path_factory.mktemp("viz-metrics")
    out = {}
    for label, path in viz_runs.items():
        out[label] = root / f"metrics-{label}"
        write_analysis(open_run(path), out[label], ranks=(1, 4), workers=1)
    return out


@pytest.fixture(scope="module")
def metrics() -> pd.DataFrame:
    """The planted metrics frame of viz.planted (two runs, three layers)."""
    return metrics_frame()
