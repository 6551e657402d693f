"""A lock inside each temporary directory, so stale-temp cleanup never takes a live one.

`io.paths.remove_stale` removes the temporary directories of dead opdlens processes. A PID says
nothing about a process in another PID namespace (a container) or on another host sharing the
file system, so each temporary directory holds `LOCK_FILE`, on which the process using it holds
an exclusive `flock` until it publishes or removes the directory. The kernel (or the NFS server)
drops the lock when that process dies, however it dies.

A temporary file (`io.paths.atomic_file`) is locked the same way, on the file itself, while it
is written; stale-temp cleanup removes it only while it can take that lock.
"""

from __future__ import annotations

import fcntl
import os
import threading
from contextlib import suppress
from pathlib import Path

__all__ = [
    "LOCK_FILE",
    "lock_state",
    "lock_temp_dir",
    "lock_temp_file",
    "moved_temp_dir",
    "release_temp_dir",
    "remove_unlocked_file",
]

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


def lock_temp_file(path: Path) -> int | None:
    """Create the new file `path` and hold an exclusive lock on it; the descriptor holding it
    (close it to release), or None where the file cannot be created or locked here (the file
    system has no flock): then only a PID says whether its writer lives."""
    for _ in range(3):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None  # e.g. a parent the caller creates inside its block; its write reports
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(path, fd):
                return fd
        except OSError:
            os.close(fd)
            return None  # the file stays, unlocked, for the caller to write
        os.close(fd)  # a cleanup took the file between its creation and the lock: again
    return None


def remove_unlocked_file(path: Path) -> str:
    """Remove the temporary file `path` if no process holds its lock: 'removed', 'held' (kept),
    or 'unknown' (it cannot be locked here, so the caller must judge it another way)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return "removed"
    except OSError:
        return "held"  # unreadable, or swapped for a symlink: not ours to judge
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "held"
        except OSError:
            return "unknown"
        if _same_file(path, fd):  # unlinked while locked: a writer that locks next sees it gone
            with suppress(FileNotFoundError):
                path.unlink()
        return "removed"
    finally:
        os.close(fd)


def _same_file(path: Path, fd: int) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)
