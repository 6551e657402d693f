"""The typer application, shared option types, and the one-line error handling of every command."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from ..errors import OpdlensError

app = typer.Typer(
    name="opdlens",
    help="See how post-training moved a model's weights, from the checkpoints a run saved.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., object])

RunArg = Annotated[
    Path,
    typer.Argument(help="Run directory holding checkpoint-<N>/, global_step_<N>/, step_<N>/ …"),
]
BaseOpt = Annotated[
    Path | None,
    typer.Option("--base", help="Model the run started from, if it has no step-0 checkpoint."),
]
CheckpointOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--checkpoint", help="Explicit STEP=PATH (repeatable) for layouts not found automatically."
    ),
]
TrustPickleOpt = Annotated[
    bool,
    typer.Option("--trust-pickle", help="Allow .bin/.pt files that need code execution to load."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def parse_checkpoints(items: list[str] | None) -> dict[int, Path]:
    """Parse repeated STEP=PATH options."""
    out: dict[int, Path] = {}
    for item in items or []:
        step, sep, path = item.partition("=")
        if not sep or not step.strip().isdigit() or not path:
            raise OpdlensError(
                f"--checkpoint takes STEP=PATH with a whole-number step; got '{item}'."
            )
        out[int(step)] = Path(path)
    return out


def handle_errors(fn: F) -> F:
    """Turn user errors into one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> object:
        logging.basicConfig(level=logging.WARNING, format="opdlens: %(levelname)s: %(message)s")
        try:
            return fn(*args, **kwargs)
        except (OpdlensError, FileNotFoundError, ValueError) as e:
            typer.echo(f"opdlens: error: {e}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("opdlens: interrupted; nothing partial was left behind.", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def echo(text: str = "") -> None:
    """Print to stdout."""
    sys.stdout.write(text + "\n")


@app.callback()
def _root() -> None:
    """See how post-training moved a model's weights, from the checkpoints a run saved."""
