"""`opdlens compare`: how much two runs from one base (or a group of seeds) changed the same weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import OptionError
from ._app import (
    BaseOpt,
    CheckpointOpt,
    DeviceOpt,
    QuietOpt,
    TrustPickleOpt,
    WorkersOpt,
    app,
    echo,
    handle_errors,
    parse_checkpoints,
    parse_ints,
)

_RunOpt = Annotated[Path | None, typer.Argument(help="Run directory holding checkpoint-<N>/ …")]


@app.command()
@handle_errors
def compare(
    run_a: _RunOpt = None,
    run_b: _RunOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Output directory for compare.parquet/.csv and provenance."
        ),
    ] = None,
    step_a: Annotated[
        int | None, typer.Option("--step-a", help="Step of RUN_A (default: its last).")
    ] = None,
    step_b: Annotated[
        int | None, typer.Option("--step-b", help="Step of RUN_B (default: its last).")
    ] = None,
    ranks: Annotated[str, typer.Option(help="K of the top-K subspace overlaps, e.g. 1,4,16.")] = (
        "1,4,16"
    ),
    sparsity_tol: Annotated[
        float | None,
        typer.Option(
            "--sparsity-tol", help="Count a weight as changed where |Δ| > τ (default: as stored)."
        ),
    ] = None,
    sparsity_dtype: Annotated[
        str | None,
        typer.Option(
            "--sparsity-dtype",
            metavar="<dtype>",
            help="Count a weight as changed where W_0 and W_t differ once rounded to bfloat16, "
            "float16 or float32 (no wider than stored).",
        ),
    ] = None,
    scopes: Annotated[
        str, typer.Option(help="Rows to write: some of tensor,block,layer,overall.")
    ] = "tensor,block,layer,overall",
    group: Annotated[
        list[Path] | None,
        typer.Option(
            "--group", metavar="<run>", help="A run of a group of seeds (repeatable): every pair."
        ),
    ] = None,
    allow_different_base: Annotated[
        bool,
        typer.Option(
            "--allow-different-base", help="Compare runs whose bases differ (with a warning)."
        ),
    ] = False,
    cache_a: Annotated[
        Path | None,
        typer.Option("--cache-a", help="An analyze --out of RUN_A (or its cache/): reuse factors."),
    ] = None,
    cache_b: Annotated[
        Path | None,
        typer.Option("--cache-b", help="An analyze --out of RUN_B (or its cache/): reuse factors."),
    ] = None,
    base: BaseOpt = None,
    checkpoint: CheckpointOpt = None,
    workers: WorkersOpt = None,
    device: DeviceOpt = "cpu",
    trust_pickle: TrustPickleOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Overlap of two runs' changed weights, updates and top-K subspaces, from one shared base."""
    from .._malloc import release_freed_buffers
    from ..analysis.compare import CompareOptions
    from ..analysis.compare_write import write_compare
    from ..run import open_run

    # Each tensor's updates and masks are freed before the next tensor is read (as analyze's
    # steps are): give that memory back at once instead of keeping dead tensors on the heap.
    release_freed_buffers()
    if out is None:
        raise OptionError("compare needs --out DIR for compare.parquet, compare.csv, provenance.")
    if group and (run_a is not None or run_b is not None):
        raise OptionError("Give RUN_A RUN_B, or a group with --group RUN (repeated), not both.")
    paths = list(group or [p for p in (run_a, run_b) if p is not None])
    if len(paths) < 2:
        raise OptionError("compare needs two runs: RUN_A RUN_B, or --group RUN at least twice.")
    if group and (step_a is not None or step_b is not None):
        raise OptionError(
            "--step-a/--step-b are for RUN_A RUN_B; a group uses each run's last step."
        )
    options = CompareOptions(
        ranks=parse_ints(ranks, "--ranks"), step_a=step_a, step_b=step_b,
        sparsity_tol=sparsity_tol, sparsity_dtype=sparsity_dtype, scopes=[s.strip() for s in scopes.split(",") if s.strip()],
        workers=workers, device=device, allow_different_base=allow_different_base,
        cache_a=cache_a, cache_b=cache_b,
    )  # fmt: skip
    steps = parse_checkpoints(checkpoint)
    runs = [open_run(p, base, checkpoints=steps, trust_pickle=trust_pickle) for p in paths]
    result, lines = write_compare(runs, out, options, progress=not quiet)
    for line in lines[:20]:
        echo(line)
    echo(f"wrote {out}/compare.parquet, compare.csv, provenance.json ({len(result.frame)} rows)")
    for w in result.warnings[:20]:
        typer.echo(f"warning: {w}", err=True)
