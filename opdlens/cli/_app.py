"""The typer application, shared option types, and the one-line error handling of every command."""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from .._workers import ctrl_c_noted
from ..errors import OpdlensError, OptionError, OutputError, StdoutClosed, Terminated

if TYPE_CHECKING:  # the click that typer runs on (the installed typer vendors it)
    from typer._click.core import Context, Parameter

# Where typer's click exceptions live: newer typer vendors click as typer._click.
_click_errors = importlib.import_module(typer.BadParameter.__module__)


class _TidyHelp:
    """Help that names what each parameter takes: no type on flags, arguments as RUN."""

    def get_params(self, ctx: Context) -> list[Parameter]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for p in params:
            if isinstance(p, TyperOption) and p.is_flag and not p.count and p.metavar is None:
                p.metavar = ""  # typer 0.29 shows "<bool>" on every flag, --help included
            elif isinstance(p, TyperArgument) and p.metavar is None and p.name:
                p.metavar = p.name.upper()
        return params


class _Command(_TidyHelp, TyperCommand):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.short_help is None and self.help:
            # the command list would keep the docstring's line breaks mid-sentence
            self.short_help = " ".join(self.help.split("\n\n")[0].split())

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if isinstance(p, TyperArgument):
                name = str(p.metavar) + ("..." if p.nargs != 1 else "")
                pieces.append(name if p.required else f"[{name}]")  # typer writes {run}
            else:
                pieces += p.get_usage_pieces(ctx)
        return pieces


class _Group(_TidyHelp, TyperGroup):
    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the CLI; a usage error (unknown option, bad value) is one line on stderr, exit 2."""
        run = functools.partial(super().main, args, prog_name, complete_var,
                                windows_expand_args=windows_expand_args, **extra)  # fmt: skip
        if not standalone_mode:
            return run(standalone_mode=False)
        try:
            code = run(standalone_mode=False)
        except _click_errors.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # as typer checks it; help is printed
                sys.exit(e.exit_code)
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            typer.echo(f"opdlens: error: {e.format_message()}{hint}", err=True)
            sys.exit(e.exit_code)
        except _click_errors.ClickException as e:
            typer.echo(f"opdlens: error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        except (StdoutClosed, BrokenPipeError):  # --version or --help, outside handle_errors
            _detach_stdout()
            sys.exit(EXIT_BROKEN_PIPE)
        except OpdlensError as e:
            typer.echo(f"opdlens: error: {one_line(str(e))}", err=True)
            sys.exit(2)
        except OSError as e:
            # click/rich writing help to a full or closed stdout; file errors carry a filename
            if e.filename is not None or e.errno not in (errno.ENOSPC, errno.EIO, errno.EBADF):
                raise
            _detach_stdout()
            typer.echo(f"opdlens: error: {stdout_error(e)}", err=True)
            sys.exit(2)
        sys.exit(code if isinstance(code, int) else 0)  # an int is typer.Exit's code


class Typer(typer.Typer):
    """typer.Typer whose commands and groups print tidy help (see _TidyHelp)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=_Group, add_completion=False, pretty_exceptions_enable=False, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Callable[[F], F]:
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


F = TypeVar("F", bound=Callable[..., object])

app = Typer(
    name="opdlens",
    help="See how post-training moved a model's weights, from the checkpoints a run saved.",
    no_args_is_help=True,
)

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
        "--checkpoint",
        metavar="<step=path>",
        help="Explicit STEP=PATH (repeatable) for layouts not found automatically.",
    ),
]
TrustPickleOpt = Annotated[
    bool,
    typer.Option("--trust-pickle", help="Allow .bin/.pt files that need code execution to load."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
OptRunArg = Annotated[Path | None, typer.Argument(help="Run directory holding checkpoint-<N>/ …")]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace --out if an opdlens command wrote it (never an input or a symlink).",
    ),
]
TensorsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--tensors",
        metavar="<glob>",
        help="Only tensors matching this glob (repeatable); overrides --modules.",
    ),
]
ScorerOpt = Annotated[
    str | None, typer.Option("--scorer", help="module:function or 'hindsight' (an oracle).")
]
ScorerCmdOpt = Annotated[
    str | None,
    typer.Option("--scorer-cmd", help="Shell command printing a number; {checkpoint} is replaced."),
]
ScorerTimeoutOpt = Annotated[
    float | None, typer.Option("--scorer-timeout", help="Seconds before a scorer call fails.")
]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", help="Worker threads (default: number of cores).")
]
AddressOpt = Annotated[
    str | None, typer.Option("--address", help="Ray cluster address (with --executor ray).")
]


def parse_ints(text: str, option: str) -> list[int]:
    """Parse '1,4,16' into integers, with an error naming the option."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise OptionError(
            f"{option} takes comma-separated whole numbers, e.g. 1,4,16; got '{text}'."
        ) from None


def parse_floats(text: str, option: str) -> list[float]:
    """Parse '0.5,1,2' into floats, with an error naming the option."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise OptionError(
            f"{option} takes comma-separated numbers, e.g. 0.5,1,2,4; got '{text}'."
        ) from None


class Executor(str, Enum):
    """Where `analyze` and `foresee` sweep the tensors: threads in this process or a Ray cluster."""

    local = "local"
    ray = "ray"


def _device(value: str) -> str:
    """--device checked as the parser reads it, before any work: 'cpu' or 'cuda:N'."""
    from ..devices import check_device

    try:
        return check_device(value)
    except OptionError as e:
        raise typer.BadParameter(str(e)) from None


DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        metavar="cpu|cuda[:N]",
        callback=_device,
        help="Where the tensors are computed: cpu, cuda (the current GPU) or cuda:N.",
    ),
]


ExecutorOpt = Annotated[
    Executor, typer.Option("--executor", help="Threads here, or a Ray cluster (see --address).")
]


def parse_checkpoints(items: list[str] | None) -> dict[int, Path]:
    """Parse repeated STEP=PATH options."""
    from ..io.discover import MAX_STEP

    out: dict[int, Path] = {}
    for item in items or []:
        step, sep, path = item.partition("=")
        digits = step.strip()
        if not sep or not path or not (digits.isascii() and digits.isdigit()):
            raise OptionError(
                f"--checkpoint takes STEP=PATH with a whole-number step in digits 0-9; got {item!r}."
            )
        if len(digits.lstrip("0")) > len(str(MAX_STEP)) or int(digits) > MAX_STEP:
            raise OptionError(
                f"--checkpoint {item!r}: the step is larger than {MAX_STEP}, the largest step "
                "opdlens can store; give the training step the checkpoint was saved at."
            )
        if int(digits) in out:
            raise OptionError(
                f"--checkpoint gives step {int(digits)} twice ({out[int(digits)]} and {path}); "
                "give each step once."
            )
        out[int(digits)] = Path(path)
    return out


def debug_enabled() -> bool:
    """Whether OPDLENS_DEBUG asks for a traceback on user errors too."""
    return os.environ.get("OPDLENS_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While a command runs, SIGTERM unwinds it like Ctrl-C (outputs removed, scorers killed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def handle_errors(fn: F) -> F:
    """Turn opdlens' own (user) errors into one line on stderr and exit 2; bugs keep a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> object:
        logging.basicConfig(level=logging.WARNING, format="opdlens: %(levelname)s: %(message)s")
        try:
            with _terminate_as_interrupt(), ctrl_c_noted() as ctrl_c:
                try:
                    return fn(*args, **kwargs)
                except (typer.Exit, typer.Abort, _click_errors.ClickException):
                    raise
                except Exception as e:
                    # Ctrl-C inside a native read can come out as another error (safetensors'
                    # get_tensor raised ValueError); the outputs were unwound all the same.
                    if ctrl_c.is_set():
                        raise KeyboardInterrupt from e
                    raise
        except OpdlensError as e:
            if debug_enabled():
                traceback.print_exc(file=sys.stderr)
            typer.echo(f"opdlens: error: {one_line(str(e))}", err=True)
            raise typer.Exit(2) from None
        except StdoutClosed:
            _detach_stdout()
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except KeyboardInterrupt as e:
            scorers = sys.modules.get("opdlens.extrapolation.scorers")
            if scorers is not None:
                scorers.stop_scorers()  # a scorer command in its own session got no signal
            what = "terminated" if isinstance(e, Terminated) else "interrupted"
            typer.echo(f"opdlens: {what}; nothing partial was left behind.", err=True)
            raise typer.Exit(143 if isinstance(e, Terminated) else 130) from None

    return wrapper  # type: ignore[return-value]


def _detach_stdout() -> None:
    """Point stdout at /dev/null, so that the final flush of a broken pipe raises nothing."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno() if sys.stdout is not None else 1)
        os.close(devnull)


def one_line(text: str) -> str:
    """`text` on one line: a message quoting a scorer's or a file's line breaks stays one line."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a program a closed pipe ended


def echo(text: str = "") -> None:
    """Print to stdout; a closed pipe stops the command quietly, a full or closed stdout is one line.

    Raises:
        StdoutClosed: the reader of a pipe went away (EPIPE).
        OutputError: stdout is closed, or its device is full or failing.
    """
    try:
        if sys.stdout is None:
            raise OSError(errno.EBADF, "standard output is closed")
        sys.stdout.write(text + "\n")
    except BrokenPipeError:
        raise StdoutClosed from None
    except (OSError, ValueError) as e:  # ValueError: "I/O operation on closed file"
        raise stdout_error(e) from None


def stdout_error(e: BaseException) -> OutputError:
    """The one-line error for a standard output that cannot be written."""
    why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return OutputError(
        f"cannot write to standard output ({why}); the command's files, if any, are complete — "
        "redirect its output elsewhere to see the summary."
    )


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        echo(f"opdlens {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """See how post-training moved a model's weights, from the checkpoints a run saved."""
