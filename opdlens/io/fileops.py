"""Byte-level file operations of the writers: copy a byte range between files, fsync a directory."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

__all__ = ["copy_range", "fsync_dir"]

_PIECE = 8 * 1024 * 1024  # bytes per read when copying by hand


def copy_range(src: io.BufferedReader, dst: BinaryIO, src_at: int, dst_at: int, size: int) -> int:
    """Copy `size` bytes between files by offset; returns how many were there to copy."""
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(
                src.fileno(), dst.fileno(), size - done, src_at + done, dst_at + done
            )
            if n == 0:
                return done  # end of the source file
            done += n
        return done
    except (AttributeError, OSError):
        pass  # no copy_file_range here, or not between these file systems: copy by hand
    buf = bytearray(min(_PIECE, size - done))
    src.seek(src_at + done)
    dst.seek(dst_at + done)
    while done < size:
        view = memoryview(buf)[: min(len(buf), size - done)]
        n = src.readinto(view)
        if not n:
            return done
        dst.write(view[:n])
        done += n
    return done


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (new, renamed files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
