"""Analyse a whole run: sweep every tensor, gather rows, time each phase."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checkpoint import is_lora
from ..errors import OpdlensError
from ..progress import Progress
from .cache import FactorCache, cache_directory, step_keys
from .changes import lora_note
from .cluster import ray_session
from .executors import Job, make_iterator
from .frame import build_frame
from .options import AnalyzeOptions
from .sparsity import check_view_of
from .sweep import rank_notes, skip_reason, sweep_names

if TYPE_CHECKING:
    import pandas as pd

    from ..run import Run

log = logging.getLogger(__name__)


@dataclass
class Analysis:
    """The metrics DataFrame with what produced it: options, warnings, timings, cache use."""

    frame: pd.DataFrame
    options: AnalyzeOptions
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    svd_calls: int = 0
    cache_hits: int = 0
    svd_methods: dict[str, int] = field(default_factory=dict)  # SVD calls by method
    base_donors: list[str] = field(default_factory=list)  # caches read for W_0's factors


def analyze(
    run: Run,
    options: AnalyzeOptions | None = None,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    base_donors: Sequence[str | Path] = (),
    **overrides: Any,
) -> pd.DataFrame:
    """The metrics of design.md for every (step, tensor[, expert, part]) as a tidy DataFrame.

    `options` (default: `AnalyzeOptions()`) with any of its fields replaced by keyword, e.g.
    ``analyze(run, ranks=(1, 4), workers=1)``; the run's and the sweep's warnings are in
    ``frame.attrs["warnings"]``. `cache_dir` keeps the top-K factors there for a later call;
    `base_donors` (with `base_geometry`) are earlier analyses' caches of runs that may share the
    base: W_0's factors found there for the same base bytes are reused (`compute_analysis`).

    `workers` threads of this process sweep the tensors (default: one per core; 1 sweeps in
    the calling thread), each on 1 BLAS thread; torch's thread count is restored afterwards.
    Nothing re-runs your `__main__`, so this works as typed in a notebook, a script without an
    `if __name__ == "__main__":` guard, `python -` (stdin) and `python -c`. Ctrl-C stops the
    whole sweep at once.

    Raises:
        OptionError: a bad option, named (see `AnalyzeOptions`).
        OpdlensError: `final` is not a saved step, or no tensor matches `tensors`.
    """
    opts = AnalyzeOptions.build(options, overrides)
    result = compute_analysis(
        run, opts, cache_dir=cache_dir, progress=progress, base_donors=base_donors
    )
    result.frame.attrs["warnings"] = result.warnings
    return result.frame


def check_analysable(run: Run, options: AnalyzeOptions) -> None:
    """`options.check_run`, and refuse a run whose selected tensors would all be skipped.

    Raises:
        OpdlensError: as check_run, or every selected tensor is an integer or boolean buffer or
            has no elements ("Nothing to analyse"), before any output exists.
    """
    options.check_run(run)
    names = run.select(options.tensors)
    reasons = [skip_reason(run, n) for n in names]  # headers only
    if all(reasons):
        raise OpdlensError(
            f"Nothing to analyse in {run.base.path.parent}: each of its {len(names)} selected "
            f"tensor(s) is skipped, e.g. {reasons[0]} Analyse a run with floating-point "
            "weights, or choose other --tensors."
        )
    if options.sparsity_dtype is not None:
        check_views(run, [n for n, r in zip(names, reasons, strict=True) if r is None],
                    options.sparsity_dtype)  # fmt: skip


def check_views(run: Run, names: Sequence[str], sparsity_dtype: str) -> None:
    """Refuse a sparsity_dtype wider than any of `names` as stored at the base or a step.

    Raises:
        OptionError: naming the first tensor and file where it is wider (headers only).
    """
    for ck in (run.base, *(run.checkpoint(s) for s in run.steps)):
        if is_lora(ck.source):
            continue  # a LoRA step stores no dense weights: it has no changed_frac
        for name in names:
            check_view_of(sparsity_dtype, ck.spec(name).stored, name, ck.path)


def compute_analysis(
    run: Run,
    options: AnalyzeOptions,
    *,
    cache_dir: str | Path | None = None,
    cache_steps: Mapping[int, str] | None = None,
    progress: bool = False,
    base_donors: Sequence[str | Path] = (),
) -> Analysis:
    """The metrics of every (step, tensor) of a run, with the warnings, timings and SVD counts.

    `cache_steps`: the steps whose cached factors are kept (default: the run's); a cache
    drops the entries of steps no longer listed. `base_donors`: other analyses' output or cache
    directories, only read (one that does not exist is passed over): with `base_geometry`,
    W_0's factors found there for the same base bytes are reused (a cache hit) instead of
    decomposing W_0 again, and kept in this cache.
    """
    t0 = time.perf_counter()
    check_analysable(run, options)
    names = sweep_names(run, run.select(options.tensors))
    keys: dict[int, str] = {}
    if cache_dir is not None:
        keys = dict(cache_steps) if cache_steps is not None else step_keys(run)
    if cache_dir is not None:
        FactorCache(Path(cache_dir), keys).save_index()
    donors = tuple(str(cache_directory(Path(d))) for d in base_donors)
    job = Job(run, options, None if cache_dir is None else str(cache_dir), keys, donors=donors)
    timings = {"open": time.perf_counter() - t0}
    t1 = time.perf_counter()
    rows: list[dict[str, object]] = []
    warnings = list(run.warnings) + rank_notes(run, names, options.ranks)
    svd_calls = cache_hits = factored = 0
    svd_methods: dict[str, int] = {}
    bar = Progress(len(names), "analyze", enabled=progress)
    try:
        with ray_session(options):
            for _, result in make_iterator(job, names):
                rows += result.rows
                warnings += result.warnings
                svd_calls += result.svd_calls
                for label, n in result.svd_methods.items():
                    svd_methods[label] = svd_methods.get(label, 0) + n
                cache_hits += result.cache_hits
                factored += result.factored
                bar.update()
    finally:
        bar.close()
    if factored:
        warnings.append(lora_note(factored))
    timings["sweep"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    frame = build_frame(
        rows, run.tensor_names, options.ranks, options.full_spectrum, options.base_geometry
    )
    timings["frame"] = time.perf_counter() - t2
    return Analysis(frame, options, warnings, timings, svd_calls, cache_hits, svd_methods,
                    list(donors))  # fmt: skip
