"""Analyse a whole run: sweep every tensor, gather rows, time each phase."""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from ..errors import OpdlensError, OptionError
from ..progress import Progress
from ..run import Run
from .cache import FactorCache, step_keys
from .executors import Job, make_iterator
from .frame import build_frame
from .sweep import SweepOptions, rank_notes, sweep_names

log = logging.getLogger(__name__)


@dataclass
class Analysis:
    """The metrics DataFrame with what produced it: options, warnings, timings, cache use."""

    frame: pd.DataFrame
    options: SweepOptions
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    svd_calls: int = 0
    cache_hits: int = 0
    svd_methods: dict[str, int] = field(default_factory=dict)  # SVD calls by method


def _check_ranks(ranks: Sequence[int]) -> tuple[int, ...]:
    try:
        out = tuple(int(k) for k in ranks)
    except (TypeError, ValueError):
        out = ()
    if (
        not out
        or any(k <= 0 for k in out)
        or any(float(k) != float(r) for k, r in zip(out, ranks, strict=True))
    ):
        raise OptionError(
            f"The 'ranks' parameter of analyze must be positive integers. Got {list(ranks)} instead."
        )
    return tuple(sorted(set(out)))


def check_options(
    run: Run | None,
    *,
    ranks: Sequence[int] = (1, 4, 16),
    final: int | None = None,
    workers: int | None = None,
    executor: str = "local",
    address: str | None = None,
    device: str = "cpu",
    **_: object,
) -> tuple[tuple[int, ...], int]:
    """Check analyze's options before anything is created; returns (sorted ranks, workers)."""
    ranks = _check_ranks(ranks)
    if run is not None and final is not None and final not in run.steps:
        raise OpdlensError(f"--final {final} is not a saved step; saved steps are {run.steps}.")
    if device != "cpu" and not device.startswith("cuda"):
        raise OptionError(
            f"The 'device' parameter must be 'cpu' or 'cuda'. Got {device!r} instead."
        )
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise OpdlensError(
            "--device cuda was asked for, but torch sees no CUDA device here; use --device cpu."
        )
    if executor not in ("local", "ray"):
        raise OptionError(
            f"The 'executor' parameter must be 'local' or 'ray'. Got {executor!r} instead."
        )
    if executor == "ray" and importlib.util.find_spec("ray") is None:
        raise OpdlensError(
            "--executor ray needs the ray package, which is not installed here; "
            "`pip install 'opdlens[ray]'` (or `pip install ray`), or use --executor local."
        )
    if address is not None and executor != "ray":
        raise OptionError(
            "The 'address' parameter is for a Ray cluster; pass executor='ray' (CLI: "
            "--executor ray) or drop the address."
        )
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise OptionError(f"The 'workers' parameter must be ≥ 1. Got {workers} instead.")
    return ranks, workers


def run_analysis(
    run: Run,
    *,
    ranks: Sequence[int] = (1, 4, 16),
    final: int | None = None,
    tensors: Sequence[str] | None = None,
    consecutive: bool = False,
    full_spectrum: bool = False,
    split_fused: bool = True,
    workers: int | None = None,
    executor: str = "local",
    address: str | None = None,
    device: str = "cpu",
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> Analysis:
    """Compute design.md's metrics for every (step, tensor) of a run."""
    t0 = time.perf_counter()
    ranks, workers = check_options(
        run, ranks=ranks, final=final, workers=workers, executor=executor, address=address,
        device=device,
    )  # fmt: skip
    options = SweepOptions(ranks, final, consecutive, full_spectrum, split_fused, device)
    names = sweep_names(run, run.select(tensors))
    keys = step_keys(run) if cache_dir is not None else {}
    if cache_dir is not None:
        FactorCache(Path(cache_dir), keys).save_index()
    job = Job(run.open_args, options, None if cache_dir is None else str(cache_dir), keys)
    timings = {"open": time.perf_counter() - t0}
    t1 = time.perf_counter()
    rows: list[dict[str, object]] = []
    warnings = list(run.warnings) + rank_notes(run, names, ranks)
    svd_calls = cache_hits = 0
    svd_methods: dict[str, int] = {}
    bar = Progress(len(names), "analyze", enabled=progress)
    try:
        for _, result in make_iterator(executor, job, names, run, workers, address):
            rows += result.rows
            warnings += result.warnings
            svd_calls += result.svd_calls
            for label, n in result.svd_methods.items():
                svd_methods[label] = svd_methods.get(label, 0) + n
            cache_hits += result.cache_hits
            bar.update()
    finally:
        bar.close()
    timings["sweep"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    frame = build_frame(rows, run.tensor_names, ranks, full_spectrum)
    timings["frame"] = time.perf_counter() - t2
    return Analysis(frame, options, warnings, timings, svd_calls, cache_hits, svd_methods)


def analyze(run: Run, **kwargs: object) -> pd.DataFrame:
    """The metrics DataFrame of a run: one row per (step, tensor[, expert, part])."""
    result = run_analysis(run, **kwargs)  # type: ignore[arg-type]
    result.frame.attrs["warnings"] = result.warnings
    return result.frame
