"""Compare every pair of a group of runs (e.g. seeds), reading each run's tensor once for all pairs."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..devices import ieee_float32, out_of_memory_as_error, prepare
from ..errors import OptionError
from ..progress import Progress
from .compare import (
    CompareOptions,
    Comparison,
    Pair,
    PairPlan,
    assemble,
    base_refusal,
    overlap_rows,
    plan_pair,
    run_label,
    thread_map,
)  # fmt: skip
from .overlap import FactorMemo, Side, TensorOverlap, update_and_mask
from .sparsity import sparsity_view
from .sweep import skip_reason
from .update import read_stored

if TYPE_CHECKING:
    import pandas as pd

    from ..run import Run

PairKey = tuple[int, int]  # (i, j), i < j: indices into the group


def group_tensor(
    runs: Sequence[Run], plans: dict[PairKey, PairPlan], options: CompareOptions, name: str
) -> dict[PairKey, TensorOverlap]:
    """Rows of one tensor for every pair that holds it: each (run, step) read once, W_0 once
    per distinct base, and each update's top-K factors computed once per slice (n SVDs, not
    n(n − 1)), so n runs hold n updates (and masks where Δ does not mark the changes) at
    once instead of reading n − 1 times."""
    pairs = [p for p, plan in plans.items() if name in plan.names]
    out = {p: TensorOverlap(name) for p in pairs}
    skips = {i: skip_reason(runs[i], name) for p in pairs for i in p}
    live = []
    for p in pairs:
        skip = skips[p[0]] or skips[p[1]]
        if skip is not None:
            out[p].warnings.append(skip)
        else:
            live.append(p)
    if not live:
        return out
    info = runs[live[0][0]].module(name)
    bases: dict[object, tuple[torch.Tensor, bytes]] = {}  # base path → W_0 and its digest
    kept: dict[bytes, torch.Tensor] = {}  # digest → the one W_0 of those bytes
    for i in sorted({i for p in live for i in p}):
        path = runs[i].base.path
        if path not in bases:
            w, h = read_stored(runs[i].base, name)
            bases[path] = (kept.setdefault(h, w), h)  # equal bytes: one tensor
            del w
    readable = []
    for p in live:
        ha, hb = (bases[runs[i].base.path][1] for i in p)
        out[p].base_differs = ha != hb
        if not out[p].base_differs or options.allow_different_base:
            readable.append(p)
    with out_of_memory_as_error(f"tensor '{name}'"):
        view = sparsity_view(options.sparsity_dtype)
        read: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor | None, bytes]] = {}
        for p in readable:
            for i, step in zip(p, plans[p].steps, strict=True):
                if (i, step) not in read:
                    w0, h0 = bases[runs[i].base.path]
                    read[(i, step)] = update_and_mask(
                        Side(runs[i], step), name, w0, h0, info, options.sparsity_tol, view
                    )
                    del w0
        del bases, kept  # W_0 is freed before the pairs' SVDs
        memos: dict[tuple[int, int], FactorMemo] = {key: {} for key in read}
        for p in readable:  # each update's top-K factors are computed once, for its first pair
            (i, j), (sa, sb) = p, plans[p].steps
            (da, ma, src_a), (db, mb, src_b) = read[(i, sa)], read[(j, sb)]
            pair = Pair(Side(runs[i], sa), Side(runs[j], sb), False, options)
            overlap_rows(out[p], pair, info, (da, db), (ma, mb), (src_a, src_b),
                         (memos[(i, sa)], memos[(j, sb)]))  # fmt: skip
    return out


@ieee_float32()
def compute_group(
    runs: Sequence[Run], options: CompareOptions, *, progress: bool = False
) -> Comparison:
    """The compare tables of every pair of `runs`, stacked with `pair`, `run_a`, `run_b` first.

    Raises:
        OptionError: fewer than two runs, a factor cache, or a step a run did not save.
        CheckpointError: two runs' bases differ (and not `allow_different_base`).
    """
    import pandas as pd

    if len(runs) < 2:
        raise OptionError(f"A group to compare needs at least two runs. Got {len(runs)}.")
    if options.cache_a is not None or options.cache_b is not None:
        raise OptionError("cache_a / cache_b (--cache-a/--cache-b) are for two runs, not a group.")
    t0 = time.perf_counter()
    plans = {
        p: plan_pair(runs[p[0]], runs[p[1]], options)
        for p in itertools.combinations(range(len(runs)), 2)
    }
    names = list(dict.fromkeys(n for plan in plans.values() for n in plan.names))
    prepare(options.device)
    found: dict[PairKey, dict[str, TensorOverlap]] = {p: {} for p in plans}
    bar = Progress(len(names), "compare", enabled=progress)
    try:
        fn = lambda n: group_tensor(runs, plans, options, n)  # noqa: E731
        for res in thread_map(fn, names, options.worker_count):
            for p, got in res.items():
                if got.base_differs and not options.allow_different_base:
                    a, b = (runs[i] for i in p)
                    raise base_refusal(a, b, f"the first differing tensor found is '{got.name}'")
                found[p][got.name] = got
            bar.update()
    finally:
        bar.close()
    frames, steps, warnings, svd_calls = [], [], [], 0
    for (i, j), plan in plans.items():
        one = assemble(plan, found[(i, j)], options, t0)
        f = one.frame
        f.insert(0, "run_b", run_label(runs[j]))
        f.insert(0, "run_a", run_label(runs[i]))
        f.insert(0, "pair", f"{i}-{j}")
        frames.append(f)
        steps += one.steps
        svd_calls += one.svd_calls
        warnings += [f"pair {i}-{j}: {w}" for w in one.warnings]
    t1 = time.perf_counter()
    frame = pd.concat(frames, ignore_index=True)
    timings = {"sweep": t1 - t0, "frame": time.perf_counter() - t1}
    return Comparison(frame, options, steps, warnings, timings, svd_calls)


def compare_group(
    runs: Sequence[Run], options: CompareOptions | None = None, *, progress: bool = False,
    **overrides: Any,
) -> pd.DataFrame:  # fmt: skip
    """`compare` for every pair of a group of runs (e.g. seeds), with pair, run_a, run_b columns."""
    result = compute_group(runs, CompareOptions.build(options, overrides), progress=progress)
    result.frame.attrs["warnings"] = result.warnings
    return result.frame
