"""Write a comparison to a directory (compare.parquet, compare.csv, provenance.json); its summary."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io.paths import output_dir
from ..provenance import input_fingerprints, record, write_results
from .compare import CompareOptions, Comparison, compute_pair
from .compare_group import compute_group

if TYPE_CHECKING:
    import pandas as pd

    from ..run import Run


def _pct(p: float) -> str:
    return f"{100 * p:.3g} %" if math.isfinite(p) else "an unknown share (LoRA)"


def summary_rank(ranks: Sequence[int]) -> int:
    """The K the summary line quotes: the second smallest (4 of 1,4,16), else the only one."""
    return sorted(ranks)[1] if len(ranks) > 1 else ranks[0]


def summary_line(row: pd.Series, k: int) -> str:
    """One sentence from an overall row: changed shares, overlap against chance, top-K subspaces."""
    pa, pb = float(row["changed_frac_a"]), float(row["changed_frac_b"])
    text = f"the runs changed {_pct(pa)} and {_pct(pb)} of the weights; "
    ratio = float(row["overlap_ratio"])
    if not math.isfinite(ratio):
        text += "their changed sets' overlap with chance is undefined"
    elif ratio >= 1.005:
        text += f"their changed sets overlap {ratio:.3g}× more than chance"
    elif ratio <= 0.995:
        text += f"their changed sets overlap {ratio:.3g}× chance, less than independent masks"
    else:
        text += "their changed sets overlap as much as chance (1.0×)"
    left = float(row.get(f"subspace_left_k{k}", math.nan))
    rnd = float(row.get(f"subspace_left_random_k{k}", math.nan))
    if math.isfinite(left):
        text += f"; top-{k} subspaces overlap {left:.2g} (random {rnd:.2g})"
    return text + f"; cos {float(row['cos']):.2g}"


def summary_lines(frame: pd.DataFrame, ranks: Sequence[int]) -> list[str]:
    """One summary line per pair (one for two runs), from the overall rows."""
    k = summary_rank(ranks)
    overall = frame[frame["scope"] == "overall"]
    if "pair" not in frame:
        return [summary_line(r, k) for _, r in overall.iterrows()]
    return [f"pair {r['pair']}: {summary_line(r, k)}" for _, r in overall.iterrows()]


def write_compare(
    runs: Sequence[Run],
    out: str | Path,
    options: CompareOptions | None = None,
    *,
    progress: bool = False,
    **overrides: Any,
) -> tuple[Comparison, list[str]]:
    """Compare two runs (or every pair of a group), write the table under `out`; its summary.

    `out` may be absent, empty, or a directory an earlier `compare` wrote (never an input, nor
    one another command or anyone else wrote: see `opdlens.io.paths.output_dir`). The overall
    scope is always computed for the summary lines (one per pair), written only if asked.
    """
    opts = CompareOptions.build(options, overrides)
    inputs = [p for r in runs for p in r.input_paths]
    wanted = opts.scopes
    run_opts = CompareOptions.build(opts, {"scopes": tuple({*opts.scopes, "overall"})})
    with output_dir(out, "compare", inputs=inputs) as path:
        t = time.perf_counter()
        if len(runs) == 2:
            result = compute_pair(runs[0], runs[1], run_opts, progress=progress)
        else:
            result = compute_group(runs, run_opts, progress=progress)
        result.options = opts
        full = result.frame
        result.frame = full[full["scope"].isin(wanted)].reset_index(drop=True)

        def provenance() -> dict[str, Any]:
            result.timings["write"] = time.perf_counter() - t
            return record(
                None, opts.record(), inputs=[input_fingerprints(r) for r in runs],
                runs=[str(r.open_args.get("path") or r.base.path) for r in runs],
                steps=result.steps, rows=len(result.frame), warnings=result.warnings,
                wall_time_s=result.timings, svd_calls=result.svd_calls,
                cache_hits=result.cache_hits,
            )  # fmt: skip

        write_results(path, {"compare": result.frame}, provenance)
    return result, summary_lines(full, opts.ranks)
