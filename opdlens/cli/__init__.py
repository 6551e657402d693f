"""The `opdlens` command line: each command is one call into the library."""

from . import ablate, analyze, demo, extrapolate, figures, foresee, scan  # noqa: F401  (registers the commands)
from ._app import app


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
