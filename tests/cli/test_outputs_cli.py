"""Every command's --out: nothing destroyed, options checked first, one line on a full disk."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from foreign_outputs import REFUSED, foreign_out, user_dir
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from opdlens.cli import app
from opdlens.io.paths import MARKER, TEMP_MARKER, read_marker

runner = CliRunner()
Q0 = "model.layers.0.self_attn.q_proj.weight"
UP = "model.layers.0.mlp.up_proj.weight"


def _state(step: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, shape in {Q0: (8, 8), UP: (12, 8), "model.norm.weight": (8,)}.items():
        w0 = torch.randint(-8, 8, shape, generator=g) / 8
        d = torch.randint(-4, 4, shape, generator=g) / 64
        out[name] = ((w0 + step * d) * scale).to(torch.bfloat16)
    return out


def _write_run(root: Path, scale: float = 1.0) -> Path:
    for s in (0, 1, 2, 4):
        d = root / f"checkpoint-{s}"
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
        save_file(_state(s, scale), d / "model.safetensors")
    return root


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return _write_run(tmp_path / "run")


def _fails(args: list[str], match: str) -> None:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    assert match in lines[0], lines[0]


def _ok(args: list[str]) -> None:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output


def _writers(run: Path) -> dict[str, list[str]]:
    """Every command that writes a checkpoint directory, all but --out."""
    return {
        "extrapolate": ["extrapolate", run, "--step", "2", "--anchor", "1", "-q"],
        "scale": ["surgery", "scale", run, "--step", "4", "--factor", "0.5", "-q"],
        "lowrank": ["surgery", "lowrank", run, "--step", "4", "--rank", "1", "-q"],
        "window": ["surgery", "window", run, "--step", "4", "--layers", "0-0", "-q"],
    }


@pytest.mark.parametrize("command", ["extrapolate", "scale", "lowrank", "window"])
def test_overwrite_never_destroys_a_symlinked_user_directory(
    run: Path, tmp_path: Path, command: str
) -> None:
    user = user_dir(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(user)
    _fails([*_writers(run)[command], "--out", link, "--overwrite"], "is a symbolic link")
    assert link.is_symlink() and os.readlink(link) == str(user)
    assert [p.name for p in user.iterdir()] == ["thesis.tex"]
    assert (user / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize("kind", ["fifo", "file", "unmarked"])
def test_overwrite_refuses_fifos_files_and_user_directories(
    run: Path, tmp_path: Path, kind: str
) -> None:
    out = tmp_path / "out"
    if kind == "fifo":  # stands in for /dev/null, which a test must never touch
        os.mkfifo(out)
        match = "is a FIFO, not a directory"
    elif kind == "file":
        out.write_text("notes")
        match = "is a regular file, not a directory"
    else:
        user_dir(tmp_path).rename(out)
        match = "opdlens did not write it (no .opdlens marker inside)"
    before = sorted(p.name for p in tmp_path.iterdir())
    _fails([*_writers(run)["extrapolate"], "--out", out, "--overwrite"], match)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert out.is_fifo() if kind == "fifo" else True
    assert out.read_text() == "notes" if kind == "file" else True
    assert (out / "thesis.tex").read_text() == "years of work" if kind == "unmarked" else True


def test_overwrite_replaces_what_opdlens_wrote(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    for command, args in _writers(run).items():
        _ok([*args, "--out", out, *(["--overwrite"] if out.exists() else [])])
        assert read_marker(out)["command"] in (command, f"surgery-{command}")  # type: ignore[index]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred", "run"]
    _fails([*_writers(run)["extrapolate"], "--out", out], "already exists")


def _results(run: Path, tmp_path: Path) -> dict[str, list[str]]:
    """The commands that write a directory of results, all but --out."""
    return {
        "analyze": ["analyze", run, "--workers", "1", "-q", "--ranks", "1"],
        "replay": ["replay", run, "--scorer", "hindsight", "--max-candidates", "1", "-q"],
        "figures": ["figures", run, "--workers", "1", "--ranks", "1", "--spectra", "0", "-q"],
        "report": ["report", run, "--workers", "1", "--ranks", "1", "--spectra", "0", "-q"],
    }


@pytest.mark.parametrize("command", ["analyze", "replay", "figures", "report"])
@pytest.mark.parametrize("kind", ["file", "symlink", "unmarked"])
def test_results_refuse_files_links_and_user_directories(
    run: Path, tmp_path: Path, command: str, kind: str
) -> None:
    out = foreign_out(tmp_path, kind)
    before = sorted(p.name for p in tmp_path.iterdir())
    _fails([*_results(run, tmp_path)[command], "--out", out], REFUSED[kind])
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if kind == "file":
        assert out.read_text() == "notes"
    else:
        assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_results_go_into_empty_or_own_directories(run: Path, tmp_path: Path) -> None:
    cmds = _results(run, tmp_path)
    for command in ("analyze", "figures"):
        out = tmp_path / command
        out.mkdir()
        _ok([*cmds[command], "--out", out])  # empty
        _ok([*cmds[command], "--out", out])  # its own: re-used (analyze's cache too)
        assert read_marker(out) == {**read_marker(out), "command": command, "complete": True}  # type: ignore[arg-type]
    out = tmp_path / "replay"
    _ok([*cmds["replay"], "--out", out])
    (out / "stale.txt").write_text("from an earlier replay")
    _fails([*cmds["replay"], "--out", out], "already exists")
    _ok([*cmds["replay"], "--out", out, "--overwrite"])
    assert not (out / "stale.txt").exists() and (out / "history.csv").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["analyze", "--ranks", "0,4"], "'ranks' parameter of analyze must be positive integers"),
        (["analyze", "--ranks", ""], "'ranks' parameter of analyze must be positive integers"),
        (["analyze", "--workers", "0"], "'workers' parameter must be ≥ 1"),
        (["analyze", "--executor", "dask"], "'dask' is not one of 'local', 'ray'"),  # the parser's
        (["analyze", "--device", "cuda"], "--device cuda was asked for"),
        (["figures", "--ranks", "0,4"], "'ranks' parameter of analyze must be positive"),
        (["figures", "--workers", "0"], "'workers' parameter must be ≥ 1"),
        (["report", "--ranks", ""], "'ranks' parameter of analyze must be positive"),
        (["report", "--top", "0"], "--top takes a count ≥ 1"),
        (["replay", "--scorer", "hindsight", "--alpha0", "-1"], "'alpha0' parameter (--alpha0) of EffOPD's schedule must be a finite number > 0"),
        (["replay", "--scorer", "hindsight", "--alpha0", "0"], "'alpha0' parameter (--alpha0) of EffOPD's schedule must be a finite number > 0"),
        (["demo", "--workers", "0"], "--workers takes a count ≥ 1"),
    ],
)  # fmt: skip
def test_bad_options_create_nothing(
    run: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    if torch.cuda.is_available() and "cuda" in args:
        pytest.skip("this machine has a GPU")
    out = tmp_path / "outs" / "o"
    cmd = [args[0]] if args[0] == "demo" else [args[0], run]
    _fails([*cmd, *args[1:], "--out", out, "-q"], message)
    assert not (tmp_path / "outs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_full_disk_is_one_line_and_leaves_no_temp_file(
    run: Path, tmp_path: Path, monkeypatch
) -> None:
    import pandas as pd

    def full(self: pd.DataFrame, path: object, *args: object, **kwargs: object) -> None:
        Path(str(path)).write_bytes(b"PAR1 half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    out = tmp_path / "metrics"
    _fails(["analyze", run, "--out", out, "--workers", "1", "-q"],
           f"Cannot write the output {out / 'metrics.parquet'}: No space left on device (ENOSPC)")  # fmt: skip
    assert not [p for p in out.iterdir() if TEMP_MARKER in p.name]
    assert not (out / "metrics.parquet").exists()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_failing_checkpoint_write_is_one_line(
    run: Path, tmp_path: Path, monkeypatch, code: int
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("opdlens.io.writer._copy_range", fail)  # the copied norm weight
    outs = tmp_path / "outs"
    outs.mkdir()
    _fails([*_writers(run)["extrapolate"], "--out", outs / "pred"], os.strerror(code))
    assert list(outs.iterdir()) == []


def test_a_killed_extrapolate_leaves_nothing_loadable(tmp_path: Path) -> None:
    root = tmp_path / "run"
    for s in (0, 1, 2):
        d = root / f"checkpoint-{s}"
        d.mkdir(parents=True)
        g = torch.Generator().manual_seed(s)
        big = torch.randn(2048, 4096, generator=g).to(torch.bfloat16)  # 16 MiB: ~1 s to write
        save_file({Q0: big, "model.norm.weight": torch.ones(8)}, d / "model.safetensors")
    out = tmp_path / "outs" / "pred"
    args = [sys.executable, "-m", "opdlens", "extrapolate", str(root), "--step", "2", "--anchor",
            "1", "--out", str(out), "--evaluate", "-q"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    files: list[Path] = []
    deadline = time.monotonic() + 120
    while not files and proc.poll() is None and time.monotonic() < deadline:
        if out.parent.is_dir():
            files = list(out.parent.glob(f"pred{TEMP_MARKER}*/model.safetensors"))
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "finished before it could be killed"
    assert files and not out.exists()
    for f in (f for d in out.parent.iterdir() for f in d.iterdir()):
        with pytest.raises(SafetensorError):
            safe_open(f, "pt")
    subprocess.run(args, check=True, timeout=120, capture_output=True)  # the next run cleans up
    assert [p.name for p in out.parent.iterdir()] == ["pred"] and (out / MARKER).is_file()


def test_bfloat16_overflow_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "run"
    for s, value in ((0, 1e38), (1, 2e38), (2, 3e38)):
        state = _state(s)
        state[Q0][0, 0] = value  # bf16 keeps ~3 digits: exactly representable after this
        d = root / f"checkpoint-{s}"
        d.mkdir(parents=True)
        save_file(state, d / "model.safetensors")
    t, a = (
        float(load_file(root / f"checkpoint-{s}" / "model.safetensors")[Q0][0, 0]) for s in (2, 1)
    )
    alpha = (3.40e38 - t) / (t - a)  # θ_pred ≈ 3.40e38: finite in float32, past bfloat16's max
    out = tmp_path / "outs" / "pred"
    _fails(["extrapolate", root, "--step", "2", "--anchor", "1", "--alpha", repr(alpha), "--out",
            out, "-q"], f"tensor '{Q0}' overflows its dtype (bfloat16) at alpha")  # fmt: skip
    assert not (tmp_path / "outs").exists() or list((tmp_path / "outs").iterdir()) == []
    _ok(["extrapolate", root, "--step", "2", "--anchor", "1", "--alpha", "0.3", "--out", out])
    assert bool(load_file(out / "model.safetensors")[Q0].float().isfinite().all())


def test_rerunning_analyze_keeps_a_temp_file_a_live_writer_elsewhere_holds(
    run: Path, tmp_path: Path
) -> None:
    """A writer in another PID namespace (its PID means nothing here) keeps its temporary file."""
    out = tmp_path / "analyze"
    cmd = _results(run, tmp_path)["analyze"]
    _ok([*cmd, "--out", out])
    first = (out / "metrics.csv").read_text()
    foreign = 2**22 + 17  # above any Linux pid_max: no process here has it
    busy = out / f".metrics.parquet{TEMP_MARKER}{foreign}-0123abcd"
    left = out / f".metrics.csv{TEMP_MARKER}{foreign}-89abcdef"
    busy.write_bytes(b"PAR1 being written")
    left.write_bytes(b"a,b\n")
    hold = ("import fcntl, sys; f = open(sys.argv[1], 'ab'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print(1, flush=True); input()")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", hold, str(busy)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "1"
        _ok([*cmd, "--out", out])  # re-used: it clears what killed runs left, and only that
        assert busy.read_bytes() == b"PAR1 being written"
        assert not left.exists()
    finally:
        holder.kill()
        holder.wait()
    assert (out / "metrics.csv").read_text() == first
