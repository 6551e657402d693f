"""The `opdlens` command line: each command is one call into the library."""

import contextlib
import logging
import os
import sys

from . import ablate, analyze, compare, demo, extrapolate, figures, foresee, scan, watch  # noqa: F401  (registers the commands)
from ._app import EXIT_BROKEN_PIPE, _detach_stdout, app, stdout_error


def main() -> None:
    """Run the command line; it ends by raising SystemExit with the exit status."""
    app()


def console() -> None:
    """The `opdlens` console script: `main`, then exit without the interpreter's teardown.

    Freeing torch, pandas and every other module at exit took ~0.5 s here. By the time a
    command returns, each output is closed and renamed into place and every worker has been
    joined, so only the log handlers and the standard streams need flushing. A bug's traceback,
    an exit that is not a plain status, and a run that imported a user's --scorer module (whose
    own open files may count on the teardown) go the usual way.
    """
    try:
        main()
    except SystemExit as e:
        code = 0 if e.code is None else e.code
        code = _flush_stdout(code)
        scorers = sys.modules.get("opdlens.extrapolation.scorers")
        if not isinstance(code, int) or getattr(scorers, "user_code_loaded", False):
            raise SystemExit(code) from None
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # e.g. a closed pipe: the status still counts
                stream.flush()
        os._exit(code)


def _flush_stdout(code: str | int) -> str | int:
    """Flush stdout; a broken pipe ends quietly (141), a full or closed one in one line (2)."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
        return code
    except BrokenPipeError:
        _detach_stdout()
        return EXIT_BROKEN_PIPE if code == 0 else code
    except (OSError, ValueError) as e:
        _detach_stdout()
        with contextlib.suppress(Exception):
            sys.stderr.write(f"opdlens: error: {stdout_error(e)}\n")
        return 2 if code == 0 else code


__all__ = ["app", "console", "main"]
