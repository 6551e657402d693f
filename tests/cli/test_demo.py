"""`opdlens demo` from the command line: the quick preset end to end, and its one-line errors."""

from __future__ import annotations

import html
import json

import lens_reference as ref
import pandas as pd
import pytest
from checkpoints import copy_demo
from typer.testing import CliRunner

from opdlens.analysis.findings import ablation_sentence, online_sentence
from opdlens.analysis.foresight import foresight_sentence
from opdlens.cli import app
from opdlens.io.paths import MARKER, marker_text
from opdlens.report.side_inputs import load_online_effopd


def test_demo_refuses_zero_workers(tmp_path) -> None:
    result = CliRunner().invoke(
        app, ["demo", "--quick", "--workers", "0", "--out", str(tmp_path / "d")]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.strip() == "opdlens: error: --workers takes a count ≥ 1; got 0."
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, quick_demo) -> None:
    out = tmp_path / "demo"
    # An earlier quick demo's directory holding only its runs (trained once per session,
    # tests/conftest.py): the command reuses them and does everything else.
    copy_demo(quick_demo, out / "runs")
    (out / MARKER).write_text(marker_text("demo"))
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
    # The first screen: each run's accuracy from step 0 (saved and logged) to the end.
    findings = page[page.index("<h2>Findings</h2>") : page.index("</section>")]
    assert "OPD: accuracy <code>accuracy</code> from step 0 to step 40: " in findings
    # The online EffOPD result, from the file the demo wrote, on the first screen and in its own
    # section with every candidate EffOPD tried.
    online = load_online_effopd(out / "runs" / "online_effopd.json", "x")
    assert html.escape(online_sentence(online.comparison)) in findings
    section = page[page.index("<h2>Online EffOPD</h2>") : page.index("<h2>Top ")]
    assert section.count("<tr><td") == len(online.candidates) > 0
    # Foresight and ablation of each method's first run: one printed line each, from their files.
    assert "<h2>Foresight</h2>" in page and "<h2>Marginal utility (ablation)</h2>" in page
    for label in ("OPD", "RL"):
        fore = pd.read_parquet(out / "foresight" / label.lower() / "foresight.parquet")
        assert f"  {label}: {foresight_sentence(fore)}\n" in text
        abl = pd.read_parquet(out / "ablation" / label.lower() / "ablation.parquet")
        assert set(abl["group"]) >= {"attn", "mlp"} and (abl["step"] == 40).all()
        assert f"  {label}: {ablation_sentence(abl)}\n" in text
        curve = pd.read_csv(out / "ablation" / label.lower() / "rank_curve.csv")
        assert list(curve["k"]) == [1, 2, 4, 8]
        assert (out / "foresight" / label.lower() / "effopd_schedule.csv").is_file()
    # The printed shares are the metrics files' own numbers.
    for label in ("OPD", "RL"):
        df = pd.read_parquet(out / "analysis" / "run_metrics.parquet")
        df = df[df["run"] == label]
        final = df[(df["span"] == "cumulative") & (df["step"] == df["step"].max())]
        mlp = final.loc[final["block"] == "mlp", "update_share"].sum()
        assert f"{mlp:.3f}" in text
    # The lenses' lines, with the numbers numpy gives on the checkpoint files (bf16 view).
    lens = text[text.index("Sparsity, overlap and the base's principal directions") :]
    frac = {m: ref.changed_frac(out / "runs" / m.lower()) for m in ("OPD", "RL")}
    energy = {m: ref.principal_energy(out / "runs" / m.lower(), 16) for m in ("OPD", "RL")}
    assert (
        "  OPD changes fewer weights than RL: inconclusive at n = 1 — share of weights changed "
        f"at the final step (all elements): OPD {frac['OPD']:.3f}, RL {frac['RL']:.3f}; "
    ) in lens
    for m in ("OPD", "RL"):
        assert (f"  {m}'s seeds change overlapping weights more than chance: inconclusive at "
                "n = 0 pair(s) of 1 run(s) — one run: no pair to compare.") in lens  # fmt: skip
    assert (
        "  OPD puts less of its update into the base's principal directions than RL: "
        "inconclusive at n = 1 — share of ‖Δ_T‖² in the base's top-16 left singular directions "
        f"(‖Δ‖²-weighted): OPD {energy['OPD'][0]:.3f}, RL {energy['RL'][0]:.3f}; "
    ) in lens
    assert (f"A random update would put K/rows there: OPD {energy['OPD'][1]:.3f}, "
            f"RL {energy['RL'][1]:.3f}.") in lens  # fmt: skip
    assert "OPD changes fewer weights than RL: inconclusive at n = 1" in findings
    prov = json.loads((out / "analysis" / "provenance.json").read_text())
    options = prov["runs"]["OPD"]["analysis"]["options"]
    assert options["sparsity_dtype"] == "bfloat16" and options["base_geometry"] is True
    assert "time by phase" not in result.stderr  # --quiet
    # A second run reuses the trained runs and the analysis cache; without --quiet it says on
    # stderr where its time went, and stdout is the same.
    again = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert again.stdout == text
    (line,) = [ln for ln in again.stderr.splitlines() if ln.startswith("time by phase")]
    phases = [part.split()[0] for part in line.split(": ", 1)[1].split(";")[0].split(", ")]
    assert phases == ["train", "extrapolate", "replay", "foresee", "ablate", "analyze", "report"]
    assert "; total " in line
