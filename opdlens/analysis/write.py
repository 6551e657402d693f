"""Write an analysis to a directory: metrics.parquet, metrics.csv, provenance.json and the cache."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io.paths import output_dir
from ..provenance import record, write_results
from .analyze import Analysis, check_analysable, compute_analysis
from .cluster import ray_session
from .frame import summarize
from .options import AnalyzeOptions

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd

    from ..run import Run


def final_summary(df: pd.DataFrame, final: int) -> pd.DataFrame:
    """Update share, energy_k and changed_frac by block at the final step (cumulative update)."""
    sub = df[(df["step"] == final) & (df["span"] == "cumulative")]
    s = summarize(sub, by=("block",))
    cols = ["block", "tensors", "update_share", "rel_update_norm"] + [
        c for c in s.columns if c.startswith("energy_k")
    ]
    cols += [c for c in ("changed_frac", "changed_frac_tol") if c in s.columns]
    return s[cols].sort_values("update_share", ascending=False)


def write_analysis(
    run: Run,
    out: str | Path,
    options: AnalyzeOptions | None = None,
    *,
    progress: bool = False,
    base_donors: Sequence[str | Path] = (),
    **overrides: Any,
) -> tuple[Analysis, pd.DataFrame]:
    """Analyse ``run`` and write its outputs under ``out`` (never inside an input).

    Options as `opdlens.analyze` takes them. ``out`` may be absent, empty, or a directory opdlens
    wrote (its factor cache is re-used); the options are checked before anything is created
    (see `opdlens.io.paths.output_dir`). `base_donors`: as `opdlens.analyze`'s, recorded in
    the provenance as `base_from`. Returns the analysis and `final_summary` of it.
    """
    opts = AnalyzeOptions.build(options, overrides)
    check_analysable(run, opts)
    with ray_session(opts), output_dir(out, "analyze", inputs=run.input_paths) as path:
        return _write(run, path, opts, progress, base_donors)


def _write(
    run: Run, out: Path, options: AnalyzeOptions, progress: bool, donors: Sequence[str | Path]
) -> tuple[Analysis, pd.DataFrame]:
    result = compute_analysis(
        run, options, cache_dir=out / "cache", progress=progress, base_donors=donors
    )
    t = time.perf_counter()

    def provenance() -> dict[str, Any]:
        result.timings["write"] = time.perf_counter() - t
        return analysis_record(run, result)

    write_results(out, {"metrics": result.frame}, provenance)
    return result, final_summary(result.frame, result.options.final_step(run))


def analysis_record(run: Run, result: Analysis) -> dict[str, Any]:
    """The provenance of an analysis: inputs, options, final step, warnings, timings, SVD use."""
    return record(
        run, result.options.record(), final_step=result.options.final_step(run),
        steps=run.steps, rows=len(result.frame), warnings=result.warnings,
        wall_time_s=result.timings, svd_calls=result.svd_calls, cache_hits=result.cache_hits,
        svd_methods=result.svd_methods, base_from=result.base_donors,
    )  # fmt: skip
