"""`opdlens watch` from the command line: its outputs, its log, and its user errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
from cli_errors import cli_fails
from typer.testing import CliRunner

from opdlens.cli import app


def test_watch_until_writes_metrics_foresight_report_and_log(hf_run, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(hf_run("llama"), run)
    out = tmp_path / "out"
    argv = ["watch", str(run), "--out", str(out), "--interval", "0.05", "--until", "2",
            "--ranks", "1,4", "--workers", "1", "--quiet"]  # fmt: skip
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    steps = [ln for ln in result.stdout.splitlines() if " step " in ln and "|Δ|" in ln]
    assert len(steps) == 2 and "top block" in steps[0] and "energy_k1" in steps[0]
    assert "stopped (step 2 reached)" in result.stdout
    frame = pd.read_parquet(out / "metrics.parquet")
    assert sorted(frame["step"].unique()) == [1, 2]
    assert {"align_latest_left_k4", "align_latest_right_k1"} <= set(frame.columns)
    assert not {"cos_to_final", "align_left_k1"} & set(frame.columns)
    assert (out / "metrics.csv").is_file() and (out / "foresight.csv").is_file()
    assert (out / "report" / "report.html").is_file()
    # CliRunner's stdout is not a terminal: the step lines also go to watch.log.
    log = (out / "watch.log").read_text().splitlines()
    assert [ln.split(" ", 1)[1] for ln in log] == [ln.split(" ", 1)[1] for ln in steps]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["steps"] == [1, 2] and prov["options"]["ranks"] == [1, 4]


def test_watch_user_errors(hf_run, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(hf_run("llama"), run)
    cli_fails(["watch", run, "--out", tmp_path / "o", "--interval", "0"], "--interval")
    cli_fails(["watch", run, "--out", tmp_path / "o", "--until", "0"], "--until")
    cli_fails(["watch", run, "--out", tmp_path / "o", "--idle-exit", "-1"], "--idle-exit")
    cli_fails(["watch", run, "--out", run / "checkpoint-1" / "out"], "checkpoint-1")
    no_base = tmp_path / "nobase"
    shutil.copytree(hf_run("llama"), no_base)
    shutil.rmtree(no_base / "checkpoint-0")
    cli_fails(["watch", no_base, "--out", tmp_path / "o2", "--interval", "0.05", "--until", "1"],
              "no base", "--base")  # fmt: skip
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a run")
    cli_fails(["watch", a_file, "--out", tmp_path / "o3", "--interval", "0.05"],
              "notes.txt", "run directory")  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_watch_runs_as_a_console_command(hf_run, tmp_path: Path) -> None:
    """The installed entry point, with stdout a pipe: lines on stdout and in watch.log."""
    run = tmp_path / "run"
    shutil.copytree(hf_run("llama"), run)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "opdlens", "watch", str(run), "--out", str(out),
            "--interval", "0.05", "--until", "4", "--no-report", "--quiet", "--workers", "1"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("|Δ|") == 3
    assert not (out / "report").exists()
    assert len((out / "watch.log").read_text().splitlines()) == 3


def test_ctrl_c_ends_watch_cleanly(hf_run, tmp_path: Path) -> None:
    """SIGINT while watch waits for the next checkpoint: exit 0, outputs complete up to the
    last step, the directory marked complete."""
    import signal
    import time

    run = tmp_path / "run"
    shutil.copytree(hf_run("llama"), run)
    shutil.rmtree(run / "checkpoint-4")  # the run is "still training": step 4 never comes
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "opdlens", "watch", str(run), "--out", str(out),
            "--interval", "0.2", "--no-report", "--quiet", "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        prov = out / "provenance.json"
        if prov.is_file() and json.loads(prov.read_text())["steps"] == [1, 2]:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "stopped (interrupted)" in stdout and "Traceback" not in stderr
    assert json.loads((out / ".opdlens").read_text())["complete"] is True
    assert sorted(pd.read_parquet(out / "metrics.parquet")["step"].unique()) == [1, 2]


def test_watch_of_a_run_with_no_checkpoint_yet_idles_out_and_resumes(
    hf_run, tmp_path: Path
) -> None:
    """A trainer that has not saved yet: watch waits, --idle-exit ends it (exit 0), and the same
    --out takes the steps saved later."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    out = tmp_path / "out"
    argv = ["watch", str(run), "--out", str(out), "--interval", "0.05", "--idle-exit", "0.005",
            "--quiet"]  # fmt: skip
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert "no checkpoint yet" in (out / "watch.log").read_text()
    assert result.stdout.strip().endswith(f"no step analysed yet: {out} holds only watch.log")
    assert sorted(p.name for p in out.iterdir()) == [".opdlens", "watch.log"]
    # A step saved later: the same --out resumes and analyses it.
    shutil.copytree(hf_run("llama"), run, dirs_exist_ok=True)
    argv[argv.index("--idle-exit") : argv.index("--idle-exit") + 2] = ["--until", "1"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "provenance.json").read_text())["steps"] == [1]
