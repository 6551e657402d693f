"""Keep a finished candidate directory: rename it into place, replacing only what opdlens wrote."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import OutputError
from .paths import MARKER, is_opdlens_dir, move_into_place, output_error

__all__ = ["keep_candidate", "kept"]


def kept(dest: Path, command: str) -> bool:
    """Whether `dest` is a directory opdlens kept; False if absent.

    Raises:
        OutputError: something opdlens did not write is there (no marker, or a symbolic link).
    """
    if not os.path.lexists(dest):
        return False
    if is_opdlens_dir(dest):
        return True
    raise OutputError(
        f"{dest} exists and opdlens did not write it (no {MARKER} marker, or a symbolic link); "
        f"{command} replaces only candidates it kept. Move it away, or choose another --out."
    )


def keep_candidate(tmp: Path, dest: Path, command: str) -> None:
    """Move the finished directory `tmp` to `dest`, replacing only a candidate opdlens kept.

    Raises:
        OutputError: `dest` holds something opdlens did not write, or the rename failed (e.g.
            EXDEV: `dest` is on another file system).
    """
    kept(dest, command)  # checked at the last moment: a scorer may have run since
    try:
        move_into_place(tmp, dest)
    except OSError as e:
        raise output_error(dest, e) from None
