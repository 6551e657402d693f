"""`python -m opdlens …` runs the command line, for environments without the console script."""

from .cli import console

console()
