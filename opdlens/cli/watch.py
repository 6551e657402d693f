"""`opdlens watch`: follow a run while it trains; analyse each checkpoint once it is complete."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._app import (
    BaseOpt,
    DeviceOpt,
    QuietOpt,
    RunArg,
    TrustPickleOpt,
    WorkersOpt,
    app,
    echo,
    handle_errors,
    parse_ints,
)


@app.command()
@handle_errors
def watch(
    run: RunArg,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output directory; a second watch resumes it.")
    ],
    interval: Annotated[
        float, typer.Option(help="Seconds between two looks at the run directory.")
    ] = 30.0,
    ranks: Annotated[
        str, typer.Option(help="K values for energy/alignment/gap, e.g. 1,4,16.")
    ] = "1,4,16",
    report: Annotated[
        bool, typer.Option(help="Rewrite report/report.html (it reloads itself) at each step.")
    ] = True,
    until: Annotated[
        int | None, typer.Option(help="Stop once a checkpoint at this step or later is complete.")
    ] = None,
    idle_exit: Annotated[
        float | None,
        typer.Option(
            "--idle-exit", metavar="MINUTES", help="Stop after this long with no new step."
        ),
    ] = None,
    base: BaseOpt = None,
    device: DeviceOpt = "cpu",
    workers: WorkersOpt = None,
    trust_pickle: TrustPickleOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Follow RUN while a trainer writes it: analyse each new complete checkpoint, print one line
    per step, keep metrics, foresight and the report current. Stop with Ctrl-C, --until or
    --idle-exit; run it again with the same --out to resume."""
    from ..analysis.options import AnalyzeOptions
    from ..follow import WatchOptions
    from ..follow import watch as follow

    options = AnalyzeOptions(ranks=parse_ints(ranks, "--ranks"), workers=workers, device=device)
    following = WatchOptions(
        interval=interval, report=report, until=until, idle_exit=idle_exit, base=base,
        trust_pickle=trust_pickle,
    )  # fmt: skip
    result = follow(run, out, options, following, progress=not quiet)
    why = {"until": f"step {until} reached", "idle": f"no new step for {idle_exit} min",
           "interrupted": "interrupted"}[result.stopped]  # fmt: skip
    if not result.steps:
        echo(f"stopped ({why}); no step analysed yet: {result.out} holds only watch.log")
        return
    echo(f"stopped ({why}); {result.out}: metrics.parquet, foresight.parquet, provenance.json "
         f"up to step {result.steps[-1]}" + (f", report in {result.out / 'report'}" if report else ""))  # fmt: skip
