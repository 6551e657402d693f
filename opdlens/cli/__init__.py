"""The `opdlens` command line: each command is one call into the library."""

import ctypes
import sys

from . import analyze, demo, extrapolate, figures, scan  # noqa: F401  (registers the commands)
from ._app import app

_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _return_freed_tensors_to_os() -> None:
    # glibc keeps freed buffers below its (self-raising) mmap threshold on the heap, so
    # streaming one large tensor after another grows RSS by several dead tensors. A fixed
    # 1 MiB threshold maps every tensor buffer separately and unmaps it when freed.
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 1 << 20)
        except (OSError, AttributeError):
            return  # not glibc: nothing to tune


def main() -> None:
    """Console-script entry point."""
    _return_freed_tensors_to_os()
    app()


__all__ = ["app", "main"]
