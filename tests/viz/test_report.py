"""Tests for the HTML report: self-contained, complete, and rendered by a real browser."""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from opdlens import open_run
from opdlens.analysis.results import checkpoint_table, load_metrics, top_tensors
from opdlens.errors import OpdlensError
from opdlens.report import ReportOptions, SourceOptions, Sources, complete, load_sources
from opdlens.report.side_inputs import compute_foresight, load_ablation
from opdlens.viz.figures import FigureSet, draw_figures
from opdlens.viz.report import REPORT_FILE, macro, write_report
from opdlens.viz.save import save_figure
from opdlens.viz.sections import top_table
from viz.inputs import write_ablation


def _sources(
    viz_runs: dict[str, Path], viz_metrics: dict[str, Path], out: Path, spectra: int, **side
) -> Sources:
    """OPD and RL metrics, the OPD run opened (so the report has the reader's summary)."""
    both = (viz_metrics["opd"], viz_metrics["rl"])
    src = load_sources(SourceOptions(both, ("OPD", "RL"), spectra=spectra, **side), out)
    rm = src.runs[0]
    rm.run = open_run(viz_runs["opd"])
    rm.run.warnings.append("reader says: checkpoint-3 holds only trainer state")
    rm.checkpoints, rm.reader_warnings = checkpoint_table(rm)  # what load_sources does for a run
    return src


@pytest.fixture(scope="module")
def report(viz_runs: dict[str, Path], viz_metrics: dict[str, Path], tmp_path_factory) -> Path:
    """A report comparing the OPD run (opened, so with the reader's summary) and RL metrics."""
    out = tmp_path_factory.mktemp("report")
    abl = {
        "OPD": load_ablation(write_ablation(viz_runs["opd"], tmp_path_factory.mktemp("a") / "o"))
    }
    src = _sources(viz_runs, viz_metrics, out, spectra=2, ablation=abl)
    fore, _ = compute_foresight({"OPD": src.runs[0].run}, workers=1)
    src = complete(dataclasses.replace(src, foresight=fore))
    return write_report(src, out, ReportOptions(top=7, record={"labels": ["OPD", "RL"]}))


@pytest.fixture(scope="module")
def small_report(viz_runs: dict[str, Path], viz_metrics: dict[str, Path], tmp_path_factory) -> Path:
    """A report with one figure (block_norms), to check the page itself quickly."""
    out = tmp_path_factory.mktemp("small-report")
    src = _sources(viz_runs, viz_metrics, out, spectra=1)
    panels, notes = draw_figures(src)
    figures = FigureSet(notes=notes)
    for panel in (p for p in panels if p.stem in ("block_norms", "spectra-RL")):
        figures.paths[panel.stem] = save_figure(panel.figure, out / "figures", panel.stem)
        figures.titles[panel.stem], figures.captions[panel.stem] = panel.title, panel.caption
    return write_report(src, out, ReportOptions(top=7), figures=figures)


def test_small_report_is_self_contained(small_report: Path) -> None:
    page = small_report.read_text()
    assert small_report.name == REPORT_FILE
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", page)
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == page.count("<img ") == 2
    png = (small_report.parent / "figures" / "block_norms.png").read_bytes()
    assert base64.b64encode(png).decode() in images


@pytest.mark.slow
def test_report_is_self_contained(report: Path) -> None:
    page = report.read_text()
    assert report.name == REPORT_FILE
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", page)
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    # 5 core + 2 strips + 2 spectra + foresight + ablation + sparsity
    assert len(images) == page.count("<img ") == 12
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")


def test_report_contents(small_report: Path, viz_metrics: dict[str, Path]) -> None:
    page = small_report.read_text()
    for heading in ("Findings", "Figures", "Top 7 tensors by update share", "Warnings",
                    "Inventories"):  # fmt: skip
        assert f"<h2>{heading}" in page
    assert "reader says: checkpoint-3 holds only trainer state" in page
    assert "cached top-K singular values only" in page  # RL spectra come from its cache
    assert "replay_scores skipped" in page
    assert str(viz_metrics["rl"] / "provenance.json") in page
    assert "hf-safetensors" in page  # the OPD run's checkpoint table
    top = pd.read_parquet(viz_metrics["opd"] / "metrics.parquet")
    final = top[top["step"] == top["step"].max()].nlargest(7, "update_share")
    section = page[page.index("<h2>Top 7") : page.index("<h2>Warnings")]
    positions = [section.index(f"<td>{name}</td>") for name in final["tensor"]]
    assert positions == sorted(positions)  # ranked as in the metrics
    assert f"{final['update_share'].iloc[0]:.4g}" in section


def _h2(page: str) -> list[str]:
    return [re.sub(r" \(\d+\)$", "", h) for h in re.findall(r"<h2>([^<]*)</h2>", page)]


def test_report_leads_with_findings_and_folds_the_inventories(small_report: Path) -> None:
    page = small_report.read_text()
    heads = _h2(page)
    assert heads[0] == "Findings" and heads[-2:] == ["Warnings", "Inventories"]
    findings = page[page.index("<h2>Findings") : page.index("<h2>Figures")]
    assert 'id="fig-block_norms"' in findings  # the key figure, on the first screen
    assert page.count('id="fig-block_norms"') == 1
    inventories = page[page.index("<h2>Inventories") :]
    # Checkpoint paths, block tables and provenance are there, each folded, and nowhere before.
    assert "hf-safetensors" in inventories and "hf-safetensors" not in page[: page.index(
        "<h2>Inventories")]  # fmt: skip
    assert "Update share and low-rank energy by block" in inventories
    assert "&#34;versions&#34;" in inventories and "<details open" not in page
    assert inventories.count("<details>") == 2 + 3  # 2 runs, this report and 2 analyses
    # Skipped figures are notes (one line), not warnings; a real problem stays a warning.
    warnings = page[page.index("<h2>Warnings") : page.index("<h2>Inventories")]
    listed = re.findall(r"<li>([^<]*)</li>", warnings)
    assert any("reader says: checkpoint-3" in w for w in listed)
    assert not any("skipped" in w for w in listed)
    notes = re.findall(r'<p class="meta notes">Notes: ([^<]*)</p>', warnings)
    assert len(notes) == 1 and "figure replay_scores skipped" in notes[0]
    assert "OPD: no training curve: " in notes[0] and ": no training log (" in notes[0]
    assert f"<h2>Warnings ({len(listed)})</h2>" in page


def test_top_table_leaves_out_what_is_1_by_construction(
    small_report: Path, viz_metrics: dict[str, Path]
) -> None:
    page = small_report.read_text()
    section = page[page.index("<h2>Top 7") : page.index("<h2>Warnings")]
    heads = re.findall(r"<th>([^<]+)</th>", section)
    assert heads == ["run", "step", "tensor", "block", "shape", "update_share", "rel_update_norm",
                     "energy_k1", "stable_rank"]  # fmt: skip
    assert "1 by construction" in section and '<div class="wide top">' in section
    # Shown at a step before the run's final one, alignment is a finding: the columns stay.
    df = load_metrics(viz_metrics["opd"], "OPD")
    last = int(df["step"].max())
    table = str(macro("top_section")(3, top_table(top_tensors(df, 3), {"OPD": last + 1})))
    heads = re.findall(r"<th>([^<]+)</th>", table)
    assert heads[-5:] == ["energy_k1", "align_left_k1", "align_right_k1", "stable_rank",
                          "cos_to_final"]  # fmt: skip
    assert "1 by construction" not in table


def test_report_refuses_output_inside_run(
    viz_runs: dict[str, Path], viz_metrics: dict[str, Path], tmp_path: Path
) -> None:
    src = load_sources(SourceOptions((viz_metrics["opd"],), spectra=0), tmp_path)
    src.runs[0].run, src.runs[0].source = open_run(viz_runs["opd"]), viz_runs["opd"]
    with pytest.raises(OpdlensError, match="overlaps the input"):
        write_report(src, viz_runs["opd"] / "report")
    with pytest.raises(ValueError, match="'top' parameter"):
        write_report(src, tmp_path, ReportOptions(top=0))
    assert not (viz_runs["opd"] / "report").exists()


def _chromium() -> str:
    """The browser scripts/test.sh installs; missing is a failure in CI, a skip elsewhere."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is missing: scripts/test.sh installs it before the tests run")
    pytest.skip("chromium is not installed; run the suite through scripts/test.sh to install it")


def _headless(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
             "--enable-logging=stderr", "--v=0"]  # fmt: skip
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=180)


# Measures, once laid out at the test's window width, how far the page and the widest table reach,
# and where the findings, the key figure and the inventories start on the page.
_MEASURE = """<script>
window.addEventListener("load", function () {
  var top = function (q) { var e = document.querySelector(q);
    return e ? Math.round(e.getBoundingClientRect().top + window.scrollY) : -1; };
  document.body.setAttribute("data-findings-top", top("#findings"));
  document.body.setAttribute("data-key-figure-top", top("#findings figure"));
  document.body.setAttribute("data-inventories-top", top("#inventories"));
  var open = document.querySelectorAll("#inventories details[open]").length;
  document.body.setAttribute("data-inventories-open", open);
  document.body.setAttribute("data-page-height", document.documentElement.scrollHeight);
  var style = getComputedStyle(document.body), widest = 0;
  var right = document.body.getBoundingClientRect().right - parseFloat(style.paddingRight);
  document.querySelectorAll("table").forEach(function (t) {
    widest = Math.max(widest, t.getBoundingClientRect().right - right);
  });
  document.body.setAttribute("data-page-overflow",
    document.documentElement.scrollWidth - window.innerWidth);
  document.body.setAttribute("data-table-overflow", Math.round(widest));
});
</script></head>"""


@pytest.mark.slow
def test_report_in_a_real_browser(report: Path, tmp_path: Path) -> None:
    _check_in_browser(report, tmp_path, "12/12")


@pytest.fixture(scope="module")
def grouped_report(viz_metrics: dict[str, Path], tmp_path_factory) -> Path:
    """A report on two groups of two runs (each metrics directory loaded twice)."""
    out = tmp_path_factory.mktemp("grouped-report")
    m = [viz_metrics["opd"], viz_metrics["opd"], viz_metrics["rl"], viz_metrics["rl"]]
    groups = {"A": ["A-1", "A-2"], "B": ["B-1", "B-2"]}
    src = load_sources(
        SourceOptions(tuple(m), ("A-1", "A-2", "B-1", "B-2"), groups, spectra=1), out
    )
    return write_report(src, out)


@pytest.mark.slow
def test_grouped_report_in_a_real_browser(grouped_report: Path, tmp_path: Path) -> None:
    page = grouped_report.read_text()
    assert "<h2>Groups of runs</h2>" in page and 'id="fig-findings"' in page
    assert "A − B, 95 % CI" in page and "inconclusive at n = 2" in page  # identical runs
    _check_in_browser(grouped_report, tmp_path, "10/10")


def _check_in_browser(report: Path, tmp_path: Path, images: str) -> None:
    """Every image decodes, nothing sticks out at 1200 px, no console error, pixels drawn."""
    browser = _chromium()
    url = report.resolve().as_uri()
    dom = _headless(browser, tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert f'data-images-ok="{images}"' in dom.stdout, re.findall(r"data-images-ok=\S+", dom.stdout)
    measured = tmp_path / "measured.html"
    measured.write_text(report.read_text().replace("</head>", _MEASURE, 1))
    dom = _headless(browser, tmp_path / "profile", "--virtual-time-budget=5000",
                    "--window-size=1200,3000", "--dump-dom", measured.as_uri())  # fmt: skip
    # Nothing sticks out of the page, and every table fits its column at 1200 px.
    reach = dict(re.findall(r'data-(page|table)-overflow="(-?\d+)"', dom.stdout))
    assert sorted(reach) == ["page", "table"], dom.stdout[-2000:]
    assert int(reach["page"]) <= 0 and int(reach["table"]) <= 0, reach
    # As laid out: the findings, with their figure, come first; the inventories last, folded.
    at = dict(re.findall(r'data-((?:findings|key-figure|inventories)-(?:top|open))="(-?\d+)"',
                         dom.stdout))  # fmt: skip
    at = {k: int(v) for k, v in at.items()}
    # On the first screen (900 px): the findings and the top of their figure.
    assert 0 <= at["findings-top"] < at["key-figure-top"] < 900, at
    assert at["inventories-top"] > at["key-figure-top"] + 900 and at["inventories-open"] == 0, at
    height = re.search(r'data-page-height="(\d+)"', dom.stdout)
    assert height and at["inventories-top"] > int(height.group(1)) / 2, at  # in the last half
    shot = tmp_path / "shot.png"
    render = _headless(browser, tmp_path / "profile", f"--screenshot={shot}",
                       "--window-size=1200,3000", url)  # fmt: skip
    assert render.returncode == 0 and shot.is_file(), render.stderr[-2000:]
    for log in (dom.stderr, render.stderr):
        assert "Uncaught" not in log and "ERROR:CONSOLE" not in log, log[-2000:]
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("L"), dtype="float64")
    assert pixels.shape == (3000, 1200) and pixels.std() > 10  # text, tables and figures drawn


def test_report_foresight_and_ablation_sections(report: Path) -> None:
    page = report.read_text()
    heads = _h2(page)
    assert heads == ["Findings", "Figures", "Foresight", "Marginal utility (ablation)",
                     "Update sparsity", "Top 7 tensors by update share at the final step",
                     "Warnings", "Inventories"]  # fmt: skip
    fore = page[page.index("<h2>Foresight</h2>") : page.index("<h2>Marginal utility")]
    assert 'id="fig-foresight"' in fore and "Computed from the checkpoints of OPD" in fore
    # The section opens with its sentence.
    assert re.match(
        r'<section id="foresight"><h2>Foresight</h2>\n<ul class="foresight"><li>OPD: '
        r"(from step \d+ on|at no step|only at step|one extrapolation)",
        page[page.index('<section id="foresight">') :],
    )
    assert "What EffOPD's schedule would try" in fore and "alpha_star" in fore
    abl = page[page.index("<h2>Marginal utility") : page.index("<h2>Top 7")]
    assert 'id="fig-ablation"' in abl
    assert abl.startswith(
        '<h2>Marginal utility (ablation)</h2>\n<ul class="ablation"><li>OPD: At step 4, '
    )
    assert "OPD (scorer mlp_energy):" in abl  # the scorer ablate recorded
    # float32 runs: nearly every weight changed, and the sparsity section says so first.
    assert re.match(
        r'<section id="sparsity"><h2>Update sparsity</h2>\n<p>OPD changed 100 % of the weights '
        r"\(\d+ % by more than 1e-05\), RL 100 % \(\d+ %\)\.</p>",
        page[page.index('<section id="sparsity">') :],
    )
    # Each of the three figures is shown once, in its own section.
    assert page.count('id="fig-foresight"') == 1 and page.count('id="fig-ablation"') == 1
    assert page.count('id="fig-sparsity"') == 1


def test_the_template_ships_as_package_data() -> None:
    """Found through importlib.resources (as from a wheel), and declared for setuptools."""
    import importlib.resources

    from opdlens.viz.report import TEMPLATE

    template = importlib.resources.files("opdlens.viz") / "templates" / TEMPLATE
    assert template.is_file() and "<!DOCTYPE html>" in template.read_text(encoding="utf-8")
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["opdlens.viz"]
    assert any(Path("templates", TEMPLATE).match(p) for p in patterns)
    assert any(d.startswith("jinja2") for d in config["project"]["dependencies"])


def test_the_template_escapes_every_value() -> None:
    cell = macro("table")(top_table(pd.DataFrame({"run": ["<b>&'\""], "step": [1]}), {}).table)
    assert "<b>" not in str(cell) and "&lt;b&gt;&amp;&#39;&#34;" in str(cell)
