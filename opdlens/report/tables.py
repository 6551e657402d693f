"""The tables a figure set or report leaves beside itself: every run's metrics as drawn, and a
provenance.json saying where each run came from and how it was analysed."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..provenance import record, write_results
from .sources import Sources

__all__ = ["RUN_METRICS", "write_tables"]

RUN_METRICS = "run_metrics"  # run_metrics.parquet / .csv: one row per (run, step, tensor, …)


def write_tables(sources: Sources, out: str | Path, options: Mapping[str, Any]) -> Path:
    """Write run_metrics.parquet and .csv (every run's rows, with a `run` column) and
    provenance.json (the command, `options`, each run's source and analysis provenance) into
    `out`, each atomically; returns the parquet's path."""
    out = Path(out)
    runs = {
        rm.label: {
            "source": str(rm.source),
            "metrics_dir": None if rm.metrics_dir is None else str(rm.metrics_dir),
            "analysis": rm.provenance,
        }
        for rm in sources.runs
    }
    write_results(out, {RUN_METRICS: sources.frame}, record(None, dict(options), runs=runs))
    return out / f"{RUN_METRICS}.parquet"
