"""A lock inside each temporary directory, so stale-temp cleanup never takes a live one.

`io.paths.remove_stale` removes the temporary directories of dead opdlens processes. A PID says
nothing about a process in another PID namespace (a container) or on another host sharing the
file system, so each temporary directory holds `LOCK_FILE`, on which the process using it holds
an exclusive `flock` until it publishes or removes the directory. The kernel (or the NFS server)
drops the lock when that process dies, however it dies.
"""

from __future__ import annotations

import fcntl
import os
import threading
from contextlib import suppress
from pathlib import Path

__all__ = ["LOCK_FILE", "lock_state", "lock_temp_dir", "moved_temp_dir", "release_temp_dir"]

LOCK_FILE = ".opdlens-lock"
_HELD: dict[str, int] = {}  # temporary directory → descriptor holding its lock
_HELD_LOCK = threading.Lock()


def lock_temp_dir(path: Path) -> None:
    """Hold an exclusive lock on `path/LOCK_FILE` until `release_temp_dir(path)` (or publication)."""
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    with _HELD_LOCK:
        _HELD[str(path)] = fd


def release_temp_dir(path: Path) -> None:
    """Drop the lock `lock_temp_dir` took on `path` (the directory may be gone already)."""
    with _HELD_LOCK:
        fd = _HELD.pop(str(path), None)
    if fd is not None:
        os.close(fd)


def moved_temp_dir(old: Path, new: Path, *, still_temporary: bool) -> None:
    """`old` was renamed to `new`: keep holding its lock there while `new` is still a temporary
    directory; once published under its final name, remove the lock file and drop the lock."""
    with _HELD_LOCK:
        fd = _HELD.pop(str(old), None)
        if fd is not None and still_temporary:
            _HELD[str(new)] = fd
            return
    if fd is not None:
        with suppress(OSError):
            (new / LOCK_FILE).unlink()  # a published output carries no lock file
        os.close(fd)


def lock_state(path: Path) -> str:
    """'held' (a live process uses the directory), 'free' (its owner is gone) or 'none' (no lock
    file: left by an older opdlens, or created an instant ago)."""
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return "none"
    except OSError:
        return "held"  # unreadable, or a symlink: not ours to judge, so not ours to remove
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return "held"
    finally:
        os.close(fd)
    return "free"
