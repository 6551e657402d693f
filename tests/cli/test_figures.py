"""`opdlens figures` and `opdlens report` from the command line: outputs, and one-line errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner
from viz.inputs import write_ablation
from viz.runs import write_run

from opdlens.analysis.write import write_analysis
from opdlens.cli import app
from opdlens.run import open_run

EXPECTED = {"allocation_heatmap", "allocation_strip-OPD", "allocation_strip-RL", "block_norms",
            "energy_by_step", "energy_by_rank", "alignment_by_step", "spectra-OPD",
            "spectra-RL", "foresight", "ablation", "sparsity"}  # fmt: skip


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
    ablated = write_ablation(opd, tmp_path / "ablation-opd")
    result = _invoke("figures", opd, "--compare", rl, "--labels", "OPD,RL", "--out", out,
                     "--ranks", "1,4", "--spectra", "3", "--workers", "1", "-q",
                     "--ablation", f"OPD={ablated}")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"wrote {len(EXPECTED)} figures" in result.stdout
    assert "Foresight: how close one extrapolation lands" in result.stdout
    assert "replay_scores skipped" in result.stderr  # no --replay given: said, not silent
    # Every run's metrics as drawn, and where each came from; no nested analysis output.
    tables = pd.read_parquet(out / "run_metrics.parquet")
    assert list(pd.unique(tables["run"])) == ["OPD", "RL"] and not list(out.glob("metrics-*"))
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["runs"]["RL"]["source"] == str(rl) and prov["runs"]["RL"]["analysis"]["inputs"]
    stems = {p.stem for p in out.glob("*.png")}
    assert stems == EXPECTED
    for stem in stems:
        assert {p.suffix for p in out.glob(f"{stem}.*")} == {".pdf", ".svg", ".png"}
        with Image.open(out / f"{stem}.png") as im:
            assert np.allclose(im.info["dpi"], (200, 200), atol=0.5)
    # A metrics directory is drawn without analysing again; its spectra come from the cache.
    metrics = tmp_path / "metrics-OPD"
    write_analysis(open_run(opd), metrics, ranks=(1, 4), workers=1)
    again = _invoke("figures", metrics, "--out", tmp_path / "again", "--spectra", "2")
    assert again.exit_code == 0, again.output
    assert "cached top-K" in again.stderr and not (tmp_path / "again" / "cache").exists()


@pytest.mark.slow
def test_report_from_metrics_dir(runs: tuple[Path, Path], tmp_path: Path) -> None:
    opd, _ = runs
    assert _invoke("analyze", opd, "--out", tmp_path / "m", "--ranks", "1", "-q").exit_code == 0
    result = _invoke("report", tmp_path / "m", "--out", tmp_path / "r", "--labels", "OPD",
                     "--spectra", "0", "--top", "5")  # fmt: skip
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r" / "report.html").read_text()
    assert "opdlens report: OPD" in page and "<h2>Top 5 tensors" in page
    # foresee reads checkpoints: a metrics directory has none, and the page says so.
    assert "foresight of OPD skipped: it was given as a metrics directory" in page
    assert "<h2>Foresight</h2>" not in page
    assert (tmp_path / "r" / "figures" / "block_norms.svg").is_file()
    # A log with no accuracy or loss: the note names the CLI's option, not a Python argument.
    (tmp_path / "lr.csv").write_text("step,learning_rate\n1,0.1\n2,0.05\n")
    result = _invoke("figures", tmp_path / "m", "--out", tmp_path / "f2", "--labels", "OPD",
                     "--spectra", "0", "--metrics", tmp_path / "lr.csv")  # fmt: skip
    assert result.exit_code == 0, result.output
    note = next(ln for ln in result.stderr.splitlines() if "training_and_weights skipped" in ln)
    assert "has no accuracy or loss column" in note
    assert "On the command line, pass --metrics FILE with a log that has one" in note


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
        (["figures", "--out", "{tmp}/o"], r"Give SOURCE .* or at least one --group NAME=PATH"),
        (["figures", "{opd}", "--group", "A={opd}", "--out", "{tmp}/o"],
         r"--group replaces SOURCE, --compare, --labels and --checkpoint, but SOURCE was given"),
        (["report", "--group", "A={opd}", "--compare", "{rl}", "--labels", "x", "--out", "{tmp}/o"],
         r"but --compare, --labels was given too"),
        (["figures", "--group", "A={opd}", "--checkpoint", "0={opd}/checkpoint-0", "--out", "{tmp}/o"],
         r"but --checkpoint was given"),
        (["figures", "--group", "{opd}", "--out", "{tmp}/o"], r"--group takes NAME=PATH,PATH,… .*got '/"),
        (["report", "--group", "A=", "--out", "{tmp}/o"], r"--group takes NAME=PATH.*got 'A='"),
        (["figures", "--group", "A={opd}", "--group", "A={rl}", "--out", "{tmp}/o"], "--group A is given twice"),
        (["figures", "{opd}", "--band", "range", "--out", "{tmp}/o"], "--band draws a band .* needs --group"),
        (["report", "--group", "A={opd}", "--band", "iqr", "--out", "{tmp}/o"], "--band takes sd or range; got 'iqr'"),
        (["figures", "--group", "A={missing}", "--out", "{tmp}/o"], "missing does not exist"),
        (["figures", "{opd}", "--ablation", "OPD", "--out", "{tmp}/o"],
         r"--ablation takes LABEL=DIR .*got 'OPD'"),
        (["report", "{opd}", "--ablation", "A={tmp}", "--ablation", "A={tmp}", "--out", "{tmp}/o"],
         "--ablation A is given twice"),
        (["figures", "{opd}", "--ablation", "OPD={opd}", "--out", "{tmp}/o"],
         r"--ablation .*opd holds no opdlens ablate output: expected the finished --out of "
         r"`opdlens ablate`"),
        (["report", "{opd}", "--ablation", "OPD={missing}", "--out", "{tmp}/o"],
         "missing is not a directory"),
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
            "-q", "--trust-pickle", "--no-foresight"]  # fmt: skip
    refused = _invoke(*args, "--out", tmp_path / "o1")
    assert refused.exit_code == 2 and "no base" in refused.stderr
    result = _invoke(*args, "--checkpoint", f"0={opd / 'checkpoint-0'}", "--out", tmp_path / "o2")
    assert result.exit_code == 0, result.output
    assert "training_and_weights" in result.stdout
    assert (tmp_path / "o2" / "training_and_weights.png").stat().st_size > 1000
    assert "figure foresight skipped: no foresight rows (--no-foresight" in result.stderr
    assert not (tmp_path / "o2" / "foresight.png").exists()


@pytest.mark.slow
def test_report_with_groups_states_means_and_intervals(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    opd, rl = runs
    extra = [write_run(tmp_path / f"run{s}", s) for s in (2, 3)]
    out = tmp_path / "r"
    result = _invoke("report", "--group", f"A={opd},{extra[0]}", "--group", f"B={rl},{extra[1]}",
                     "--band", "range", "--out", out, "--ranks", "1,4", "--spectra", "0",
                     "--workers", "1", "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    assert "<h2>Groups of runs</h2>" in page and "Groups: A: A-1, A-2; B: B-1, B-2." in page
    assert "min–max across the group&#39;s runs" in page
    # The MLPs' share of each run's final update, from its metrics file.
    share = {}
    for label in ("A-1", "A-2", "B-1", "B-2"):
        df = pd.read_parquet(out / "run_metrics.parquet")
        df = df[df["run"] == label]
        final = df[(df["span"] == "cumulative") & (df["step"] == df["step"].max())]
        share[label] = float(final.loc[final["block"] == "mlp", "update_share"].sum())
    a, b = np.array([share["A-1"], share["A-2"]]), np.array([share["B-1"], share["B-2"]])
    assert f"<td>{a.mean():.3f} ± {a.std(ddof=1):.3f}</td><td>{b.mean():.3f} ± " in page
    assert f"difference {a.mean() - b.mean():+.3f} [" in page
    assert re.search(r"A concentrates its final update more .* than B: (holds|does not hold|"
                     r"inconclusive at n = 2) — ", page)  # fmt: skip
    assert {p.stem for p in (out / "figures").glob("*.png")} >= {"findings", "block_norms",
                                                                  "foresight"}  # fmt: skip
    # Foresight of each group's first run, one line each.
    assert "Computed from the checkpoints of A-1, B-1 (opdlens foresee" in page
    assert re.search(r"<li>A-1: .*</li><li>B-1: ", page)


def test_report_overlap_of_a_groups_seeds(tmp_path: Path) -> None:
    from viz.sparse_runs import write_sparse_run

    a = [write_sparse_run(tmp_path / f"a{i}", i) for i in range(2)]
    out = tmp_path / "rep"
    result = _invoke("report", "--group", f"A={a[0]},{a[1]}", "--overlap", "--no-foresight",
                     "--spectra", "0", "--ranks", "1,4", "--workers", "1", "--out", out, "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    section = page[page.index('<section id="overlap">') :]
    section = section[: section.index("</section>")]
    assert "<h2>Overlap between runs</h2>" in section and 'id="fig-overlap"' in page
    line = section[section.index("<li>") : section.index("</li>")]
    assert line.startswith("<li>A-1 vs A-2: the runs changed ") and "more than chance" in line
    assert (out / "figures" / "overlap.png").is_file()
    assert json.loads((out / "provenance.json").read_text())["options"]["overlap"] is True
    # Without --overlap: no section, and the figure's absence is said.
    plain = _invoke("report", "--group", f"A={a[0]},{a[1]}", "--no-foresight", "--spectra", "0",
                    "--ranks", "1", "--workers", "1", "--out", tmp_path / "plain", "-q")  # fmt: skip
    assert plain.exit_code == 0, plain.output
    assert '<section id="overlap">' not in (tmp_path / "plain" / "report.html").read_text()
