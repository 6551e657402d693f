"""The training curve above the weight metrics: the plot, the figure, sources and the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from transformers import TrainerState

from opdlens import AnalyzeOptions
from opdlens.analysis.results import load_metrics
from opdlens.io.training_log import read_training_log
from opdlens.report import SourceOptions, from_frame, load_sources
from opdlens.viz.figures import draw_figures
from opdlens.viz.plots import training_curve
from opdlens.viz.report import write_report
from viz.runs import write_run


def _csv(path: Path, steps: list[int], slope: float) -> Path:
    rows = "".join(f"{s},{0.1 + slope * s:.6g},{2.0 - 0.1 * s:.6g}\n" for s in steps)
    path.write_text("step,accuracy,loss\n" + rows)
    return path


@pytest.fixture
def logs(tmp_path: Path) -> dict[str, pd.DataFrame]:
    return {
        "OPD": read_training_log(_csv(tmp_path / "opd.csv", [0, 1, 2, 3, 4], 0.2)),
        "RL": read_training_log(_csv(tmp_path / "rl.csv", [0, 2, 4], 0.05)),
    }


def test_training_curve_draws_the_chosen_metric(logs: dict[str, pd.DataFrame]) -> None:
    ax = training_curve(logs["OPD"], saved_steps=[1, 4, 5])
    line = ax.get_lines()[0]
    assert line.get_xdata().tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(line.get_ydata(), [0.1, 0.3, 0.5, 0.7, 0.9])
    dots = ax.collections[0].get_offsets()
    # Saved step 5 has no log entry of its own: it takes the last value logged before it.
    np.testing.assert_allclose(dots, [[1, 0.3], [4, 0.9], [5, 0.9]])
    assert "accuracy" in ax.get_ylabel()
    loss = training_curve(logs["OPD"], metric="loss")
    assert "training loss" in loss.get_ylabel()
    with pytest.raises(ValueError, match=r"'metric' parameter of training_curve.*'nope'"):
        training_curve(logs["OPD"], metric="nope")
    with pytest.raises(ValueError, match="'step' column"):
        training_curve(pd.DataFrame({"loss": [1.0]}))


def test_figure_puts_the_curve_above_alignment_and_energy(
    viz_metrics: dict[str, Path], logs: dict[str, pd.DataFrame]
) -> None:
    df = pd.concat([load_metrics(viz_metrics[x], x.upper()) for x in ("opd", "rl")])
    panels, notes = draw_figures(from_frame(df, training=logs))
    panel = next(p for p in panels if p.stem == "training_and_weights")
    assert not any("training_and_weights skipped" in n for n in notes)
    axes = np.array(panel.figure.axes).reshape(3, 2)
    assert [ax.get_title() for ax in axes[0]] == ["OPD", "RL"]
    for col in range(2):  # one step axis per run, shared top to bottom
        top, mid, low = axes[:, col]
        assert top.get_shared_x_axes().joined(top, mid) and top.get_shared_x_axes().joined(top, low)
    np.testing.assert_allclose(axes[0, 1].get_lines()[0].get_ydata(), [0.1, 0.2, 0.3])
    assert "alignment with the final update" in axes[1, 0].get_ylabel()
    assert "energy in the top-" in axes[2, 0].get_ylabel()
    assert str(logs["RL"].attrs["source"]) in panel.caption
    _, without = draw_figures(from_frame(df))
    assert any(n.startswith("figure training_and_weights skipped") for n in without)


def _data_extent(ax) -> list:
    """The display-space bounding boxes of every data point drawn on ax (lines and markers)."""
    points = [np.column_stack([ln.get_xdata(), ln.get_ydata()]) for ln in ax.get_lines()
              if len(ln.get_xdata())]  # fmt: skip
    points += [c.get_offsets() for c in ax.collections if len(c.get_offsets())]
    return [ax.transData.transform(np.asarray(p, dtype="float64")) for p in points]


def test_figure_keeps_every_curve_in_view_and_legends_off_the_data(
    viz_metrics: dict[str, Path], tmp_path: Path
) -> None:
    """RL learns more than OPD: its curve stays inside the shared scale; legends sit outside."""
    df = pd.concat([load_metrics(viz_metrics[x], x.upper()) for x in ("opd", "rl")])
    logs = {
        "OPD": read_training_log(_csv(tmp_path / "opd.csv", [0, 1, 2, 3, 4], 0.05)),
        "RL": read_training_log(_csv(tmp_path / "rl.csv", [0, 2, 4], 0.2)),  # up to 0.9
    }
    panel = next(
        p
        for p in draw_figures(from_frame(df, training=logs))[0]
        if p.stem == "training_and_weights"
    )
    fig = panel.figure
    fig.canvas.draw()
    axes = np.array(fig.axes).reshape(3, 2)
    for ax in axes[0]:
        lo, hi = ax.get_ylim()
        assert lo == 0.0 and hi >= 0.9  # accuracy from 0, and RL's 0.9 inside
    renderer = fig.canvas.get_renderer()
    for row in axes:
        assert row[0].get_legend() is None  # moved off the first panel's curves
        legend = row[-1].get_legend()
        box = legend.get_window_extent(renderer)
        for ax in row:  # outside every panel of the row: no data point under it
            assert box.x0 >= ax.get_window_extent(renderer).x1
            for pts in _data_extent(ax):
                assert not ((pts[:, 0] >= box.x0) & (pts[:, 0] <= box.x1)
                            & (pts[:, 1] >= box.y0) & (pts[:, 1] <= box.y1)).any()  # fmt: skip
        labels = [t.get_text() for t in legend.get_texts()]
        assert "OPD" not in labels and "RL" not in labels  # one run per panel: no run entry
    mid = [t.get_text() for t in axes[1, 1].get_legend().get_texts()]
    assert mid[0] == "K = 1" and any("random subspace" in t for t in mid)
    energy = [t.get_text() for t in axes[2, 1].get_legend().get_texts()]
    assert energy and set(energy) <= {"attn", "mlp", "embed", "norm", "head", "other"}


def test_sources_read_given_logs_and_count_them(
    viz_metrics: dict[str, Path], logs: dict[str, pd.DataFrame], tmp_path: Path
) -> None:
    files = [Path(logs[x].attrs["source"]) for x in ("OPD", "RL")]
    both = (viz_metrics["opd"], viz_metrics["rl"])
    given = SourceOptions(both, ("OPD", "RL"), metrics=tuple(files), spectra=0)
    src = load_sources(given, tmp_path / "o")
    assert set(src.training) == {"OPD", "RL"}
    assert src.training["RL"]["accuracy"].tolist() == [0.1, 0.2, 0.3]
    with pytest.raises(ValueError, match=r"--metrics names 1 training log\(s\) but 2 run\(s\)"):
        load_sources(SourceOptions(both, metrics=tuple(files[:1])), tmp_path / "p")


@pytest.mark.slow
def test_sources_find_trainer_state_and_report_shows_it(tmp_path: Path) -> None:
    run = write_run(tmp_path / "opd", 0)
    history = [{"step": s, "loss": 1.0 / (s + 1)} for s in (1, 2, 3, 4)]
    history += [{"step": s, "eval_loss": 0.5 / s, "eval_accuracy": 0.2 * s} for s in (2, 4)]
    TrainerState(global_step=4, log_history=history).save_to_json(
        str(run / "checkpoint-4" / "trainer_state.json")
    )
    (run / "checkpoint-2" / "trainer_state.json").write_text("{not json")  # older: never read
    given = SourceOptions(
        (run,), ("OPD",), analyze=AnalyzeOptions(ranks=(1,), workers=1), spectra=0
    )
    src = load_sources(given, tmp_path / "out")
    log = src.training["OPD"]
    assert log.attrs["source"] == str(run / "checkpoint-4" / "trainer_state.json")
    assert log["eval_accuracy"].dropna().tolist() == [0.4, 0.8]
    page = write_report(src, tmp_path / "report").read_text()
    assert str(run / "checkpoint-4" / "trainer_state.json") in page
    # Step 0 was not logged and step 1 has no accuracy yet: the line starts where it does.
    assert (
        "OPD: accuracy <code>eval_accuracy</code> from step 2 to step 4 (step 0 was not logged): "
        "0.4 → 0.8 (up)." in page
    )
    assert 'id="fig-training_and_weights"' in page


def test_a_broken_log_found_beside_the_run_is_a_note(tmp_path: Path) -> None:
    run = write_run(tmp_path / "rl", 1)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1}\n{"step": 2, "loss": oops}\n')
    given = SourceOptions((run,), ("RL",), analyze=AnalyzeOptions(ranks=(1,), workers=1), spectra=0)
    src = load_sources(given, tmp_path / "out")
    assert dict(src.training) == {}
    assert any("RL: no training curve:" in n and "line 2 is not a JSON" in n for n in src.notes)
    assert src.runs[0].provenance["inputs"]  # the analysis itself went ahead
