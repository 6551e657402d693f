"""io/templock.py: a temporary directory's lock tells any process whether its owner lives."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from opdlens.io.paths import TEMP_MARKER, atomic_file, remove_stale
from opdlens.io.templock import (
    LOCK_FILE,
    lock_state,
    lock_temp_dir,
    moved_temp_dir,
    release_temp_dir,
    remove_unlocked_file,
)

_HOLD = """
import sys
from pathlib import Path
from opdlens.io.templock import lock_temp_dir
lock_temp_dir(Path(sys.argv[1]))
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_lock_held_by_another_process_is_seen_until_that_process_dies(tmp_path: Path) -> None:
    folder = tmp_path / "x.opdlens-tmp-1-00000000"
    folder.mkdir()
    assert lock_state(folder) == "none"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert lock_state(folder) == "held"
        assert lock_state(folder) == "held"  # probing does not take the lock away
    finally:
        holder.kill()
        holder.wait()
    assert lock_state(folder) == "free"


def test_this_process_holds_its_lock_until_released(tmp_path: Path) -> None:
    folder = tmp_path / "y.opdlens-tmp-1-00000000"
    folder.mkdir()
    lock_temp_dir(folder)
    assert lock_state(folder) == "held"
    release_temp_dir(folder)
    assert lock_state(folder) == "free"
    release_temp_dir(folder)  # twice is harmless


def test_a_moved_directory_keeps_its_lock_until_published(tmp_path: Path) -> None:
    a, b, final = tmp_path / "a.opdlens-tmp-1-0", tmp_path / "b.opdlens-tmp-1-0", tmp_path / "c"
    a.mkdir()
    lock_temp_dir(a)
    a.rename(b)
    moved_temp_dir(a, b, still_temporary=True)
    assert lock_state(b) == "held"
    b.rename(final)
    moved_temp_dir(b, final, still_temporary=False)
    assert not (final / LOCK_FILE).exists() and lock_state(final) == "none"


def test_a_symlinked_lock_file_is_never_followed(tmp_path: Path) -> None:
    folder = tmp_path / "z.opdlens-tmp-1-00000000"
    folder.mkdir()
    (tmp_path / "elsewhere").write_text("x")
    (folder / LOCK_FILE).symlink_to(tmp_path / "elsewhere")
    assert lock_state(folder) == "held"  # not ours to judge, so never removed


# Opens and locks a file as a writer in another PID namespace would: opdlens' PID check is blind.
_HOLD_FILE = """
import fcntl, sys
f = open(sys.argv[1], "ab")
fcntl.flock(f, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(proc.stdout)


@pytest.mark.parametrize("pid", ["dead", "foreign"])
def test_a_temp_file_locked_by_a_live_writer_survives_stale_cleanup(
    tmp_path: Path, pid: str
) -> None:
    # "foreign": a PID above any Linux pid_max (2^22), as a writer in a container might carry.
    number = _dead_pid() if pid == "dead" else 2**22 + 17
    half = tmp_path / f".metrics.parquet{TEMP_MARKER}{number}-0123abcd"
    half.write_bytes(b"PAR1 half-written")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_FILE, str(half)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert remove_stale(tmp_path, r"\..+", files=True) == []
        assert half.read_bytes() == b"PAR1 half-written"  # kept whole, not truncated
    finally:
        holder.kill()
        holder.wait()
    assert remove_stale(tmp_path, r"\..+", files=True) == [half]  # abandoned: the lock died
    assert not half.exists()


def test_atomic_file_holds_its_temp_file_locked_until_the_rename(tmp_path: Path) -> None:
    target = tmp_path / "metrics.csv"
    with atomic_file(target) as tmp:
        tmp.write_text("a,b\n1,2\n")
        assert remove_unlocked_file(tmp) == "held" and tmp.exists()
        probe = subprocess.run(
            [sys.executable, "-c", "import sys; from pathlib import Path; from opdlens.io.paths "
             "import remove_stale; print(remove_stale(Path(sys.argv[1]), r'\\..+', files=True))",
             str(tmp_path)], capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert probe.stdout.strip() == "[]" and tmp.exists()  # another process leaves it too
    assert target.read_text() == "a,b\n1,2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]
    with target.open("rb") as f:  # the lock went with the rename: nothing holds the output
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_an_unlocked_temp_file_of_a_live_pid_is_kept_only_where_flock_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    half = tmp_path / f".m.csv{TEMP_MARKER}{os.getppid()}-0123abcd"  # a live PID, no lock
    half.write_text("x")

    def no_flock(fd: int, op: int) -> None:
        raise OSError(37, "No locks available")  # ENOLCK: an NFS mount without a lock daemon

    monkeypatch.setattr(fcntl, "flock", no_flock)
    assert remove_unlocked_file(half) == "unknown"
    assert remove_stale(tmp_path, r"\..+", files=True) == [] and half.exists()  # PID fallback
    monkeypatch.undo()
    assert remove_stale(tmp_path, r"\..+", files=True) == [half]  # the lock decides: abandoned
