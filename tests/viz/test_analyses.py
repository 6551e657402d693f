"""The lenses' figures of the figure set (foresight, ablation, overlap, …): drawn from their
tables, or noted."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from opdlens.report import from_frame
from opdlens.report.side_inputs import load_ablation
from opdlens.viz.analyses import LENSES, analysis_specs
from viz.inputs import write_ablation


def test_analysis_specs_note_what_is_missing(viz_runs: dict[str, Path], tmp_path: Path) -> None:
    frame = pd.DataFrame({"run": ["OPD"], "step": [4], "tensor": ["w"], "update_share": [1.0]})
    specs, notes = analysis_specs(from_frame(frame))
    assert specs == [] and len(notes) == 5
    assert notes[0].startswith("figure foresight skipped") and "--ablation LABEL=DIR" in notes[1]
    assert notes[2].startswith("figure sparsity skipped: no changed counts")
    assert notes[3].startswith("figure overlap skipped") and "--overlap" in notes[3]
    assert notes[4].startswith("figure principal skipped") and "--base-geometry" in notes[4]
    abl = load_ablation(write_ablation(viz_runs["opd"], tmp_path / "abl"))
    specs, notes = analysis_specs(from_frame(frame, ablation={"OPD": abl}))
    assert [s[0] for s in specs] == ["ablation"] and len(notes) == 4
    assert [ax.get_title() for ax in specs[0][3]().axes] == ["OPD", "rank curve"]


def test_each_lens_has_its_section_template() -> None:
    import importlib.resources

    sections = importlib.resources.files("opdlens.viz") / "templates" / "sections"
    assert [lens.stem for lens in LENSES] == [
        "foresight",
        "ablation",
        "sparsity",
        "overlap",
        "principal",
    ]
    for lens in LENSES:
        assert (sections / f"{lens.stem}.html.j2").is_file()
