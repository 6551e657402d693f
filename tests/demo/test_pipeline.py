"""`opdlens demo`: the end-to-end pipeline on the quick preset, and the numbers its summary prints."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from opdlens.cli import app
from opdlens.demo.pipeline import share_table, steps_saved


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


def test_share_table_gives_mean_and_sd_over_seeds() -> None:
    def final(mlp: float) -> pd.DataFrame:
        return pd.DataFrame({"span": ["cumulative"] * 2, "step": [5, 5], "block": ["mlp", "attn"],
                             "tensor": ["m", "a"], "update_norm": [1.0, 1.0],
                             "base_norm": [1.0, 1.0], "update_share": [mlp, 1 - mlp]})  # fmt: skip

    frames = {"OPD-1": final(0.6), "OPD-2": final(0.8), "RL-1": final(0.5), "RL-2": final(0.5)}
    table = share_table(frames, {"OPD": ["OPD-1", "OPD-2"], "RL": ["RL-1", "RL-2"]})
    assert table.loc["mlp", "OPD"] == f"0.700 ± {math.sqrt(0.02):.3f}"
    assert table.loc["attn", "RL"] == "0.500 ± 0.000"


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    text = result.stdout
    for phrase in (
        "1 post-training seed per method (--quick): every claim is inconclusive at n = 1",
        "update share by block",
        "OPD concentrates its final update more in its top singular direction than RL: "
        "inconclusive at n = 1 — energy_k1",
        "EffOPD replay",
        "Online EffOPD",
        "report:",
    ):
        assert phrase in text
    assert "cannot continue training" in text
    report = out / "report" / "report.html"
    page = report.read_text()
    assert report.is_file() and "data:image/png;base64" in page
    assert "<h2>Groups of runs</h2>" in page and "1 seed per method (--quick)" in page
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
