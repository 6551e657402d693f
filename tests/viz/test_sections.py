"""The report's sections: the score from step 0, the online EffOPD result with its candidates,
and the template's tables."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from opdlens.analysis.options import AnalyzeOptions
from opdlens.report import SourceOptions, from_frame, load_sources
from opdlens.report.load import score
from opdlens.report.side_inputs import CANDIDATES_FILE, load_online_effopd
from opdlens.viz.report import macro, write_report
from opdlens.viz.sections import table
from viz.online import write_candidates, write_online_json


def _log(rows: dict[int, float], column: str = "accuracy") -> pd.DataFrame:
    return pd.DataFrame({"step": list(rows), column: list(rows.values())})


def score_line(log: pd.DataFrame | None, steps: list[int]) -> str | None:
    """The findings' score line as the report's template renders it."""
    s = score(log, steps)
    return None if s is None else str(macro("score")(s))


def test_score_line_starts_at_step_0_when_it_was_logged() -> None:
    log = _log({0: 0.1738, 10: 0.2, 120: 0.3848})
    assert score_line(log, [20, 40, 120]) == (
        "accuracy <code>accuracy</code> from step 0 to step 120: 0.1738 → 0.3848 (up)"
    )
    # Not logged at 0: from the first saved step with a value, and said so.
    assert score_line(_log({10: 0.2, 120: 0.19}), [20, 120]) == (
        "accuracy <code>accuracy</code> from step 20 to step 120 (step 0 was not logged): "
        "0.2 → 0.19 (down)"
    )
    flat = score_line(_log({0: 0.5, 120: 0.502}), [120])
    assert flat is not None and flat.endswith("0.5 → 0.502 (about unchanged)")
    loss = score_line(_log({0: 2.0, 50: 1.0}, "loss"), [50])
    assert loss == "train loss <code>loss</code> from step 0 to step 50: 2 → 1"
    assert score_line(None, [1]) is None and score_line(_log({5: 0.1}, "lr"), [5]) is None


def test_online_section_states_the_speed_up_and_lists_every_candidate(tmp_path: Path) -> None:
    write_online_json(tmp_path / "online_effopd.json")
    demo = load_online_effopd(tmp_path / "online_effopd.json", "OPD + EffOPD")
    n, accepted = len(demo.candidates), int(demo.candidates["accepted"].sum())
    src = from_frame(pd.DataFrame({"run": ["OPD"], "step": [1], "tensor": ["w"]}), online=(demo,))
    assert list(src.online_lines) == [
        "OPD + EffOPD: steps to reach 0.27 accuracy: plain OPD 10, with online EffOPD 5 — 2.00× "
        "(faster); final accuracy: plain 0.3, with EffOPD 0.32. EffOPD: "
        f"{n} candidate(s) tried at steps 1, 2, 4, {accepted} accepted."
    ]
    online_section = macro("online_section")
    page = str(online_section([(demo, table(demo.candidates))], src.online_lines))
    assert page.startswith('<section id="online"><h2>Online EffOPD</h2>\n<ul class="online">')
    assert len(re.findall(r"<tr><td", page)) == n
    assert str(online_section([], [])) == ""


@pytest.mark.slow
def test_report_finds_the_callbacks_csv_in_the_run(
    viz_runs: dict[str, Path], tmp_path: Path
) -> None:
    run = tmp_path / "opd"
    shutil.copytree(viz_runs["opd"], run)
    rows = write_candidates(run / CANDIDATES_FILE)
    options = AnalyzeOptions(ranks=(1,), workers=1)
    src = load_sources(SourceOptions((run,), ("OPD",), analyze=options, spectra=0), tmp_path / "a")
    page = write_report(src, tmp_path / "report").read_text()
    findings = page[page.index("<h2>Findings") : page.index("</section>")]
    tried = sorted({r["step"] for r in rows})
    assert (
        f"<li>OPD: online EffOPD (EffOPDCallback): {len(rows)} candidate(s) tried at steps "
        f"{', '.join(map(str, tried))}, {sum(r['accepted'] for r in rows)} accepted.</li>"
    ) in findings
    online = page[page.index("<h2>Online EffOPD") : page.index("<h2>Top")]
    assert str(run / CANDIDATES_FILE) in online
    assert len(re.findall(r"<tr><td", online)) == len(rows)
