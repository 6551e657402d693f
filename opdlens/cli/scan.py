"""`opdlens scan`: list a run's checkpoints, its base, missing tensors and warnings."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ._app import (
    BaseOpt,
    CheckpointOpt,
    RunArg,
    TrustPickleOpt,
    app,
    echo,
    handle_errors,
    parse_checkpoints,
)


@app.command()
@handle_errors
def scan(
    run: RunArg,
    base: BaseOpt = None,
    checkpoint: CheckpointOpt = None,
    trust_pickle: TrustPickleOpt = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of a table.")
    ] = False,
) -> None:
    """List the checkpoints of a run: step, path, layout, tensors, parameters, dtype, bytes."""
    from ..inspect_run import describe, describe_frame  # pandas loads only for this command
    from ..run import open_run

    r = open_run(run, base, checkpoints=parse_checkpoints(checkpoint), trust_pickle=trust_pickle,
                 skip_incomplete=True)  # fmt: skip
    if as_json:
        echo(json.dumps(describe(r), indent=2))
        return
    df = describe_frame(r)
    echo(df.to_string(index=False))
    echo(f"\nbase: {r.base.path} ({r.base.layout})")
    echo(f"tensors in every checkpoint: {len(r.tensor_names)}")
    if r.missing:
        echo(f"tensors missing in some checkpoints: {len(r.missing)}")
        for name, steps in list(r.missing.items())[:20]:
            echo(f"  {name}: missing at step(s) {steps}")
    for w in r.warnings:
        typer.echo(f"warning: {w}", err=True)
