"""`opdlens ablate`: what it prints and writes, resuming, and its user errors (one line, exit 2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from opdlens.cli import app

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli_errors import cli_fails  # noqa: E402
from extrapolation.conftest import write_run  # noqa: E402

SCORER = '''
from pathlib import Path
import numpy as np
from safetensors.numpy import load_file

CALLS = []

def score(path):
    """The sum of squares of the attention weights: a function of the weights only."""
    CALLS.append(Path(path).name)
    total = 0.0
    for f in sorted(Path(path).glob("*.safetensors")):
        for k, v in load_file(f).items():
            if ".self_attn." in k:
                total += float((v.astype(np.float64) ** 2).sum())
    return total

def broken(path):
    raise ValueError("no GPU here")
'''


@pytest.fixture
def cli_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A linear run saved at 0, 2, 4 and an importable scorer module `ablate_scorer`."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods/ablate_scorer.py").write_text(SCORER)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    sys.modules.pop("ablate_scorer", None)
    return write_run(tmp_path / "run", steps=(0, 2, 4))


def test_ablate_prints_and_writes_the_tables(cli_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["ablate", str(cli_run), "--step", "4", "--scorer", "ablate_scorer:score",
            "--ranks", "1,2", "--out", str(out), "-q"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "scorer: ablate_scorer:score" in result.stdout
    assert "dropping the update of attn" in result.stdout  # the only group the scorer sees
    assert "rank curve" in result.stdout and "energy_k" in result.stdout
    table = pd.read_csv(out / "ablation.csv")
    assert table["group"].tolist() == ["embed", "attn", "mlp", "norm", "head"]
    assert (table.loc[table["group"] != "attn", "utility"] == 0).all()
    assert pd.read_parquet(out / "rank_curve.parquet")["k"].tolist() == [1, 2]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["options"]["by"] == "block" and prov["scorer"] == "ablate_scorer:score"
    assert json.loads((out / ".opdlens").read_text())["complete"] is True
    # The same command again reuses every score and says so.
    import ablate_scorer

    ablate_scorer.CALLS.clear()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "reused 14 score(s)" in again.stdout and ablate_scorer.CALLS == []


def test_scorer_command_and_kept_candidates(cli_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "ablate", str(cli_run), "--step", "2", "--scorer-cmd", "test -d {checkpoint} && echo 1.5",
        "--by", "layer", "--mode", "only", "--keep", "--jobs", "2", "--out", str(out), "-q",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "ablation.csv")
    assert (table["score_only"] == 1.5).all() and table["utility"].isna().all()
    kept = sorted(p.name for p in (out / "candidates").iterdir())
    assert kept == sorted(["full", "base"] + [f"only-layer-{g}" for g in
                          ("embed", "layer-0", "layer-1", "layer-2", "norm", "head")])  # fmt: skip
    assert "kept the candidates" in result.stdout


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--by", "head"], ["'by' parameter of ablate (--by)", "Got 'head'"]),
        (["--mode", "all"], ["--mode", "drop, only, both"]),
        (["--ranks", "0,x"], ["--ranks takes comma-separated whole numbers", "'0,x'"]),
        (["--ranks", "0"], ["--ranks", "Got [0]"]),
        (["--jobs", "0"], ["--jobs", "≥ 1; got 0"]),
        (["--step", "3"], ["Step 3 is not a saved step", "[2, 4]"]),
        (["--scorer-cmd", "echo 1"], ["Give exactly one scorer"]),
    ],
)
def test_user_errors_are_one_line(
    cli_run: Path, tmp_path: Path, extra: list[str], needles: list[str]
) -> None:
    step = [] if "--step" in extra else ["--step", "4"]
    args = [cli_run, *step, "--scorer", "ablate_scorer:score", "--out", tmp_path / "out", *extra]
    cli_fails(["ablate", *args], *needles)


def test_scorer_and_run_errors_are_one_line(cli_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cli_fails(["ablate", cli_run, "--step", "4", "--out", out], "Give exactly one scorer")
    cli_fails(
        ["ablate", "--step", "4", "--scorer", "ablate_scorer:score", "--out", out],
        "Give a run directory",
    )
    cli_fails(
        ["ablate", cli_run, "--step", "4", "--scorer-cmd", "echo 1", "--out", out], "{checkpoint}"
    )
    cli_fails(["ablate", cli_run, "--step", "4", "--scorer", "ablate_scorer:broken", "--out", out],
                 "raised ValueError on step 4 (full update)", "no GPU here")  # fmt: skip
    cli_fails(["ablate", cli_run, "--step", "4", "--scorer", "ablate_scorer:score", "--keep", "--out",
                  cli_run / "checkpoint-4"], "overlaps the input")  # fmt: skip
