"""`opdlens foresee`: the tables, provenance and printed summary, options, and one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1]))
from foreign_outputs import REFUSED, foreign_out  # noqa: E402

from opdlens.cli import app  # noqa: E402

runner = CliRunner()


@pytest.fixture
def run_root(hf_run) -> Path:
    """A float32 Llama run, W_s = W_0 + s·D (checkpoints.planted_update), saved at 0, 1, 2, 4, 8."""
    return hf_run("llama", dtype=torch.float32, steps=(0, 1, 2, 4, 8), trainer_files=False)


def _invoke(*args: object):
    return runner.invoke(app, ["foresee", *map(str, args)])


def _fails(*args: object) -> str:
    res = _invoke(*args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_writes_tables_provenance_and_prints_the_summary(run_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = _invoke(run_root, "--out", out, "--workers", "1", "-q")
    assert res.exit_code == 0, res.output
    pq, csv = pd.read_parquet(out / "foresight.parquet"), pd.read_csv(out / "foresight.csv")
    assert list(pq.columns) == list(csv.columns)
    assert len(pq) == len(csv) > 0
    pd.testing.assert_series_equal(pq["rel_error"], csv["rel_error"], rtol=1e-12)
    assert set(pq["alpha_kind"]) == {"grid", "optimal", "effopd"}
    assert sorted(pq.loc[pq["alpha_kind"] == "grid", "alpha"].unique()) == [0.5, 1.0, 2.0, 4.0]
    schedule = pd.read_csv(out / "effopd_schedule.csv")
    assert list(schedule.columns) == ["step", "anchor", "target_step", "candidate", "alpha",
                                      "rel_error", "alpha_star", "rel_error_at_alpha_star"]  # fmt: skip
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["rows"] == len(pq) and prov["steps"] == [1, 2, 4, 8]
    assert prov["options"]["alphas"] == [0.5, 1.0, 2.0, 4.0]
    assert prov["sentence"].startswith("from step 1 on, one extrapolation along the current")
    assert json.loads((out / ".opdlens").read_text())["command"] == "foresee"
    # Linear run: every prediction from the previous step can land on θ_s exactly.
    assert prov["sentence"] in res.stdout
    assert "EffOPD's schedule tries α = 2, 4, 6, 8, 10" in res.stdout
    assert f"wrote {out}/foresight.parquet" in res.stdout


def test_anchor_and_alphas(run_root: Path, tmp_path: Path) -> None:
    res = _invoke(run_root, "--out", tmp_path / "o", "--anchor", "base", "--alphas", "1,3",
                  "--tensors", "*.down_proj.weight", "--max-candidates", "2", "--workers", "1")  # fmt: skip
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(tmp_path / "o" / "foresight.parquet")
    assert set(df["anchor"]) == {0}
    assert sorted(df.loc[df["alpha_kind"] == "grid", "alpha"].unique()) == [1.0, 3.0]
    assert set(df["tensor"].dropna()) == {f"model.layers.{i}.mlp.down_proj.weight" for i in (0, 1)}
    assert sorted(df.loc[df["alpha_kind"] == "effopd", "candidate"].unique()) == [1, 2]
    res = _invoke(run_root, "--out", tmp_path / "o2", "--anchor", "2", "--scopes", "layer,overall",
                  "--workers", "1")  # fmt: skip
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(tmp_path / "o2" / "foresight.parquet")
    assert set(df["anchor"]) == {2} and set(df["scope"]) == {"layer", "overall"}


def test_output_directory_rules(run_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _invoke(run_root, "--out", out, "--workers", "1", "-q").exit_code == 0
    assert "already exists" in _fails(run_root, "--out", out, "--workers", "1")
    res = _invoke(run_root, "--out", out, "--workers", "1", "--overwrite", "-q")
    assert res.exit_code == 0, res.output
    inside = run_root / "checkpoint-8" / "fs"
    assert "overlaps the input" in _fails(run_root, "--out", inside)
    assert not inside.exists()


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_foreign_out_is_refused_and_untouched(run_root: Path, tmp_path: Path, kind: str) -> None:
    out = foreign_out(tmp_path, kind)
    before = sorted(p.name for p in (out.iterdir() if out.is_dir() else []))
    assert REFUSED[kind] in _fails(run_root, "--out", out)
    assert sorted(p.name for p in (out.iterdir() if out.is_dir() else [])) == before


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--anchor", "last"], "--anchor takes 'previous', 'base' or a saved step in digits 0-9; got 'last'"),
        (["--anchor", "8"], "must be a saved step before the last one ([0, 1, 2, 4]). Got 8"),
        (["--alphas", "1,x"], "--alphas takes comma-separated numbers, e.g. 0.5,1,2,4; got '1,x'"),
        (["--alphas", "1,inf"], "The 'alphas' parameter must be finite. Got inf"),
        (["--modules", "mlps"], "The 'modules' parameter takes blocks from"),
        (["--address", "auto"], "--address is for a Ray cluster"),
        (["--scopes", "tensors"], "The 'scopes' parameter of foresee takes some of tensor, block"),
        # issue 22: the same α₀/max-candidates rules as replay (EffOPDSchedule), no ZeroDivision
        (["--alpha0", "-1"], "The 'alpha0' parameter (--alpha0) of EffOPD's schedule must be a finite number > 0"),
        (["--alpha0", "0"], "Got 0.0 instead"),
        (["--max-candidates", "0"], "The 'max_candidates' parameter (--max-candidates) of EffOPD's"),
        (["--alpha0", "1e308"], "--alpha0 1e+308 with --max-candidates 5"),
        (["--alphas", "1e308"], "The 'alphas' parameter of foresee takes |α| ≤ 1e+150"),
        (["--anchor", "\u0663"], "in digits 0-9; got '\u0663'"),
    ],
)  # fmt: skip
def test_bad_options_fail_in_one_line(run_root: Path, tmp_path: Path, args, needle) -> None:
    assert needle in _fails(run_root, "--out", tmp_path / "o", "--workers", "1", *args)
    assert not (tmp_path / "o").exists()
