"""Compare two runs from the same base: overlap of their changed weights and of their updates."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from ..devices import check_device, ieee_float32, out_of_memory_as_error, prepare
from ..errors import CheckpointError, FusedSplitError, OptionError
from ..progress import Progress
from .analyze import check_views
from .cache import CachedFactors, FactorCache, TensorCache, content_key
from .compare_frame import SCOPES, build_frame
from .options import check_ranks, check_sparsity_dtype, check_tol
from .overlap import (
    Cached,
    FactorMemo,
    Factors,
    Keep,
    Side,
    TensorOverlap,
    slice_row,
    update_and_mask,
)  # fmt: skip
from .sparsity import sparsity_view
from .sweep import Slice, skip_reason, slices_of
from .update import digest, read_stored

if TYPE_CHECKING:
    import pandas as pd

    from ..names import ModuleInfo
    from ..run import Run

T = TypeVar("T")


@dataclass(frozen=True)
class CompareOptions:
    """Every option of `opdlens.compare`, checked once when built (a bad value names itself)."""

    ranks: Sequence[int] = (1, 4, 16)  # K of subspace_{left,right}_k{K}; kept sorted
    step_a: int | None = None  # run A's step (default: its last)
    step_b: int | None = None  # run B's step (default: its last)
    sparsity_tol: float | None = None  # None: changed as stored; τ: changed where |Δ| > τ
    sparsity_dtype: str | None = None  # changed as a checkpoint in this dtype would store it
    scopes: Sequence[str] = SCOPES  # which rows: per tensor, per block, per layer, overall
    split_fused: bool = True  # fused qkv / gate_up tensors per logical part, as analyze
    workers: int | None = None  # worker threads; None is one per core, 1 runs inline
    device: str = "cpu"  # where the SVDs and inner products run
    allow_different_base: bool = False  # compare runs whose bases differ (with a warning)
    cache_a: str | Path | None = None  # an analyze output (or its cache/) of run A: factors reused
    cache_b: str | Path | None = None  # the same for run B

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalised values are set once, here
        set_(self, "ranks", check_ranks(self.ranks, "compare"))
        set_(self, "device", check_device(getattr(self.device, "value", self.device)))
        scopes = (self.scopes,) if isinstance(self.scopes, str) else tuple(self.scopes)
        bad = [s for s in scopes if s not in SCOPES]
        if bad or not scopes:
            raise OptionError(
                f"The 'scopes' parameter of compare takes some of {', '.join(SCOPES)}. "
                f"Got {list(scopes)} instead."
            )
        set_(self, "scopes", tuple(s for s in SCOPES if s in scopes))
        if self.sparsity_tol is not None:
            set_(self, "sparsity_tol", check_tol(self.sparsity_tol, func="compare"))
        set_(self, "sparsity_dtype", check_sparsity_dtype(self.sparsity_dtype, "compare"))
        if self.sparsity_dtype is not None and self.sparsity_tol is not None:
            raise OptionError(
                "compare takes sparsity_tol (changed: |Δ| > τ) or sparsity_dtype (changed as "
                "stored in that dtype), not both; drop one."
            )
        if self.workers is not None and not (isinstance(self.workers, int) and self.workers >= 1):
            raise OptionError(f"The 'workers' parameter must be ≥ 1. Got {self.workers} instead.")
        for c in ("cache_a", "cache_b"):
            if getattr(self, c) is not None:
                set_(self, c, str(getattr(self, c)))
        for step in ("step_a", "step_b"):
            value = getattr(self, step)
            if value is not None and not (isinstance(value, int) and value >= 0):
                raise OptionError(f"The '{step}' parameter must be a saved step. Got {value!r}.")

    @classmethod
    def build(
        cls, options: CompareOptions | None = None, overrides: Mapping[str, Any] | None = None
    ) -> CompareOptions:
        """`options` (default: all defaults) with `overrides` replacing fields by name."""
        known = [f.name for f in fields(cls)]
        unknown = [k for k in overrides or {} if k not in known]
        if unknown:
            raise OptionError(
                f"compare has no option {unknown[0]!r}; its options are {', '.join(known)}."
            )
        if options is None:
            return cls(**dict(overrides or {}))
        return replace(options, **dict(overrides or {}))

    @property
    def worker_count(self) -> int:
        """Worker threads to start: `workers`, or one per core."""
        return (os.cpu_count() or 1) if self.workers is None else self.workers

    def record(self) -> dict[str, Any]:
        """The options as JSON-ready values, for provenance."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in fields(self)
        }


@dataclass
class Comparison:
    """The compare table with what produced it: options, steps, warnings, timings."""

    frame: pd.DataFrame
    options: CompareOptions
    steps: list[tuple[int, int]]  # (step_a, step_b) of each pair
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    svd_calls: int = 0
    cache_hits: int = 0  # top-K factors reused from an analyze's factor cache


def run_label(run: Run) -> str:
    """How tables and messages name a run: the path it was opened from."""
    return str(run.open_args.get("path") or run.base.path.parent)


def resolve_step(run: Run, step: int | None, option: str) -> int:
    """`step`, or the run's last step when None.

    Raises:
        OptionError: the run saved no such step (named with `option` and the run).
    """
    if step is None:
        return run.final_step
    if step not in run.steps:
        raise OptionError(
            f"{option} {step}: the run {run_label(run)} has no step {step}; its saved steps are "
            f"{run.steps}."
        )
    return step


def header_difference(a: Run, b: Run) -> str | None:
    """How the two bases' headers differ (names, shapes, dtypes), or None if they agree."""
    na, nb = a.base.names(), b.base.names()
    only = [n for n in na if n not in set(nb)] + [n for n in nb if n not in set(na)]
    if only:
        which = "A" if only[0] in set(na) else "B"
        return f"the first differing tensor is '{only[0]}', which only run {which}'s base holds"
    for name in na:
        sa, sb = a.base.spec(name), b.base.spec(name)
        if sa.shape != sb.shape or sa.stored != sb.stored:
            return (
                f"the first differing tensor is '{name}': {sa.stored} {list(sa.shape)} in A's "
                f"base, {sb.stored} {list(sb.shape)} in B's"
            )
    return None


def base_refusal(a: Run, b: Run, what: str) -> CheckpointError:
    return CheckpointError(
        f"the runs start from different bases ({a.base.path} and {b.base.path}): {what}. "
        "compare measures overlap from one shared base; compare runs of the same base model, "
        "or pass --allow-different-base (Python: allow_different_base=True) to measure each "
        "update from its own base anyway."
    )


@dataclass(frozen=True)
class Pair:
    """Two runs' sides of one comparison and its options."""

    a: Side
    b: Side
    same_base: bool  # both bases are the same files: their bytes need no check
    options: CompareOptions


def compare_tensor(pair: Pair, name: str) -> TensorOverlap:
    """Rows of one tensor: both runs' copies read once, W_0 once per distinct base."""
    out = TensorOverlap(name)
    a, b, opts = pair.a, pair.b, pair.options
    skip = skip_reason(a.run, name) or skip_reason(b.run, name)
    if skip is not None:
        out.warnings.append(skip)
        return out
    info = a.run.module(name)
    w0, h0 = read_stored(a.run.base, name)
    w0b, h0b = w0, h0
    if not pair.same_base:
        w0b, h0b = read_stored(b.run.base, name)
        out.base_differs = h0b != h0
        if not out.base_differs:
            w0b = w0
        elif not opts.allow_different_base:
            return out
    with out_of_memory_as_error(f"tensor '{name}'"):
        view = sparsity_view(opts.sparsity_dtype)
        da, ma, src_a = update_and_mask(a, name, w0, h0, info, opts.sparsity_tol, view)
        db, mb, src_b = update_and_mask(b, name, w0b, h0b, info, opts.sparsity_tol, view)
        del w0, w0b
        overlap_rows(out, pair, info, (da, db), (ma, mb), (src_a, src_b))
    return out


def overlap_rows(
    out: TensorOverlap, pair: Pair, info: ModuleInfo,
    deltas: tuple[torch.Tensor, torch.Tensor], masks: tuple[torch.Tensor | None, torch.Tensor | None],
    sources: tuple[bytes, bytes], memos: tuple[FactorMemo, FactorMemo] | None = None,
) -> None:  # fmt: skip
    """Add to `out` the rows of one tensor of a pair from its two updates and changed masks.

    `memos` hold each update's top-K factors across the pairs of a group: taken from them
    instead of an SVD, and filled with those computed here. Shape: deltas and masks as
    `update_and_mask` returns them.
    """
    name, a, b, opts = out.name, pair.a, pair.b, pair.options
    da, db = (d.to(opts.device) for d in deltas)
    shape = tuple(a.run.base.spec(name).shape)
    try:
        slices = slices_of(shape, info, a.run.config, opts.split_fused)
    except FusedSplitError as e:
        out.warnings.append(f"tensor '{name}' is compared whole, not per fused part: {e}")
        slices = slices_of(shape, info, a.run.config, split=False)
    caches = [s.cache.tensor(name) if s.cache is not None else None for s in (a, b)]
    for sl in slices:
        found, keep = _cached(out, caches, (a.step, b.step), sources, sl, memos)
        row, notes, svds = slice_row(sl, info, (da, db), masks, opts.ranks, opts.device, found,
                                     keep)  # fmt: skip
        out.svd_calls += svds
        out.rows.append({"tensor": name, "layer": info.layer, "block": info.block, **row})
        out.warnings += [f"tensor '{name}': {n}" for n in notes]
    for tc in caches:
        if tc is not None:
            out.warnings += ([tc.warning] if tc.warning else []) + tc.notes
    out.lora = masks[0] is None or masks[1] is None


def _cached(
    out: TensorOverlap,
    caches: list[TensorCache | None],
    steps: tuple[int, int],
    sources: tuple[bytes, bytes],
    sl: Slice,
    memos: tuple[FactorMemo, FactorMemo] | None,
) -> tuple[Cached, Keep | None]:
    """Look up one slice's factors of Δ_A and Δ_B: in the caches, keyed as analyze keys them,
    then in `memos`; and how to keep computed ones in `memos` (None without)."""
    slice_digest = digest(sl.rows_index) if sl.rows_index is not None else b""

    def lookup(shape: tuple[int, int], k: int) -> tuple[Factors | None, Factors | None]:
        found: list[Factors | None] = []
        for side, (tc, step, src) in enumerate(zip(caches, steps, sources, strict=True)):
            hit: CachedFactors | None = None
            if tc is not None:
                hit = tc.get(step, sl.key, k, False, content_key(src, slice_digest), shape)
            out.cache_hits += hit is not None
            if hit is not None:
                top = hit.truncated(k)
                found.append((top.u.cpu(), top.v.cpu()))
            else:
                found.append(memos[side].get((sl.key, slice_digest, shape, k)) if memos else None)
        return found[0], found[1]

    def keep(side: int, shape: tuple[int, int], k: int, factors: Factors) -> None:
        assert memos is not None
        memos[side][(sl.key, slice_digest, shape, k)] = factors

    return lookup, keep if memos is not None else None


def thread_map(fn: Callable[[str], T], names: Sequence[str], workers: int) -> Iterator[T]:
    """fn over names, yielded as each finishes: inline for one worker, else threads of 1 BLAS
    thread each (torch releases the GIL in its kernels and reads), restored afterwards."""
    if workers <= 1 or len(names) <= 1:
        yield from map(fn, names)
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    pool = ThreadPoolExecutor(min(workers, len(names)), thread_name_prefix="opdlens-compare")
    try:
        for done in as_completed([pool.submit(fn, n) for n in names]):
            yield done.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(before)


def _names(a: Run, b: Run, warnings: list[str]) -> list[str]:
    """Tensors both runs hold with the same shape, in run A's order."""
    in_b = set(b.tensor_names)
    names = [
        n for n in a.tensor_names if n in in_b and a.base.spec(n).shape == b.base.spec(n).shape
    ]
    left = len(set(a.tensor_names) | in_b) - len(names)
    if left:
        warnings.append(f"{left} tensor(s) are not in both runs with one shape; left out.")
    if not names:
        raise CheckpointError(
            f"the runs {run_label(a)} and {run_label(b)} share no tensor of the same shape; "
            "nothing to compare."
        )
    return names


@dataclass
class PairPlan:
    """One pair's steps, tensors and warnings, checked before any tensor is read."""

    a: Run
    b: Run
    steps: tuple[int, int]
    names: list[str]  # tensors both runs hold with one shape, in run A's order
    warnings: list[str]
    what: str | None  # how the bases' headers differ, or None


def plan_pair(a: Run, b: Run, options: CompareOptions) -> PairPlan:
    """The checks of a pair: steps, bases (refused when they differ), shared tensors, views.

    Raises:
        CheckpointError: the bases differ (and not `allow_different_base`), or share no tensor.
        OptionError: a step the run did not save.
    """
    sa = resolve_step(a, options.step_a, "--step-a")
    sb = resolve_step(b, options.step_b, "--step-b")
    warnings = [f"run A: {w}" for w in a.warnings] + [f"run B: {w}" for w in b.warnings]
    what = None if a.base.path == b.base.path else header_difference(a, b)
    if what is not None and not options.allow_different_base:
        raise base_refusal(a, b, what)
    names = _names(a, b, warnings)
    if options.sparsity_dtype is not None:
        for run in (a, b):
            check_views(run, [n for n in names if skip_reason(run, n) is None],
                        options.sparsity_dtype)  # fmt: skip
    return PairPlan(a, b, (sa, sb), names, warnings, what)


@ieee_float32()
def compute_pair(a: Run, b: Run, options: CompareOptions, *, progress: bool = False) -> Comparison:
    """The compare table of two runs, with the warnings (run's, base override, notes)."""
    t0 = time.perf_counter()
    plan = plan_pair(a, b, options)
    caches = [FactorCache.open(c) if c is not None else None
              for c in (options.cache_a, options.cache_b)]  # fmt: skip
    sa, sb = plan.steps
    pair = Pair(Side(a, sa, caches[0]), Side(b, sb, caches[1]), a.base.path == b.base.path,
                 options)  # fmt: skip
    prepare(options.device)
    found: dict[str, TensorOverlap] = {}
    bar = Progress(len(plan.names), "compare", enabled=progress)
    try:
        for res in thread_map(lambda n: compare_tensor(pair, n), plan.names, options.worker_count):
            if res.base_differs and not options.allow_different_base:
                raise base_refusal(a, b, f"the first differing tensor found is '{res.name}'")
            found[res.name] = res
            bar.update()
    finally:
        bar.close()
    return assemble(plan, found, options, t0)


def assemble(
    plan: PairPlan, found: Mapping[str, TensorOverlap], options: CompareOptions, t0: float
) -> Comparison:
    """A pair's Comparison from its tensors' rows and notes (`t0`: when its sweep began)."""
    a, b = plan.a, plan.b
    done = [found[n] for n in plan.names]  # rows and notes in the run's order
    rows = [row for res in done for row in res.rows]
    warnings = plan.warnings + [w for res in done for w in res.warnings]
    differing = [res.name for res in done if res.base_differs]
    lora = [res.name for res in done if res.lora]
    if lora:
        warnings.append(
            f"{len(lora)} tensor(s), e.g. '{lora[0]}', are LoRA updates: a LoRA step stores no "
            "dense update, so their changed-weight columns (and their groups') are empty; cos "
            "and the subspaces come from B·A."
        )
    if plan.what is not None or differing:
        first = plan.what or f"{len(differing)} tensor(s) differ, first '{differing[0]}'"
        warnings.insert(0, f"--allow-different-base: the bases {a.base.path} and "
                        f"{b.base.path} differ ({first}); each update is measured from its "
                        "own base, so the overlap is not of one shared model's weights.")  # fmt: skip
    t1 = time.perf_counter()
    frame = build_frame(rows, options.ranks, options.scopes)
    timings = {"sweep": t1 - t0, "frame": time.perf_counter() - t1}
    return Comparison(frame, options, [plan.steps], warnings, timings,
                      sum(r.svd_calls for r in done), sum(r.cache_hits for r in done))  # fmt: skip


def compare(
    run_a: Run, run_b: Run, options: CompareOptions | None = None, *, progress: bool = False,
    **overrides: Any,
) -> pd.DataFrame:  # fmt: skip
    """Overlap of two runs' updates from one base, one row per (scope, tensor or group).

    Columns as design.md defines them: changed_frac_a/b, jaccard, jaccard_chance,
    overlap_ratio, cos, subspace_{left,right}_k{K} beside subspace_{left,right}_random_k{K}.
    Options as `CompareOptions` fields by keyword, e.g. ``compare(a, b, ranks=(1, 4))``;
    warnings are in ``frame.attrs["warnings"]``.

    Raises:
        CheckpointError: the bases differ (and not `allow_different_base`).
        OptionError: a bad option, or a step the run did not save.
    """
    result = compute_pair(run_a, run_b, CompareOptions.build(options, overrides), progress=progress)
    result.frame.attrs["warnings"] = result.warnings
    return result.frame
