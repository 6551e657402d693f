"""`opdlens scan`: list a run's checkpoints, its base, missing tensors and warnings."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ..errors import OpdlensError
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
    """List the checkpoints of a run: step, path, layout, tensors, parameters, dtype, bytes.

    A run without a base or without any checkpoint after it is listed too, then refused
    (exit 2) with a line saying what is missing.
    """
    from ..survey import describe_frame, survey  # pandas loads only for this command

    d = survey(run, base, checkpoints=parse_checkpoints(checkpoint), trust_pickle=trust_pickle)
    if as_json:
        echo(json.dumps(d, indent=2))
    else:
        echo(describe_frame(d).to_string(index=False))
        b = d["base"]
        echo(f"\nbase: {b['path']} ({b['layout']})" if b else "\nbase: none (no step-0 checkpoint)")
        echo(f"tensors in every checkpoint: {d['num_common_tensors']}")
        if d["missing_tensors"]:
            echo(f"tensors missing in some checkpoints: {len(d['missing_tensors'])}")
            for name, steps in list(d["missing_tensors"].items())[:20]:
                echo(f"  {name}: missing at step(s) {steps}")
    for w in d["warnings"]:
        typer.echo(f"warning: {w}", err=True)
    if d["missing"] is not None:
        raise OpdlensError(f"{run}: missing: {d['missing']}.")
