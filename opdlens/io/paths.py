"""Output paths: outside every input, never through a symlink, marked as opdlens', written atomically.

Every command that writes an output directory (extrapolate, replay, surgery, analyze, figures,
report, demo) marks it with `MARKER`, a small JSON file `.opdlens` naming the command and the
opdlens version. A checkpoint directory gets it as the last file written into its temporary
directory, before the rename that publishes it. A directory of results (analyze, figures,
report, replay, demo) gets it with `"complete": false` when opdlens creates or claims the
directory, so an interrupted run's cache stays re-usable, and it is rewritten last with
`"complete": true`. `--overwrite` and re-use accept only a real directory (not a symlink)
holding that marker; anything else a command did not create is refused and left untouched.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from ..errors import OptionError, OutputError
from .fileops import fsync_dir
from .templock import (
    LOCK_FILE,
    lock_state,
    lock_temp_dir,
    lock_temp_file,
    moved_temp_dir,
    release_temp_dir,
    remove_unlocked_file,
)

logger = logging.getLogger(__name__)

__all__ = [
    "LOCK_FILE",
    "MARKER",
    "OLD_MARKER",
    "TEMP_MARKER",
    "atomic_file",
    "check_output",
    "ensure_outside",
    "is_opdlens_dir",
    "lock_temp_dir",
    "move_into_place",
    "output_dir",
    "output_error",
    "output_path",
    "read_marker",
    "release_temp_dir",
    "remove_stale",
    "restore_set_aside",
    "short_name",
    "temp_name",
    "writable_dir",
    "write_marker",
    "write_text_atomic",
]

MARKER = ".opdlens"
# A name holding TEMP_MARKER is an unfinished write; OLD_MARKER, a replaced output being deleted.
TEMP_MARKER = ".opdlens-tmp-"
OLD_MARKER = ".opdlens-old-"
_MARKER_MAX_BYTES = 64 * 1024

_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def output_path(out: str | Path) -> Path:
    """Absolute `out` with its parent resolved and its last component kept as given.

    A symlink at `out` stays a symlink, so the checks below see it instead of its target.

    Raises:
        OptionError: `out` is not valid UTF-8, passes through a symlink loop, or through a
            symlink to nothing (where creating it would make directories at the link's target).
    """
    path = Path(out).expanduser()
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise OptionError(
            f"--out {str(path)!r} is not valid UTF-8; the tables opdlens writes (parquet, "
            "JSON) record their path as text. Choose a UTF-8 name."
        ) from None
    whole = path.name in ("", ".", "..")  # no last component of its own: "." or "x/.."
    parent = path.absolute() if whole else path.absolute().parent
    for p in (parent, *parent.parents):
        if os.path.islink(p) and not os.path.exists(p):
            raise OptionError(
                f"--out {path} passes through {p}, a symbolic link to {os.readlink(p)}, which "
                "does not exist (or loops); opdlens never creates directories through a "
                "symlink. Create the target, or choose another --out."
            )
    try:
        return parent.resolve() if whole else parent.resolve() / path.name
    except (RuntimeError, OSError) as e:  # RuntimeError: Python < 3.13's "Symlink loop"
        raise OptionError(f"--out {path} cannot be resolved: {e}. Choose another --out.") from None


def output_error(path: str | Path, error: OSError) -> OutputError:
    """The one-line error for an OSError raised while writing an output at `path`."""
    if isinstance(error, OutputError):
        return error
    where = error.filename if error.filename else path
    name = errno.errorcode.get(error.errno or 0, "")
    reason = error.strerror or str(error)
    hint = {
        errno.ENOSPC: "free some space or choose another --out",
        errno.EDQUOT: "free some space or choose another --out",
        errno.EROFS: "the file system is read-only: choose a writable --out",
        errno.EACCES: "choose a directory you can write to",
        errno.EPERM: "choose a directory you can write to",
    }.get(error.errno or 0, "check the path, or choose another --out")
    return OutputError(
        f"Cannot write the output {where}: {reason}{f' ({name})' if name else ''}; nothing "
        f"partial was kept. {hint[0].upper()}{hint[1:]}."
    )


def ensure_outside(out: str | Path, inputs: Iterable[Path], what: str = "output") -> Path:
    """Refuse `out` when it equals, contains or lies inside an input; return `output_path(out)`."""
    path = output_path(out)
    try:
        real = path.resolve()  # where writes would land, symlinks followed
    except (RuntimeError, OSError) as e:  # `out` itself is a link in a loop
        raise OptionError(f"--out {path} cannot be resolved: {e}. Choose another --out.") from None
    for p in inputs:
        p = Path(p).expanduser().resolve()
        for o in {path, real}:
            if o == p or p in o.parents or o in p.parents:
                raise OptionError(
                    f"Refusing {what} directory {path}: it overlaps the input {p}, which must "
                    "never be modified. Choose a directory outside the run."
                )
    return path


def _kind(mode: int) -> str:
    return next(text for test, text in _KINDS if test(mode))


def read_marker(path: str | Path) -> dict[str, object] | None:
    """The marker of a directory opdlens wrote, or None (no marker, or not a real directory)."""
    path = Path(path)
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return None
        st = os.lstat(path / MARKER)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size > _MARKER_MAX_BYTES:
        return None
    try:
        data = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("written_by") == "opdlens" else None


def is_opdlens_dir(path: str | Path) -> bool:
    """True for a real directory (not a symlink) holding the marker opdlens writes."""
    return read_marker(path) is not None


def marker_text(command: str, *, complete: bool = True) -> str:
    """The JSON text of a marker for `command`."""
    from .._version import __version__

    record = {
        "written_by": "opdlens",
        "command": command,
        "opdlens_version": __version__,
        "complete": complete,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return json.dumps(record, indent=2) + "\n"


def write_marker(directory: Path, command: str, *, complete: bool = True) -> None:
    """Write (atomically) the marker that says opdlens wrote `directory`."""
    write_text_atomic(Path(directory) / MARKER, marker_text(command, complete=complete))


def check_output(
    out: str | Path,
    *,
    inputs: Iterable[Path] = (),
    overwrite: bool = False,
    reuse: bool = False,
    allow_empty: bool = False,
) -> Path:
    """Refuse an `out` opdlens must not write to; create nothing. Returns `output_path(out)`.

    Absent paths pass. An existing path passes only as a real directory that is either
    marked by opdlens (with `overwrite` or `reuse`) or empty (with `allow_empty`).
    """
    path = ensure_outside(out, inputs, "--out")
    try:
        if restore_set_aside(path):
            path = ensure_outside(out, inputs, "--out")
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    except OSError as e:
        raise OptionError(
            f"--out {path} cannot be used: {e.strerror or e}. Choose a path in a directory."
        ) from None
    if stat.S_ISLNK(st.st_mode):
        raise OptionError(
            f"--out {path} is a symbolic link; opdlens never writes or deletes through one. Pass "
            "the real path it points to, or a new directory."
        )
    if not stat.S_ISDIR(st.st_mode):
        raise OptionError(
            f"--out {path} exists and is {_kind(st.st_mode)}, not a directory; opdlens replaces "
            "only directories it wrote. Choose a new directory."
        )
    if is_opdlens_dir(path):
        if overwrite or reuse:
            return path
        raise OptionError(
            f"Output directory {path} already exists. Choose a new directory, or pass "
            "overwrite=True (--overwrite) to replace it."
        )
    empty = not any(path.iterdir())
    if empty and allow_empty:
        return path
    if overwrite:
        raise OptionError(
            f"Refusing to replace {path}: opdlens did not write it (no {MARKER} marker inside), "
            "and --overwrite replaces only directories opdlens wrote. Choose a new directory, "
            "or remove it yourself."
        )
    if allow_empty:
        raise OptionError(
            f"Output directory {path} is not empty and opdlens did not write it (no {MARKER} "
            "marker inside); opdlens writes only into a new or empty directory, or one it "
            "wrote. Choose another --out."
        )
    raise OptionError(
        f"Output directory {path} already exists and opdlens did not write it (no {MARKER} "
        "marker inside). Choose a new directory; --overwrite replaces only one opdlens wrote."
    )


def writable_dir(out: str | Path, inputs: Iterable[Path] = (), what: str = "output") -> Path:
    """Create `out` (outside every input) for a library call that writes named files into it.

    Unlike a command's `output_dir`, it adds files to any directory the caller names, even a
    full one, but refuses a path that exists and is not a directory.
    """
    path = ensure_outside(out, inputs, what)
    if path.exists() and not path.is_dir():
        raise OptionError(
            f"{path} exists and is {_kind(os.lstat(path).st_mode)}, not a directory. Choose a "
            "directory for the output."
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(path, e) from None
    return path


@contextmanager
def output_dir(
    out: str | Path,
    command: str,
    *,
    inputs: Iterable[Path] = (),
    overwrite: bool = False,
    reuse: bool = True,
    keep_if_failed: bool = False,
) -> Iterator[Path]:
    """Check, create and mark a directory of results; mark it complete when the block ends.

    With `overwrite` (and not `reuse`), the old contents of a marked directory are removed on
    entry. A failed block leaves an empty directory it created only with `keep_if_failed`.
    Yields the absolute path (`output_path(out)`).
    """
    path = check_output(out, inputs=inputs, overwrite=overwrite, reuse=reuse, allow_empty=True)
    created = False
    old_marker = None
    top = first_missing(path)  # what mkdir creates, removed again if nothing gets written
    try:
        try:
            path.mkdir(parents=True)
            created = True
        except FileExistsError:
            path = check_output(path, overwrite=overwrite, reuse=reuse, allow_empty=True)
        if (path / MARKER).is_file():
            old_marker = (path / MARKER).read_text(encoding="utf-8")
            _check_same_command(path, command, overwrite and not reuse)
        if overwrite and not reuse and old_marker is not None:
            _clear(path)
        elif old_marker is not None:
            remove_stale(path, r"\..+", files=True)  # files a killed run of ours left half-written
        write_marker(path, command, complete=False)
    except OSError as e:
        if created:
            with suppress(OSError):
                (path / MARKER).unlink()
            remove_empty(path, top)
        raise output_error(path, e) from None
    try:
        yield path
    except BaseException:
        for sub in path.iterdir():  # e.g. a cache/ nothing was written into
            if sub.is_dir() and not sub.is_symlink():
                with suppress(OSError):
                    sub.rmdir()
        if not keep_if_failed and {p.name for p in path.iterdir()} == {MARKER}:
            if old_marker is not None:
                write_text_atomic(path / MARKER, old_marker)
            else:
                (path / MARKER).unlink()
                if created:
                    remove_empty(path, top)
        raise
    write_marker(path, command, complete=True)


def first_missing(path: Path) -> Path | None:
    """The outermost of `path` and its parents that does not exist (None if `path` exists)."""
    missing = None
    for p in (path, *path.parents):
        if os.path.lexists(p):
            return missing
        missing = p
    return missing


def remove_empty(path: Path, top: Path | None) -> None:
    """Remove `path` and its parents up to `top` while they are empty directories."""
    if top is None:
        return
    for p in (path, *path.parents):
        try:
            p.rmdir()
        except OSError:
            return
        if p == top:
            return


def _check_same_command(path: Path, command: str, replacing: bool) -> None:
    """Refuse to add to (or re-mark) the output of another opdlens command; replacing is fine."""
    other = (read_marker(path) or {}).get("command")
    if other is not None and other != command and not replacing:
        raise OptionError(
            f"--out {path} holds the output of `opdlens {other}`; `opdlens {command}` does not "
            "add files to another command's output. Choose a new directory."
        )


def _clear(directory: Path) -> None:
    """Remove everything inside a marked directory except its marker, never following links."""
    for entry in directory.iterdir():
        if entry.name == MARKER:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def short_name(name: str) -> str:
    """`name`, or for a long one its start and a hash: what temporary names are built from.

    A name near the file system's 255-byte limit would pass it once a temporary suffix is added.
    """
    if len(os.fsencode(name)) <= 120:
        return name
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
    return f"{name[:40]}~{digest}"


def temp_name(name: str) -> str:
    """A unique temporary sibling name for `name`, recognisable by `remove_stale`."""
    return f"{short_name(name)}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"


def restore_set_aside(target: Path) -> bool:
    """Rename back the old output an interrupted `move_into_place` set aside; True if it did.

    Only when `target` is gone and the set-aside directory is a real, marked opdlens output of
    a process that no longer runs (killed between move_into_place's two renames).
    """
    if os.path.lexists(target):
        return False
    stem = re.escape(short_name(target.name)) + re.escape(OLD_MARKER)
    pattern = re.compile(rf"^{stem}(\d+)-[0-9a-f]{{8}}$")
    try:
        entries = sorted(
            os.scandir(target.parent), key=lambda e: e.stat(follow_symlinks=False).st_mtime
        )
    except OSError:
        return False
    for entry in reversed(entries):  # the newest first
        match = pattern.match(entry.name)
        if (
            match is None
            or not entry.is_dir(follow_symlinks=False)
            or not is_opdlens_dir(entry.path)
        ):
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        os.rename(entry.path, target)
        logger.warning(
            "restored %s from %s, where an interrupted --overwrite had set it aside",
            target,
            entry.name,
        )
        return True
    return False


def move_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished directory `tmp` to `target`, durably.

    An existing `target` — which the caller has checked is a real directory opdlens wrote — is
    renamed aside first and deleted once `tmp` is in place, or renamed back if the move fails.
    """
    old: Path | None = None
    if os.path.lexists(target):
        old = target.with_name(temp_name(target.name).replace(TEMP_MARKER, OLD_MARKER))
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    moved_temp_dir(tmp, target, still_temporary=TEMP_MARKER in target.name)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale(parent: Path, stem: str, *, files: bool = False) -> list[Path]:
    """Remove temporary directories of dead opdlens processes named after `stem` in `parent`.

    `stem` is a regular expression for the output's own name. Only real directories named
    `<stem>.opdlens-tmp-<pid>-<8 hex>` (or `.opdlens-old-`) whose process is gone are removed;
    with `files`, regular files so named too (what `atomic_file` leaves when killed). Whether
    the process is gone is told by its lock (see io.templock), or by its PID where none is held.
    """
    pattern = re.compile(
        rf"^(?:{stem})(?:{re.escape(TEMP_MARKER)}|{re.escape(OLD_MARKER)})(\d+)-[0-9a-f]{{8}}"
    )
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        is_dir = entry.is_dir(follow_symlinks=False)
        if match is None or not (is_dir or (files and entry.is_file(follow_symlinks=False))):
            continue
        pid = int(match.group(1))
        if pid == os.getpid():
            continue
        # A lock says whether the owner lives, in any PID namespace or host (a directory's on its
        # lock file, a file's on itself); only where there is none is this namespace's PID asked.
        if is_dir:
            state = lock_state(Path(entry.path))
        else:  # removed at once when unlocked, so no writer can lock it in between
            state = remove_unlocked_file(Path(entry.path)).replace("unknown", "none")
        if state == "held" or (state == "none" and _alive(pid)):
            continue
        if is_dir:
            shutil.rmtree(entry.path, ignore_errors=True)
        elif state == "none":
            _unlink_quietly(Path(entry.path))
        logger.info("removed %s, left by process %d which no longer runs", entry.path, pid)
        removed.append(Path(entry.path))
    return removed


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` when the block succeeds.

    On any error the temporary file is removed, and an OSError becomes a one-line OutputError.
    """
    path = Path(path)
    tmp = path.with_name(f".{temp_name(path.name)}")
    lock = lock_temp_file(tmp)  # held until the rename: remove_stale leaves a locked file alone
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        _unlink_quietly(tmp)
        raise output_error(path, e) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise
    finally:
        if lock is not None:
            os.close(lock)


def _unlink_quietly(path: Path) -> None:
    with suppress(OSError):
        path.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file under a temporary name, then rename it into place."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
