"""`opdlens figures` and `opdlens report` from the command line: outputs, and one-line errors."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner
from viz.runs import write_run

from opdlens.cli import app

EXPECTED = {"allocation_heatmap", "allocation_strip-OPD", "allocation_strip-RL", "block_norms",
            "energy_by_step", "energy_by_rank", "alignment_by_step", "spectra-OPD",
            "spectra-RL"}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli-runs")
    return write_run(root / "opd", 0), write_run(root / "rl", 1)


def _invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.slow
def test_figures_compare_two_runs(runs: tuple[Path, Path], tmp_path: Path) -> None:
    opd, rl = runs
    out = tmp_path / "figs"
    result = _invoke("figures", opd, "--compare", rl, "--labels", "OPD,RL", "--out", out,
                     "--ranks", "1,4", "--spectra", "3", "--workers", "1", "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"wrote {len(EXPECTED)} figures" in result.stdout
    assert "replay_scores skipped" in result.stderr  # no --replay given: said, not silent
    for label in ("OPD", "RL"):
        assert (out / f"metrics-{label}" / "metrics.parquet").is_file()
    stems = {p.stem for p in out.glob("*.png")}
    assert stems == EXPECTED
    for stem in stems:
        assert {p.suffix for p in out.glob(f"{stem}.*")} == {".pdf", ".svg", ".png"}
        with Image.open(out / f"{stem}.png") as im:
            assert np.allclose(im.info["dpi"], (200, 200), atol=0.5)
    # A metrics directory is drawn without analysing again; its spectra come from the cache.
    again = _invoke("figures", out / "metrics-OPD", "--out", tmp_path / "again", "--spectra", "2")
    assert again.exit_code == 0, again.output
    assert "cached top-K" in again.stderr and not (tmp_path / "again" / "metrics-OPD").exists()


@pytest.mark.slow
def test_report_from_metrics_dir(runs: tuple[Path, Path], tmp_path: Path) -> None:
    opd, _ = runs
    assert _invoke("analyze", opd, "--out", tmp_path / "m", "--ranks", "1", "-q").exit_code == 0
    result = _invoke("report", tmp_path / "m", "--out", tmp_path / "r", "--labels", "OPD",
                     "--spectra", "0", "--top", "5")  # fmt: skip
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r" / "report.html").read_text()
    assert "opdlens report: OPD" in page and "<h2>Top 5 tensors" in page
    assert (tmp_path / "r" / "figures" / "block_norms.svg").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["figures", "{missing}", "--out", "{tmp}/o"], "does not exist: expected a run directory"),
        (["figures", "{opd}", "--compare", "{rl}", "--labels", "A,B,C", "--out", "{tmp}/o"],
         r"--labels names 3 run\(s\) \(A,B,C\) but 2 were given"),
        (["figures", "{opd}", "--out", "{opd}/figures"], "overlaps the input"),
        (["report", "{opd}", "--out", "{opd}/checkpoint-1/x"], "overlaps the input"),
        (["report", "{opd}", "--out", "{tmp}/o", "--spectra", "-1"], "--spectra takes a count"),
        (["figures", "{opd}", "--replay", "{tmp}", "--out", "{tmp}/o"], "history.csv does not exist"),
        (["figures", "{opd}", "--metrics", "{tmp}/nope.csv", "--out", "{tmp}/o"], r"nope\.csv: no such file"),
        (["report", "{opd}", "--compare", "{rl}", "--labels", "A,B", "--metrics", "{tmp}/x.csv",
          "--out", "{tmp}/o"], r"--metrics names 1 training log\(s\) but 2 run\(s\)"),
    ],
)  # fmt: skip
def test_bad_inputs_one_line(runs: tuple[Path, Path], tmp_path: Path, args, message) -> None:
    opd, rl = runs
    subs = {"missing": tmp_path / "missing", "tmp": tmp_path, "opd": opd, "rl": rl}
    result = _invoke(*(a.format(**subs) for a in args))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("opdlens: error: "), result.stderr
    assert "Traceback" not in result.output
    assert re.search(message, lines[0])
    assert not (opd / "figures").exists() and not (opd / "checkpoint-1" / "x").exists()
    assert not (tmp_path / "o").exists()  # failed before analysing anything


@pytest.mark.slow
def test_figures_take_checkpoint_trust_pickle_and_metrics(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    opd, _ = runs
    headless = tmp_path / "headless"  # the run without its step-0 checkpoint
    shutil.copytree(
        opd, headless, ignore=lambda d, names: ["checkpoint-0"] if d == str(opd) else []
    )
    log = tmp_path / "log.jsonl"
    log.write_text(
        "".join(f'{{"step": {s}, "data": {{"val/accuracy": {0.1 * s}}}}}\n' for s in range(5))
    )
    args = ["figures", headless, "--metrics", log, "--spectra", "0", "--ranks", "1", "--workers", "1",
            "-q", "--trust-pickle"]  # fmt: skip
    refused = _invoke(*args, "--out", tmp_path / "o1")
    assert refused.exit_code == 2 and "no base" in refused.stderr
    result = _invoke(*args, "--checkpoint", f"0={opd / 'checkpoint-0'}", "--out", tmp_path / "o2")
    assert result.exit_code == 0, result.output
    assert "training_and_weights" in result.stdout
    assert (tmp_path / "o2" / "training_and_weights.png").stat().st_size > 1000
