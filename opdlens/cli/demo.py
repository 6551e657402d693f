"""`opdlens demo`: the whole toolkit on a tiny OPD-vs-RL run it trains itself on the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import OptionError
from ._app import QuietOpt, app, echo, handle_errors


@app.command()
@handle_errors
def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where the runs, metrics, figures and report go.")
    ] = Path("opdlens-demo"),
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="One seed per method, 40 post-training steps instead of 120; no claim is "
            "decided. The full preset, 3 seeds per method, took 5 min 0 s of CPU (3 min 24 s "
            "wall, idle) on a 2-core AMD EPYC with torch 2.13.0; quick, about half of that "
            "(2 min 17 s of CPU). README says more.",
        ),
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed for data, models and sampling.")] = 0,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            help="Processes that train the runs and analyse them (the runs are the "
            "same whatever the count).",
        ),
    ] = 2,
    quiet: QuietOpt = False,
) -> None:
    """Train (or reuse) tiny OPD and RL runs (3 seeds each), analyse, extrapolate, replay,
    foresee and ablate (first seed of each method), report, and state each of the paper's claims
    as holding, not holding or inconclusive."""
    if workers < 1:
        raise OptionError(f"--workers takes a count ≥ 1; got {workers}.")
    from ..demo.pipeline import format_summary, run_demo
    from ..io.paths import output_dir

    with output_dir(out, "demo") as path:  # new, empty, or an earlier demo's directory
        result = run_demo(path, quick=quick, seed=seed, progress=not quiet, workers=workers)
    echo(format_summary(result))
    if not quiet:  # stderr: the summary on stdout is the same from run to run
        typer.echo(result.timings_line(), err=True)
