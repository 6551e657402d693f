"""viz.sparsity: the changed_frac heatmap and the report's sparsity section, on bf16 runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from opdlens import open_run
from opdlens.analysis.subnetwork import changed_cells, final_changed
from opdlens.analysis.write import write_analysis
from opdlens.errors import NothingToDrawError
from opdlens.report import SourceOptions, from_frame, load_sources
from opdlens.viz.figures import FigureSet, draw_figures
from opdlens.viz.report import write_report
from opdlens.viz.save import save_figure
from opdlens.viz.sparsity import report_figure, sparsity_heatmap_figure
from viz.runs import CONFIG, shapes

STEPS = (0, 2, 4)
KINDS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def _write(root: Path, seed: int, moved: float) -> Path:
    """bf16 weights; a `moved` share of each tensor's elements moves by ~1e-2 per step, the rest
    by 1e-5·|w| (rounds back to the stored base value)."""
    g = torch.Generator().manual_seed(seed)
    for step in STEPS:
        g.manual_seed(seed)
        state = {}
        for name, shape in shapes().items():
            w0 = torch.randn(shape, generator=g) * 0.05
            mask = torch.rand(shape, generator=g) < moved
            d = torch.where(mask, 1e-2 * torch.randn(shape, generator=g), 1e-5 * w0.abs())
            state[name] = (w0.bfloat16().float() + step * d).bfloat16()
        d_ = root / f"checkpoint-{step}"
        d_.mkdir(parents=True)
        save_file(state, str(d_ / "model.safetensors"), metadata={"format": "pt"})
        (d_ / "config.json").write_text(json.dumps(CONFIG))
    return root


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """label → (run, metrics dir) for OPD (20 % moved) and RL (40 % moved)."""
    root = tmp_path_factory.mktemp("sparse-viz")
    out = {}
    for label, seed, moved in (("OPD", 0, 0.2), ("RL", 1, 0.4)):
        run = _write(root / label, seed, moved)
        out[label] = (run, root / f"metrics-{label}")
        write_analysis(open_run(run), out[label][1], ranks=(1,), workers=1)
    return out


def _counts(run: Path) -> pd.DataFrame:
    """(layer, kind, changed, changed_tol, numel) per layered tensor at the last step, by numpy."""
    w0, wt = (load_file(run / f"checkpoint-{s}" / "model.safetensors") for s in (0, STEPS[-1]))
    rows = []
    for name, a in w0.items():
        m = re.match(r"model\.layers\.(\d+)\.\w+\.(\w+)\.weight", name)
        if m is None:
            continue
        x, y = a.float().numpy().astype(np.float64), wt[name].float().numpy().astype(np.float64)
        kind = m.group(2) if m.group(2) in KINDS else "norm"
        rows.append(
            (int(m.group(1)), kind, int((x != y).sum()), int((abs(y - x) > 1e-5).sum()), x.size)
        )
    return pd.DataFrame(rows, columns=["layer", "kind", "c", "t", "n"])


def test_heatmap_cells_are_pooled_counts(analysed) -> None:
    src = load_sources(SourceOptions(tuple(m for _, m in analysed.values()), ("OPD", "RL")),
                       analysed["OPD"][1].parent / "out")  # fmt: skip
    fig = sparsity_heatmap_figure(src.sparsity_cells, src.sparsity_shares)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2
    for ax, label in zip(panels, ("OPD", "RL"), strict=True):
        c = _counts(analysed[label][0])
        want = c.groupby(["layer", "kind"])[["c", "n"]].sum()
        kinds = [t.get_text() for t in ax.get_xticklabels()]
        image = ax.images[0].get_array().filled(np.nan)
        for (layer, kind), s in want.iterrows():
            assert image[layer, kinds.index(kind)] == s["c"] / s["n"]
        assert ax.get_title().startswith(f"{label} · step 4")
        w0, wt = (load_file(analysed[label][0] / f"checkpoint-{s}" / "model.safetensors")
                  for s in (0, 4))  # fmt: skip
        whole = sum(int((w0[n].float() != wt[n].float()).sum()) for n in w0)
        assert f"{whole / sum(t.numel() for t in w0.values()):.1%} of all weights" in ax.get_title()
        assert ax.images[0].get_clim() == (0.0, 1.0)
    frames = {rm.label: rm.frame for rm in src.runs}
    groups = {"both": ["OPD", "RL"]}
    group = sparsity_heatmap_figure(
        changed_cells(frames, groups), final_changed(frames, groups), tol=True
    )
    (ax,) = [a for a in group.axes if a.images]
    both = pd.concat([_counts(analysed[k][0]) for k in ("OPD", "RL")])
    cell = both[(both["layer"] == 1) & (both["kind"] == "down_proj")]
    kinds = [t.get_text() for t in ax.get_xticklabels()]
    image = ax.images[0].get_array().filled(np.nan)
    assert image[1, kinds.index("down_proj")] == cell["t"].sum() / cell["n"].sum()
    assert ax.get_title().startswith("both · 2 runs")


def test_report_section_opens_with_what_was_found(analysed, tmp_path: Path) -> None:
    metrics = tuple(m for _, m in analysed.values())
    src = load_sources(SourceOptions(metrics, ("OPD", "RL")), tmp_path)
    shares = {}
    for label, (run, _) in analysed.items():
        w0, wt = (load_file(run / f"checkpoint-{s}" / "model.safetensors") for s in (0, 4))
        changed = sum(int((w0[n].float() != wt[n].float()).sum()) for n in w0)
        shares[label] = changed / sum(t.numel() for t in w0.values())
    assert 0.15 < shares["OPD"] < 0.25 and 0.35 < shares["RL"] < 0.45
    pct = {k: f"{100 * v:.0f} %" for k, v in shares.items()}
    assert src.sparsity_line.startswith(f"OPD changed {pct['OPD']} of the weights (")
    assert f"RL {pct['RL']} (" in src.sparsity_line
    panels, _ = draw_figures(src)
    (panel,) = [p for p in panels if p.stem == "sparsity"]
    figures = FigureSet()
    figures.paths["sparsity"] = save_figure(panel.figure, tmp_path / "figures", "sparsity")
    figures.titles["sparsity"], figures.captions["sparsity"] = panel.title, panel.caption
    page = write_report(src, tmp_path, figures=figures).read_text()
    section = page[page.index('<section id="sparsity">') :]
    first = re.search(r"<p>(.*?)</p>", section).group(1)
    assert first == src.sparsity_line


def test_without_counts_the_figure_is_skipped_with_a_note() -> None:
    frame = pd.DataFrame({"run": ["OPD"], "step": [4], "tensor": ["w"], "update_share": [1.0]})
    note = report_figure(from_frame(frame))
    assert isinstance(note, str) and note.startswith("figure sparsity skipped: no changed counts")


def test_bad_tables_are_refused() -> None:
    empty = pd.DataFrame(columns=["label", "layer", "kind", "changed_frac", "changed_frac_tol"])
    overall = pd.DataFrame({"label": ["OPD"], "where": ["step 4"], "changed_frac": [np.nan],
                            "changed_frac_tol": [np.nan]})  # fmt: skip
    with pytest.raises(NothingToDrawError, match="'cells' argument .* has no rows"):
        sparsity_heatmap_figure(empty, overall)
    lora = pd.DataFrame({"label": ["OPD"], "layer": [0], "kind": ["q_proj"],
                         "changed_frac": [np.nan], "changed_frac_tol": [np.nan]})  # fmt: skip
    with pytest.raises(NothingToDrawError, match="'cells' argument .* has no changed counts"):
        sparsity_heatmap_figure(lora, overall)
    with pytest.raises(ValueError, match="'overall' argument of sparsity_heatmap_figure needs"):
        sparsity_heatmap_figure(lora, overall.drop(columns="where"))
