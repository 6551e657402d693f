"""Hostile --out paths and interrupted outputs (issue 22, items 15–17, 23, 24, 27)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parents[1]))
from checkpoints import line_run  # noqa: E402
from cli_errors import cli_fails  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from opdlens.cli import app  # noqa: E402
from opdlens.io.paths import MARKER, OLD_MARKER, TEMP_MARKER, read_marker  # noqa: E402

Q0 = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """θ_s = θ_0 + s·D for one attention matrix and a norm, saved at 0, 1, 2, 4."""
    return line_run(tmp_path / "run", seed=5, name=Q0)


def _extrapolate(run: Path, out: Path, alpha: str = "1", *extra: str) -> list[str]:
    return ["extrapolate", str(run), "--step", "2", "--anchor", "1", "--alpha", alpha,
            "--out", str(out), "-q", *extra]  # fmt: skip


def _ok(args: list[str]) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output


def _entries(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


@pytest.mark.parametrize("out", ["l1", "l1/sub"])
def test_a_symlink_loop_in_out_is_one_line(run: Path, tmp_path: Path, out: str) -> None:
    (tmp_path / "l1").symlink_to("l2")
    (tmp_path / "l2").symlink_to("l1")
    for cmd in (["analyze", run, "--workers", "1"], _extrapolate(run, tmp_path / "x")[:-3]):
        cli_fails([*cmd, "--out", tmp_path / out], "--out", "l1")
    assert _entries(tmp_path) == ["l1", "l2", "run"]


def test_a_long_out_name_gets_short_temporary_names(run: Path, tmp_path: Path) -> None:
    """A 240-byte name is legal; the temporary name beside it must not pass 255 bytes."""
    out = tmp_path / ("p" * 240)
    _ok(_extrapolate(run, out))
    _ok(_extrapolate(run, out, "2", "--overwrite"))
    assert _entries(tmp_path) == ["p" * 240, "run"]
    state = load_file(out / "model.safetensors")
    step1, step2 = (load_file(run / f"checkpoint-{s}/model.safetensors")[Q0] for s in (1, 2))
    assert torch.allclose(state[Q0], step2 + 2 * (step2 - step1), atol=1e-6)
    metrics = tmp_path / ("m" * 240)
    _ok(["analyze", str(run), "--out", str(metrics), "--workers", "1", "-q"])
    assert (metrics / "metrics.parquet").is_file() and read_marker(metrics)["complete"] is True


def test_a_non_utf8_out_is_refused_before_anything_is_made(run: Path, tmp_path: Path) -> None:
    out = os.fsdecode(bytes(tmp_path) + b"/caf\xe9")
    proc = subprocess.run([sys.executable, "-m", "opdlens", "analyze", str(run), "--out", out,
                           "--workers", "1", "-q"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "is not valid UTF-8" in proc.stderr
    assert _entries(tmp_path) == ["run"]


@pytest.mark.parametrize("cmd", ["extrapolate", "analyze"])
def test_never_creates_directories_through_a_dangling_symlink(
    run: Path, tmp_path: Path, cmd: str
) -> None:
    target = tmp_path / "nowhere" / "x"  # does not exist: the link dangles
    (tmp_path / "sym").mkdir()
    (tmp_path / "sym" / "dangling").symlink_to(target)
    out = tmp_path / "sym" / "dangling" / "sub"
    args = _extrapolate(run, out) if cmd == "extrapolate" else ["analyze", run, "--out", out]
    cli_fails(args, "passes through", "sym/dangling", "does not exist")
    assert not (tmp_path / "nowhere").exists()


def test_report_refuses_an_analysis_left_unfinished(run: Path, tmp_path: Path, monkeypatch) -> None:
    """Interrupted between metrics.parquet and metrics.csv: the marker says complete: false."""
    import pandas as pd

    metrics = tmp_path / "m"
    _ok(["analyze", str(run), "--out", str(metrics), "--workers", "1", "--ranks", "1", "-q"])
    old_csv = (metrics / "metrics.csv").read_bytes()

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", killed)
    result = CliRunner().invoke(app, ["analyze", str(run), "--out", str(metrics), "--workers",
                                      "1", "--ranks", "2", "-q"])  # fmt: skip
    assert result.exit_code == 130
    monkeypatch.undo()
    # A mix: the new parquet (ranks 2) beside the old csv (ranks 1), marked unfinished.
    assert "energy_k2" in pd.read_parquet(metrics / "metrics.parquet").columns
    assert (metrics / "metrics.csv").read_bytes() == old_csv
    assert read_marker(metrics)["complete"] is False
    for cmd in ("report", "figures"):
        cli_fails([cmd, metrics, "--out", tmp_path / cmd, "-q"],
                  f"{metrics} was left unfinished", "complete: false")  # fmt: skip
        assert not (tmp_path / cmd).exists()
    # Finishing it (the same analyze again) makes it readable.
    _ok(["analyze", str(run), "--out", str(metrics), "--workers", "1", "--ranks", "2", "-q"])
    _ok(["report", str(metrics), "--out", str(tmp_path / "report"), "-q"])


@pytest.mark.parametrize("tamper", ["no rows", "string column", "missing column", "bool share"])
def test_a_tampered_metrics_table_is_one_line(run: Path, tmp_path: Path, tamper: str) -> None:
    import pandas as pd

    metrics = tmp_path / "m"
    _ok(["analyze", str(run), "--out", str(metrics), "--workers", "1", "-q"])
    df = pd.read_parquet(metrics / "metrics.parquet")
    if tamper == "no rows":
        df, needle = df.iloc[0:0], "has no rows"
    elif tamper == "string column":
        df, needle = df.assign(energy_k4=df["energy_k4"].astype(str)), "column 'energy_k4' holds"
    elif tamper == "missing column":
        df, needle = df.drop(columns=["update_share"]), "has no column 'update_share'"
    else:
        df, needle = df.assign(update_share=True), "column 'update_share' holds bool"
    df.to_parquet(metrics / "metrics.parquet", index=False)
    for cmd in ("report", "figures"):
        cli_fails([cmd, metrics, "--out", tmp_path / cmd, "-q"], "metrics.parquet", needle)


def test_one_step_of_metrics_gives_a_report(run: Path, tmp_path: Path) -> None:
    import pandas as pd

    metrics = tmp_path / "m"
    _ok(["analyze", str(run), "--out", str(metrics), "--workers", "1", "-q"])
    df = pd.read_parquet(metrics / "metrics.parquet")
    df[df["step"] == 4].to_parquet(metrics / "metrics.parquet", index=False)
    _ok(["report", str(metrics), "--out", str(tmp_path / "report"), "-q"])
    assert (tmp_path / "report" / "report.html").is_file()


def test_a_tampered_ablation_table_is_one_line(run: Path, tmp_path: Path) -> None:
    import pandas as pd

    ab, metrics = tmp_path / "ab", tmp_path / "m"
    _ok(["ablate", str(run), "--step", "4", "--scorer-cmd", "echo 1 # {checkpoint}", "--out",
         str(ab), "-q"])  # fmt: skip
    _ok(["analyze", str(run), "--out", str(metrics), "--workers", "1", "-q"])
    table = pd.read_parquet(ab / "ablation.parquet")
    table.assign(utility=table["utility"].astype(str)).to_parquet(ab / "ablation.parquet")
    cli_fails(["report", metrics, "--ablation", f"R={ab}", "--out", tmp_path / "r", "-q"],
              "ablation.parquet: column 'utility' holds")  # fmt: skip
    marker = json.loads((ab / MARKER).read_text())
    (ab / MARKER).write_text(json.dumps(marker | {"complete": False}))
    cli_fails(["report", metrics, "--ablation", f"R={ab}", "--out", tmp_path / "r", "-q"],
              "left unfinished by an interrupted `opdlens ablate`")  # fmt: skip


KILL_BETWEEN_RENAMES = textwrap.dedent(
    """
    import os, sys
    real = os.rename
    def rename(src, dst, *a, **k):
        if "{tmp}" in os.fspath(src):  # the second rename: the new output into place
            os._exit(9)
        return real(src, dst, *a, **k)
    os.rename = rename
    sys.argv = ["opdlens", *sys.argv[1:]]
    from opdlens.cli import main
    main()
    """
).replace("{tmp}", TEMP_MARKER)


def test_killed_between_the_two_renames_the_old_output_comes_back(
    run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pred"
    _ok(_extrapolate(run, out, "1"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES,
                           *_extrapolate(run, out, "3", "--overwrite")], timeout=300)  # fmt: skip
    assert proc.returncode == 9
    assert not out.exists() and any(OLD_MARKER in p.name for p in tmp_path.iterdir())
    # The next run (without --overwrite) puts the old output back, then refuses to replace it.
    cli_fails(_extrapolate(run, out, "3"), "already exists")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if OLD_MARKER in p.name]
    # With --overwrite it is replaced as asked, and nothing is left beside it.
    _ok(_extrapolate(run, out, "3", "--overwrite"))
    assert _entries(tmp_path) == ["pred", "run"]


def test_enospc_leaves_no_empty_out_folders(run: Path, tmp_path: Path, monkeypatch) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("opdlens.io.paths.write_marker", full)
    cli_fails(["analyze", run, "--out", tmp_path / "a" / "b" / "m", "--workers", "1", "-q"],
              "No space left on device", "nothing partial was kept")  # fmt: skip
    monkeypatch.undo()
    monkeypatch.setattr("opdlens.io.writer._copy_range", full)
    cli_fails(_extrapolate(run, tmp_path / "c" / "d" / "pred"), "No space left on device")
    assert _entries(tmp_path) == ["run"]


def test_outputs_of_one_command_are_not_anothers(run: Path, tmp_path: Path) -> None:
    pred = tmp_path / "pred"
    _ok(_extrapolate(run, pred))
    before = {p.name: p.read_bytes() for p in pred.iterdir()}
    for cmd in (["analyze", run, "--workers", "1"], ["report", run], ["figures", run]):
        cli_fails([*cmd, "--out", pred, "-q"], "holds the output of `opdlens extrapolate`")
    assert {p.name: p.read_bytes() for p in pred.iterdir()} == before
