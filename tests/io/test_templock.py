"""io/templock.py: a temporary directory's lock tells any process whether its owner lives."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from opdlens.io.templock import (
    LOCK_FILE,
    lock_state,
    lock_temp_dir,
    moved_temp_dir,
    release_temp_dir,
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
