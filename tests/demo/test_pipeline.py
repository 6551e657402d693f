"""`opdlens demo`: the end-to-end pipeline on the quick preset, and the numbers its summary prints."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from opdlens.cli import app
from opdlens.demo.pipeline import _verdict, energy_weighted, steps_saved


def test_steps_saved_counts_last_accepted_candidate_per_step() -> None:
    history = pd.DataFrame(
        {
            "step": [1, 1, 1, 2, 2, 4],
            "candidate": [0, 1, 2, 0, 1, 0],
            "accepted": [pd.NA, True, True, pd.NA, False, pd.NA],
            "equivalent_step": [1, 2, 4, 2, 1, 4],
        }
    )
    assert steps_saved(history) == (3, 2)  # step 1 jumped to 4; step 2 rejected


def test_energy_weighted_uses_squared_update_norm() -> None:
    df = pd.DataFrame({"energy_k1": [0.5, 1.0, math.nan], "update_norm": [1.0, 2.0, 3.0]})
    assert energy_weighted(df, "energy_k1") == pytest.approx((0.5 * 1 + 1.0 * 4) / 5)


def test_verdict_says_when_opd_does_not_show_the_finding() -> None:
    df = pd.DataFrame({"span": ["cumulative"] * 2, "step": [5, 5], "block": ["mlp", "attn"],
                       "update_share": [0.4, 0.6]})  # fmt: skip
    rl = df.assign(update_share=[0.7, 0.3])
    lines = _verdict(
        {"OPD": df, "RL": rl}, {"OPD": 0.2, "RL": 0.5}, {"OPD": (1, 0.9), "RL": (1, 0.1)}
    )
    assert lines[0].startswith("OPD does NOT concentrate")
    assert lines[1].startswith("OPD does NOT put")
    assert lines[2].startswith("OPD settles")


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    for phrase in (
        "update share by block",
        "energy_k1",
        "EffOPD replay",
        "Online EffOPD",
        "report:",
    ):
        assert phrase in text
    assert "cannot continue training" in text
    report = out / "report" / "report.html"
    assert report.is_file() and "data:image/png;base64" in report.read_text()
    assert (out / "replay-opd" / "history.csv").is_file()
    # The printed shares are the metrics files' own numbers.
    for label in ("OPD", "RL"):
        df = pd.read_parquet(out / "analysis" / f"metrics-{label}" / "metrics.parquet")
        final = df[(df["span"] == "cumulative") & (df["step"] == df["step"].max())]
        mlp = final.loc[final["block"] == "mlp", "update_share"].sum()
        assert f"{mlp:.3f}" in text
    # A second run reuses the trained runs and the analysis cache.
    again = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--quiet"])
    assert again.exit_code == 0, again.output
    assert again.stdout == text
