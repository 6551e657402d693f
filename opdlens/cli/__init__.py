"""The `opdlens` command line: each command is one call into the library."""

from .._memory import release_freed_buffers
from . import analyze, demo, extrapolate, figures, scan  # noqa: F401  (registers the commands)
from ._app import app


def main() -> None:
    """Console-script entry point."""
    release_freed_buffers()
    app()


__all__ = ["app", "main"]
