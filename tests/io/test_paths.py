"""Tests for io/paths.py: only what opdlens wrote is replaced, unfinished files never load,
OSErrors are one line, outputs stay outside every input."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from foreign_outputs import REFUSED, foreign_out, user_dir
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from opdlens.errors import OpdlensError, OutputError
from opdlens.io.paths import (
    MARKER,
    atomic_file,
    check_output,
    ensure_outside,
    is_opdlens_dir,
    move_into_place,
    output_dir,
    read_marker,
    remove_stale,
    writable_dir,
    write_text_atomic,
)
from opdlens.io.writer import TEMP_MARKER, CheckpointWriter, TensorSpec

SPECS = [TensorSpec("a", (4, 4), torch.float32), TensorSpec("b", (3,), torch.bfloat16)]


def _write(out: Path, value: float = 1.0, **kw: object) -> Path:
    with CheckpointWriter(out, SPECS, **kw) as w:  # type: ignore[arg-type]
        w.write("a", torch.full((4, 4), value))
        w.write("b", torch.full((3,), value, dtype=torch.bfloat16))
    return out


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(proc.stdout)


def test_a_checkpoint_carries_the_marker_written_last(tmp_path: Path) -> None:
    out = _write(tmp_path / "out", metadata={"opdlens_operation": "extrapolate"})
    marker = read_marker(out)
    assert marker is not None and marker["command"] == "extrapolate" and marker["complete"]
    # Last: no file of the checkpoint is newer than the marker.
    newest = max(p.stat().st_mtime_ns for p in out.iterdir())
    assert (out / MARKER).stat().st_mtime_ns == newest
    assert is_opdlens_dir(out) and not is_opdlens_dir(tmp_path)


def test_overwrite_replaces_a_marked_directory(tmp_path: Path) -> None:
    out = _write(tmp_path / "out", 1.0)
    _write(out, 2.0, overwrite=True)
    assert torch.equal(load_file(out / "model.safetensors")["a"], torch.full((4, 4), 2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_never_follows_a_symlink(tmp_path: Path) -> None:
    user = user_dir(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(user)
    with pytest.raises(OpdlensError, match=r"link is a symbolic link; opdlens never writes"):
        _write(link, overwrite=True)
    # Even a symlink to a directory opdlens wrote is not replaced: only the path itself could be.
    ours = _write(tmp_path / "ours")
    link2 = tmp_path / "link2"
    link2.symlink_to(ours)
    with pytest.raises(OpdlensError, match="symbolic link"):
        _write(link2, 3.0, overwrite=True)
    assert link.is_symlink() and link2.is_symlink() and os.readlink(link) == str(user)
    assert (user / "thesis.tex").read_text() == "years of work"
    assert torch.equal(load_file(ours / "model.safetensors")["a"], torch.ones(4, 4))


@pytest.mark.parametrize("kind", ["file", "fifo", "unmarked", "empty"])
def test_overwrite_refuses_what_opdlens_did_not_write(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("notes")
        match = "exists and is a regular file, not a directory"
    elif kind == "fifo":
        os.mkfifo(out)
        match = "exists and is a FIFO, not a directory"
    else:
        out.mkdir()
        if kind == "unmarked":
            (out / "thesis.tex").write_text("years of work")
        match = r"Refusing to replace .*out: opdlens did not write it \(no \.opdlens marker"
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(OpdlensError, match=match):
        _write(out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temp dir either
    if kind == "file":
        assert out.read_text() == "notes"
    elif kind == "fifo":
        assert out.is_fifo()
    elif kind == "unmarked":
        assert (out / "thesis.tex").read_text() == "years of work"


def test_a_forged_or_linked_marker_is_not_a_marker(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"written_by": "someone else"}))
    assert not is_opdlens_dir(out)
    real = _write(tmp_path / "real")
    (out / MARKER).unlink()
    (out / MARKER).symlink_to(real / MARKER)  # a link to a real marker does not count
    assert not is_opdlens_dir(out)
    with pytest.raises(OpdlensError, match="opdlens did not write it"):
        check_output(out, overwrite=True)


def test_unfinished_files_never_load(tmp_path: Path) -> None:
    with CheckpointWriter(tmp_path / "out", SPECS) as w:
        w.write("a", torch.ones(4, 4))
        w.write("b", torch.ones(3, dtype=torch.bfloat16))
        assert w._tmp is not None
        unfinished = w._tmp / "model.safetensors"
        assert unfinished.read_bytes()[:8] == bytes(8)  # header length 0 until commit
        with pytest.raises(SafetensorError):
            safe_open(unfinished, "pt")
    assert torch.equal(load_file(tmp_path / "out" / "model.safetensors")["a"], torch.ones(4, 4))


def test_stale_temp_dirs_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead, alive = _dead_pid(), os.getppid()
    stale = tmp_path / f"out{TEMP_MARKER}{dead}-0123abcd"
    live = tmp_path / f"out{TEMP_MARKER}{alive}-0123abcd"
    other = tmp_path / f"other{TEMP_MARKER}{dead}-0123abcd"  # another output's leftover
    odd = tmp_path / f"out{TEMP_MARKER}{dead}-notmine"  # not opdlens' naming
    for d in (stale, live, other, odd):
        d.mkdir()
        (d / "model.safetensors").write_bytes(bytes(16))
    link = tmp_path / f"out{TEMP_MARKER}{dead}-89abcdef"
    link.symlink_to(user_dir(tmp_path))
    _write(tmp_path / "out")
    assert not stale.exists()
    assert live.is_dir() and other.is_dir() and odd.is_dir() and link.is_symlink()
    assert (tmp_path / "user" / "thesis.tex").is_file()
    assert remove_stale(tmp_path, "out") == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_failing_write_is_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch, code: int
) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("opdlens.io.writer._copy_range", full)
    monkeypatch.setattr("opdlens.io.writer.CheckpointWriter._done", full)
    with pytest.raises(OutputError, match=rf"Cannot write the output .*out{TEMP_MARKER}") as err:
        _write(tmp_path / "out")
    assert os.strerror(code) in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, OSError) and list(tmp_path.iterdir()) == []


def test_a_read_only_parent_is_one_line(tmp_path: Path, monkeypatch) -> None:
    def read_only(self: Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(OutputError, match=r"Read-only file system \(EROFS\).*read-only"):
        _write(tmp_path / "new" / "out")


def test_atomic_file_removes_its_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.csv"
    no_space = r"metrics.csv: No space left on device \(ENOSPC\)"
    with pytest.raises(OutputError, match=no_space), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(KeyError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise KeyError("a bug keeps its own type")
    assert list(tmp_path.iterdir()) == []
    with atomic_file(target) as tmp:
        tmp.write_text("whole")
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


def test_output_dir_claims_marks_and_reuses(tmp_path: Path) -> None:
    out = tmp_path / "results"
    with output_dir(out, "analyze") as path:
        assert read_marker(path) is not None and read_marker(path)["complete"] is False
        (path / "metrics.csv").write_text("x")
    assert read_marker(out)["complete"] is True
    half = out / f".metrics.csv{TEMP_MARKER}{os.getppid()}-0123abcd"  # left unlocked: abandoned
    busy = out / f".metrics.csv{TEMP_MARKER}{_dead_pid()}-0123abcd"  # locked by a live writer
    half.write_text("half")
    busy.write_text("half")
    hold = ("import fcntl, sys; f = open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX); "
            "print(1, flush=True); input()")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", hold, str(busy)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "1"
        with output_dir(out, "analyze") as path:  # its own directory: re-used, contents kept
            assert (path / "metrics.csv").read_text() == "x"
            assert not half.exists() and busy.exists()
    finally:
        holder.kill()
        holder.wait()
    empty = tmp_path / "empty"
    empty.mkdir()
    with output_dir(empty, "figures"):
        pass
    assert is_opdlens_dir(empty)


def test_output_dir_leaves_nothing_when_it_failed_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bad label"), output_dir(tmp_path / "new", "figures"):
        raise ValueError("bad label")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="bad label"), output_dir(empty, "figures"):
        raise ValueError("bad label")
    assert [p.name for p in tmp_path.iterdir()] == ["empty"] and not any(empty.iterdir())


@pytest.mark.parametrize("kind", ["file", "symlink", "unmarked"])
def test_output_dir_refuses_what_opdlens_did_not_write(tmp_path: Path, kind: str) -> None:
    out = foreign_out(tmp_path, kind)
    with pytest.raises(OpdlensError, match=re.escape(REFUSED[kind])), output_dir(out, "analyze"):
        pytest.fail("the block must not run")
    assert out.is_symlink() or not (out / MARKER).exists()


def test_replay_overwrite_clears_only_its_own_directory(tmp_path: Path) -> None:
    out = tmp_path / "replay"
    with output_dir(out, "replay", reuse=False) as path:
        (path / "step-1-candidate-1").mkdir()
        (path / "history.csv").write_text("old")
    with pytest.raises(OpdlensError, match="already exists"):
        check_output(out, allow_empty=True)
    user = user_dir(tmp_path)
    (out / "link").symlink_to(user)
    with output_dir(out, "replay", overwrite=True, reuse=False) as path:
        assert [p.name for p in path.iterdir()] == [MARKER]
    assert (user / "thesis.tex").read_text() == "years of work"


def test_outputs_overlapping_an_input_are_refused_even_through_a_link(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoint-1").mkdir(parents=True)
    (tmp_path / "link").symlink_to(run / "checkpoint-1")
    overlap = r"Refusing figures directory .*: it overlaps the input .*run"
    for out in [run, run / "checkpoint-1" / "plots", tmp_path, tmp_path / "link" / "plots"]:
        with pytest.raises(OpdlensError, match=overlap):
            ensure_outside(out, [run], "figures")
    assert ensure_outside(tmp_path / "plots", [run]) == tmp_path / "plots"


def test_writable_dir_adds_to_any_directory_but_refuses_a_file(tmp_path: Path) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    assert writable_dir(full) == full and (full / "notes.txt").read_text() == "mine"
    assert writable_dir(tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OpdlensError, match=r"file exists and is a regular file, not a directory"):
        writable_dir(tmp_path / "file")


def test_write_text_atomic_replaces_whole_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    target.write_text("old")
    write_text_atomic(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_move_into_place_replaces_the_old_directory_or_puts_it_back(tmp_path: Path) -> None:
    target, tmp = tmp_path / "out", tmp_path / "out.new"
    target.mkdir()
    (target / "old.txt").write_text("old")
    tmp.mkdir()
    (tmp / "new.txt").write_text("new")
    move_into_place(tmp, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the old one is gone
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    # A move that fails (here: nothing to move) leaves the existing directory where it was.
    with pytest.raises(FileNotFoundError):
        move_into_place(tmp_path / "missing", target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (target / "new.txt").read_text() == "new"
