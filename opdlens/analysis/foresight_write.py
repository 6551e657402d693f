"""Write foresee's outputs: foresight.parquet, foresight.csv, effopd_schedule.csv, provenance.json."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io.paths import check_output, output_dir
from ..provenance import record, write_results
from .foresight import effopd_comparison, foresee, foresight_sentence

if TYPE_CHECKING:
    import pandas as pd

    from ..run import Run

__all__ = ["FILES", "write_foresight"]

FILES = ("foresight.parquet", "foresight.csv", "effopd_schedule.csv", "provenance.json")


def write_foresight(
    run: Run, out: str | Path, *, overwrite: bool = False, progress: bool = False, **options: Any
) -> tuple[pd.DataFrame, Path]:
    """Run `foresee(run, **options)` and write its tables under `out` (never inside an input).

    `out` must be absent, empty, or (with `overwrite`) a directory opdlens wrote; it is checked
    before any work. Returns the frame and the directory.
    """
    check_output(out, inputs=run.input_paths, overwrite=overwrite, allow_empty=True)
    t0 = time.perf_counter()
    df = foresee(run, progress=progress, **options)
    seconds = time.perf_counter() - t0
    schedule = effopd_comparison(df)
    with output_dir(
        out, "foresee", inputs=run.input_paths, overwrite=overwrite, reuse=False
    ) as path:
        shown = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}
        prov = record(
            run, shown, steps=run.steps, rows=len(df), warnings=df.attrs.get("warnings", []),
            sentence=foresight_sentence(df), wall_time_s=seconds,
            alpha_kind={"grid": "each --alphas value", "optimal": "alpha* of the scope (closed "
                        "form)", "effopd": "candidate k of EffOPD's schedule; alpha holds its "
                        "cumulative multiple of theta_t - theta_a"},
        )  # fmt: skip
        tables = {"foresight": df, "effopd_schedule": schedule}
        write_results(path, tables, prov, csv_only={"effopd_schedule"})
    return df, path
