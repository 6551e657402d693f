"""Byte-level file operations of the writers: copy a byte range between files, fsync a directory."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import BinaryIO

__all__ = ["copy_file", "copy_range", "fsync_dir"]

_PIECE = 8 * 1024 * 1024  # bytes per read when copying by hand
_FICLONE = 0x40049409  # _IOW(0x94, 9, int) in <linux/fs.h>: share extents, copy on write


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


def copy_file(src: Path, dst: Path) -> None:
    """Copy a file to a new `dst`: a reflink where the file system can, else bytes in the kernel."""
    with open(src, "rb") as fs, open(dst, "xb") as fd:
        if sys.platform.startswith("linux"):
            import fcntl

            try:
                fcntl.ioctl(fd.fileno(), _FICLONE, fs.fileno())
                return
            except OSError:
                pass  # no reflinks here (ext4, tmpfs, across file systems): copy the bytes
        copy_range(fs, fd, 0, 0, os.fstat(fs.fileno()).st_size)
