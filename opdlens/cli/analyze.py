"""`opdlens analyze`: metrics for every (step, tensor) of a run, written as Parquet, CSV and JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import OptionError
from ._app import (
    AddressOpt,
    BaseOpt,
    CheckpointOpt,
    DeviceOpt,
    Executor,
    ExecutorOpt,
    QuietOpt,
    RunArg,
    TrustPickleOpt,
    WorkersOpt,
    app,
    echo,
    handle_errors,
    parse_checkpoints,
    parse_ints,
)


@app.command()
@handle_errors
def analyze(
    run: RunArg,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output directory for metrics and provenance.")
    ],
    base: BaseOpt = None,
    checkpoint: CheckpointOpt = None,
    final: Annotated[
        int | None, typer.Option(help="Step taken as the final update (default: last).")
    ] = None,
    ranks: Annotated[
        str, typer.Option(help="K values for energy/alignment/gap, e.g. 1,4,16.")
    ] = "1,4,16",
    tensors: Annotated[
        list[str] | None,
        typer.Option(
            "--tensors", metavar="<glob>", help="Only tensors matching this glob (repeatable)."
        ),
    ] = None,
    consecutive: Annotated[
        bool, typer.Option(help="Also analyse the step-to-step update W_t − W_prev.")
    ] = False,
    full_spectrum: Annotated[
        bool, typer.Option(help="Full SVD for effective_rank (slow on large matrices).")
    ] = False,
    base_geometry: Annotated[
        bool,
        typer.Option(
            help="Also measure the update against the base weights' top-K singular directions: "
            "principal_energy_*, spectral_drift*, principal_rotation_*, base_gap per K."
        ),
    ] = False,
    base_from: Annotated[
        list[Path] | None,
        typer.Option(
            "--base-from",
            metavar="<dir>",
            help="With --base-geometry: an earlier `analyze --base-geometry` output (or its "
            "cache/) of a run from the same base; W_0's factors found there for the same base "
            "bytes are reused, not computed again (repeatable; only read).",
        ),
    ] = None,
    split_fused: Annotated[
        bool, typer.Option(help="Report fused qkv / gate_up tensors per logical part.")
    ] = True,
    sparsity_tol: Annotated[
        str,
        typer.Option(
            "--sparsity-tol",
            metavar="<tol>",
            help="changed_frac_tol counts elements with |Δ| > τ (absolute, default 1e-5).",
        ),
    ] = "1e-5",
    sparsity_dtype: Annotated[
        str | None,
        typer.Option(
            "--sparsity-dtype",
            metavar="<dtype>",
            help="changed_frac compares W_0 and W_t rounded to bfloat16, float16 or float32 (no "
            "wider than stored), as a checkpoint saved in it would hold them (default: as stored).",
        ),
    ] = None,
    workers: WorkersOpt = None,
    executor: ExecutorOpt = Executor.local,
    address: AddressOpt = None,
    device: DeviceOpt = "cpu",
    trust_pickle: TrustPickleOpt = False,
    skip_incomplete: Annotated[
        bool, typer.Option(help="Skip checkpoints still being written.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Compute update norms, module allocation, low-rank concentration and alignment for a run."""
    from .._malloc import release_freed_buffers
    from ..analysis.options import AnalyzeOptions
    from ..analysis.write import write_analysis  # pandas loads only for this command
    from ..run import open_run

    # Each step's update is freed before the next is read; give that memory back at once.
    release_freed_buffers()
    if address is not None and executor is not Executor.ray:
        raise OptionError("--address is for a Ray cluster; add --executor ray or drop --address.")
    donors = _donors(base_from or [], base_geometry)
    options = AnalyzeOptions(
        ranks=parse_ints(ranks, "--ranks"), final=final, tensors=tensors, consecutive=consecutive,
        full_spectrum=full_spectrum, split_fused=split_fused, workers=workers,
        base_geometry=base_geometry,
        executor=executor.value, address=address, device=device,
        sparsity_tol=_tolerance(sparsity_tol), sparsity_dtype=sparsity_dtype,
    )  # fmt: skip
    r = open_run(run, base, checkpoints=parse_checkpoints(checkpoint), trust_pickle=trust_pickle,
                 skip_incomplete=skip_incomplete)  # fmt: skip
    result, summary = write_analysis(r, out, options, progress=not quiet, base_donors=donors)
    echo(
        f"final step {options.final or r.final_step}: update share, low-rank energy and share of "
        "weights changed by block"
    )
    echo(summary.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    echo(f"\nwrote {out}/metrics.parquet, metrics.csv, provenance.json ({len(result.frame)} rows)")
    for w in result.warnings[:20]:
        typer.echo(f"warning: {w}", err=True)


def _tolerance(text: str) -> float:
    """--sparsity-tol as a number; AnalyzeOptions checks that it is finite and ≥ 0."""
    try:
        return float(text)
    except ValueError:
        raise OptionError(
            f"--sparsity-tol takes a number ≥ 0 (an absolute tolerance on |Δ|, e.g. 1e-5); "
            f"got '{text}'."
        ) from None


def _donors(dirs: list[Path], base_geometry: bool) -> list[Path]:
    """--base-from's factor caches, each checked to be one (a user error names the first that is
    not)."""
    from ..analysis.cache import FactorCache, cache_directory

    if dirs and not base_geometry:
        raise OptionError(
            "--base-from reuses W_0's factors for --base-geometry; add --base-geometry."
        )
    for d in dirs:
        if not d.is_dir():
            raise OptionError(f"--base-from {d}: no such directory.")
        FactorCache.open(cache_directory(d))  # OpdlensError, one line, where it holds no cache
    return dirs
