"""ablate against hostile surroundings: edited inputs, symlinked candidates/, other namespaces."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from opdlens import open_run
from opdlens.extrapolation.ablate import SCORES_FILE, ablate

from .test_ablate import Counting, distance_score


def _edit_in_place_keeping_size_and_mtime(file: Path, tensor: str) -> None:
    """Overwrite the first value of `tensor` inside a safetensors file: same size, same mtime."""
    st = os.stat(file)
    with safe_open(file, "np") as f:
        value = f.get_tensor(tensor).reshape(-1)[0]
    header_len = int.from_bytes(file.read_bytes()[:8], "little")
    header = json.loads(file.read_bytes()[8 : 8 + header_len])
    begin = 8 + header_len + header[tensor]["data_offsets"][0]
    with open(file, "r+b") as fh:
        fh.seek(begin)
        fh.write(np.float32(value + 3.0).tobytes())
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(file).st_size == st.st_size and os.stat(file).st_mtime_ns == st.st_mtime_ns


def test_an_in_place_edit_with_the_same_size_and_mtime_starts_afresh(
    linear_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = ablate(open_run(linear_run), 4, distance_score, by="block", out=out)
    _edit_in_place_keeping_size_and_mtime(
        linear_run / "checkpoint-4" / "model.safetensors", "model.layers.1.mlp.up_proj.weight"
    )
    again = Counting()
    res = ablate(open_run(linear_run), 4, again, by="block", out=out)
    fresh = ablate(open_run(linear_run), 4, distance_score, by="block", out=tmp_path / "fresh")
    assert res.ablation.attrs["reused"] == 0 and again.calls == 2 + 2 * 5
    assert any("another run, step or scorer" in w for w in res.ablation.attrs["warnings"])
    assert res.ablation.equals(fresh.ablation)
    assert res.ablation["score_full"].iloc[0] != first.ablation["score_full"].iloc[0]
    saved = json.loads((out / SCORES_FILE).read_text())["scores"]
    assert saved["full"] == fresh.ablation["score_full"].iloc[0]
    # Unchanged bytes are still recognised: the same command again reuses every score.
    same = Counting()
    assert ablate(open_run(linear_run), 4, same, by="block", out=out).ablation.attrs["reused"] == 12
    assert same.calls == 0


def _cli_fails(argv: list[str], *needles: str) -> None:
    from typer.testing import CliRunner

    from opdlens.cli import app

    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert all(n in lines[0] for n in needles), lines[0]


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["ablate", "--step", "4", "--scorer", "hindsight", "--ranks", "2000000000"],
         ["--ranks", "from 1 to 16777216", "got 2000000000"]),
        (["ablate", "--step", "4", "--scorer", "hindsight", "--ranks",
          ",".join(map(str, range(1, 2000)))], ["at most 1024 ranks", "got 1999 ranks"]),
        (["foresee", "--max-candidates", "100000000"],
         ["--max-candidates", "from 1 to 100", "Got 100000000"]),
        (["replay", "--scorer", "hindsight", "--max-candidates", "100000000"],
         ["--max-candidates", "from 1 to 100", "Got 100000000"]),
    ],
    ids=["ablate-rank", "ablate-many-ranks", "foresee", "replay"],
)  # fmt: skip
def test_sizes_asked_for_are_bounded(linear_run: Path, tmp_path: Path, argv, needles) -> None:
    out = tmp_path / "out"
    _cli_fails([argv[0], str(linear_run), *argv[1:], "--out", str(out)], *needles)
    assert not out.exists()  # refused before anything was created


def test_a_rank_above_every_matrix_keeps_each_update_whole(linear_run: Path, tmp_path) -> None:
    """k far beyond min(rows, cols) is θ_T itself, with no list of k entries built."""
    res = ablate(open_run(linear_run), 4, distance_score, ranks=[1, 2**24], out=tmp_path / "o")
    curve = res.rank_curve.set_index("k")
    assert curve.loc[2**24, "energy_k"] == 1.0
    assert curve.loc[2**24, "score"] == res.ablation["score_full"].iloc[0]


def _user_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _kept_once(run: Path, out: Path) -> None:
    ablate(open_run(run), 4, distance_score, by="block", mode="drop", keep=True, out=out)
    assert (out / "candidates" / "full" / ".opdlens").is_file()


def test_keep_never_writes_through_a_symlinked_candidates_dir(
    linear_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "abk2"
    _kept_once(linear_run, out)
    user = tmp_path / "user_dir"
    for name in ("full", "drop-block-mlp"):
        (user / name).mkdir(parents=True)
        (user / name / "notes.txt").write_text(f"my {name} notes")
    shutil.rmtree(out / "candidates")
    (out / "candidates").symlink_to(user)
    (out / SCORES_FILE).unlink()  # every candidate must be written again
    before = _user_files(user)
    from opdlens import OpdlensError

    with pytest.raises(OpdlensError, match="candidates is not a real directory"):
        ablate(open_run(linear_run), 4, distance_score, mode="drop", keep=True, out=out)
    _cli_fails(["ablate", str(linear_run), "--step", "4", "--scorer", "hindsight", "--keep",
                "--out", str(out)], "not a real directory", "never through a link")  # fmt: skip
    assert _user_files(user) == before and (out / "candidates").is_symlink()


def test_keep_does_not_take_a_users_full_for_a_kept_candidate(
    linear_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "abk"
    _kept_once(linear_run, out)
    full = out / "candidates" / "full"
    shutil.rmtree(full)
    full.mkdir()
    (full / "mine.txt").write_text("a user's directory named full")
    again = Counting()
    from opdlens import OpdlensError

    with pytest.raises(OpdlensError, match=r"candidates/full exists and opdlens did not write it"):
        ablate(open_run(linear_run), 4, again, by="block", mode="drop", keep=True, out=out)
    assert again.calls == 0  # refused before anything was scored
    assert (full / "mine.txt").read_text() == "a user's directory named full"
    # A symlink there is no kept candidate either, and is neither followed nor removed.
    shutil.rmtree(full)
    full.symlink_to(tmp_path)
    with pytest.raises(OpdlensError, match="opdlens did not write it"):
        ablate(open_run(linear_run), 4, again, by="block", mode="drop", keep=True, out=out)
    assert full.is_symlink()


def test_keep_across_file_systems_is_one_line(
    linear_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    real_rename = os.rename

    def rename(src, dst):  # candidates/ on another file system, as a mount point would put it
        if Path(dst).parent.name == "candidates":
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src), None, str(dst))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    out = tmp_path / "out"
    from opdlens import OutputError

    with pytest.raises(OutputError, match=r"Cannot write the output .*: Invalid cross-device link"):
        ablate(open_run(linear_run), 4, distance_score, mode="drop", keep=True, out=out)
    assert not [p for p in out.iterdir() if ".opdlens-tmp-" in p.name]  # nothing half-moved
    _cli_fails(["ablate", str(linear_run), "--step", "4", "--scorer", "hindsight", "--keep",
                "--mode", "drop", "--out", str(tmp_path / "out2")], "cross-device")  # fmt: skip


_HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""


def _dead_pid() -> int:
    """A PID no process of this namespace has: what a live process of another one looks like."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_cleanup_leaves_a_live_run_of_another_pid_namespace_alone(
    linear_run: Path, tmp_path: Path
) -> None:
    from opdlens.io.paths import LOCK_FILE, TEMP_MARKER

    out = tmp_path / "out"
    ablate(open_run(linear_run), 4, distance_score, by="block", out=out)
    # A candidate folder another container is scoring right now: its PID means nothing here.
    live = out / f"candidate-full{TEMP_MARKER}{_dead_pid()}-0123abcd"
    live.mkdir()
    (live / "model.safetensors").write_bytes(b"being scored")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(live / LOCK_FILE)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        # A stale folder of an older opdlens (no lock file) whose process is gone.
        stale = out / f"candidate-base{TEMP_MARKER}{_dead_pid()}-89abcdef"
        stale.mkdir()
        (out / SCORES_FILE).unlink()  # score everything again: the cleanup runs first
        ablate(open_run(linear_run), 4, distance_score, by="block", out=out)
        assert (live / "model.safetensors").read_bytes() == b"being scored"
        assert not stale.exists()
    finally:
        holder.kill()
        holder.wait()
    # Its process gone, the lock went with it: the folder is stale now, and removed.
    (out / SCORES_FILE).unlink()
    ablate(open_run(linear_run), 4, distance_score, by="block", out=out)
    assert not live.exists()
    assert not [p.name for p in out.iterdir() if TEMP_MARKER in p.name]


def test_kept_candidates_and_outputs_carry_no_lock_file(linear_run: Path, tmp_path: Path) -> None:
    from opdlens.io.paths import LOCK_FILE

    out = tmp_path / "out"
    ablate(open_run(linear_run), 4, distance_score, mode="drop", keep=True, out=out)
    assert not list(out.rglob(LOCK_FILE))
