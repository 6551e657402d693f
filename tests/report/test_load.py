"""The report's loader: runs analysed in memory (no parquet read back), groups and the claims
computed before drawing, the shown runs chosen once, side inputs checked."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file, save_file
from viz.runs import write_run

from opdlens import AnalyzeOptions, open_run
from opdlens.analysis.findings import claim_lines
from opdlens.analysis.foresight import foresee, foresight_sentence
from opdlens.analysis.results import load_metrics
from opdlens.analysis.write import write_analysis
from opdlens.errors import InputNotFoundError, OptionError
from opdlens.report import SourceOptions, from_frame, load_sources
from opdlens.report.load import shown_runs

OPTIONS = AnalyzeOptions(ranks=(1,), workers=1)


def test_a_run_is_analysed_in_memory_and_only_its_factor_cache_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = write_run(tmp_path / "opd", 0)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the loader read a parquet file back")

    with monkeypatch.context() as m:
        m.setattr(pd, "read_parquet", refuse)
        src = load_sources(
            SourceOptions((run,), ("OPD",), analyze=OPTIONS, spectra=2), tmp_path / "o"
        )
    (rm,) = src.runs
    assert rm.run is not None and rm.metrics_dir is None
    # Nothing is written but the factor cache, which the next load re-uses.
    assert [p.relative_to(tmp_path / "o").as_posix() for p in (tmp_path / "o").iterdir()] == [
        "cache"
    ]
    assert rm.provenance["cache_hits"] == 0 and rm.provenance["inputs"]
    again = load_sources(
        SourceOptions((run,), ("OPD",), analyze=OPTIONS, spectra=0), tmp_path / "o"
    )
    assert again.runs[0].provenance["cache_hits"] > 0
    pd.testing.assert_frame_equal(again.runs[0].frame, rm.frame)
    # Update share at the final step against numpy on the checkpoint files.
    w0 = load_file(str(run / "checkpoint-0" / "model.safetensors"))
    w4 = load_file(str(run / "checkpoint-4" / "model.safetensors"))
    sq = {k: float(np.sum((w4[k].astype("float64") - w0[k].astype("float64")) ** 2)) for k in w0}
    final = rm.frame[rm.frame["step"] == 4].set_index("tensor")["update_share"]
    for name, share in final.items():
        assert share == pytest.approx(sq[name] / sum(sq.values()), rel=1e-5)
    assert set(src.spectra["run"]) == {"OPD"} and src.spectra["tensor"].nunique() == 2
    assert src.shown == ("OPD",) and src.findings is None and src.claims == ()


@pytest.fixture(scope="module")
def metrics(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("load")
    out = {}
    for label, seed in (("a", 0), ("b", 1)):
        out[f"run-{label}"] = run = write_run(root / label, seed)
        out[label] = root / f"metrics-{label}"
        write_analysis(open_run(run), out[label], ranks=(1,), workers=1)
    return out


def test_groups_are_checked_and_the_claims_computed_before_drawing(
    metrics: dict[str, Path], tmp_path: Path
) -> None:
    paths = (metrics["a"], metrics["a"], metrics["b"], metrics["b"])
    groups = {"A": ["A-1", "A-2"], "B": ["B-1", "B-2"]}
    rows = foresee(open_run(metrics["run-a"]), workers=1, scopes=("block", "overall"))
    fore = pd.concat([rows.assign(run=r) for r in ("A-1", "A-2", "B-1")], ignore_index=True)
    given = SourceOptions(paths, ("A-1", "A-2", "B-1", "B-2"), groups, foresight=fore, spectra=0)
    src = load_sources(given, tmp_path)
    assert src.shown == ("A-1", "B-1") == tuple(shown_runs(src.labels, groups))
    assert src.findings is not None and list(src.findings.per_run.index) == list(src.labels)
    assert list(src.claims) == claim_lines(src.findings) and len(src.claims) == 3
    assert all("inconclusive at n = 2" in line for line in src.claims)  # identical runs
    assert src.foresight is not None and set(src.foresight["run"]) == {"A-1", "B-1"}
    assert list(src.foresight_lines) == ["A-1", "B-1"]
    assert src.foresight_lines["A-1"] == foresight_sentence(rows)
    assert src.effopd is not None and set(src.effopd["run"]) <= {"A-1", "B-1"}
    # A per-run number, checked against the metrics themselves: MLP share at the final step.
    a = load_metrics(metrics["a"])
    at = a[a["step"] == a["step"].max()]
    mlp = at.loc[at["block"] == "mlp", "update_share"].sum()
    assert src.findings.per_run.filter(like="mlp").iloc[0, 0] == pytest.approx(mlp)
    with pytest.raises(OptionError, match="C"):
        load_sources(dataclasses.replace(given, groups={"C": ["C-1"]}), tmp_path / "x")


@pytest.mark.parametrize("bad", [["OPD"], {"OPD": 3}])
def test_ablation_must_be_results_or_directories(
    metrics: dict[str, Path], tmp_path: Path, bad: object
) -> None:
    given = SourceOptions((metrics["a"],), ablation=bad, spectra=0)  # type: ignore[arg-type]
    with pytest.raises(OptionError, match="The 'ablation' option must map a label to what"):
        load_sources(given, tmp_path)
    missing = SourceOptions((metrics["a"],), ablation={"OPD": tmp_path / "nowhere"}, spectra=0)
    with pytest.raises(InputNotFoundError, match="nowhere is not a directory"):
        load_sources(missing, tmp_path)


def test_from_frame_wants_a_run_column(metrics: dict[str, Path]) -> None:
    df = load_metrics(metrics["a"], "A")
    src = from_frame(df, groups={"G": ["A"]})
    assert src.labels == ["A"] and src.shown == ("A",) and src.findings is not None
    with pytest.raises(OptionError, match="'run' column"):
        from_frame(df.drop(columns=["run"]))


def test_overlap_compares_each_groups_runs_pairwise(tmp_path: Path) -> None:
    from safetensors.torch import load_file as load_torch
    from viz.sparse_runs import STEPS, write_sparse_run

    runs = [write_sparse_run(tmp_path / f"r{i}", i) for i in range(4)]
    given = SourceOptions(tuple(runs), ("A-1", "A-2", "B-1", "B-2"),
                          groups={"A": ["A-1", "A-2"], "B": ["B-1", "B-2"]},
                          analyze=OPTIONS, spectra=0, overlap=True)  # fmt: skip
    src = load_sources(given, tmp_path / "out")
    assert src.overlap is not None
    pairs = src.overlap[["run_group", "run_a", "run_b"]].drop_duplicates().values.tolist()
    assert pairs == [["A", "A-1", "A-2"], ["B", "B-1", "B-2"]]  # within groups only

    # Overall Jaccard of B's pair from the bf16 files' bits.
    def masks(root: Path) -> np.ndarray:
        w0 = load_torch(str(root / "checkpoint-0" / "model.safetensors"))
        wt = load_torch(str(root / f"checkpoint-{STEPS[-1]}" / "model.safetensors"))
        return np.concatenate([(w0[n].float().numpy() != wt[n].float().numpy()).ravel()
                               for n in sorted(w0)])  # fmt: skip

    a, b = masks(runs[2]), masks(runs[3])
    row = src.overlap.query("scope == 'overall' and run_a == 'B-1'").iloc[0]
    assert row["jaccard"] == pytest.approx(np.count_nonzero(a & b) / np.count_nonzero(a | b))
    assert row["changed_frac_a"] == pytest.approx(a.mean())
    assert [pair for pair, _ in src.overlap_lines] == ["A-1 vs A-2", "B-1 vs B-2"]
    assert "more than chance" in src.overlap_lines[1][1]


def test_overlap_without_groups_is_the_first_run_against_each_other(tmp_path: Path) -> None:
    from viz.sparse_runs import write_sparse_run

    runs = [write_sparse_run(tmp_path / f"r{i}", i) for i in range(2)]
    metrics_dir = tmp_path / "m"
    write_analysis(open_run(runs[1]), metrics_dir, ranks=(1,), workers=1)
    given = SourceOptions((runs[0], runs[1], metrics_dir), ("X", "Y", "Z"), analyze=OPTIONS,
                          spectra=0, overlap=True)  # fmt: skip
    src = load_sources(given, tmp_path / "out")
    assert src.overlap is not None and set(src.overlap["run_b"]) == {"Y"}
    assert any("overlap X vs Z skipped: it needs both run directories" in n for n in src.notes)


def test_runs_from_one_base_decompose_it_once(tmp_path: Path) -> None:
    """--base-geometry over two runs of one base: the second takes W_0's factors from the first
    run's cache; its rows are those of an analysis of its own."""
    opd = write_run(tmp_path / "opd", 0)
    rl = tmp_path / "rl"
    shutil.copytree(opd, rl)
    w0 = load_file(str(opd / "checkpoint-0" / "model.safetensors"))
    for ck in rl.glob("checkpoint-*"):
        w = load_file(str(ck / "model.safetensors"))
        moved = {k: (w0[k] + 2.0 * (w[k] - w0[k])).astype(np.float32) for k in w}
        save_file(moved, str(ck / "model.safetensors"), metadata={"format": "pt"})
    geo = dataclasses.replace(OPTIONS, base_geometry=True)
    src = load_sources(SourceOptions((opd, rl), ("OPD", "RL"), analyze=geo), tmp_path / "o")
    first, second = (rm.provenance["svd_methods"] for rm in src.runs)
    w0_svds = sum(n for m, n in first.items() if m.startswith("base_w0:"))
    assert w0_svds >= 2 and not any(m.startswith("base_w0:") for m in second)
    alone = load_sources(SourceOptions((rl,), ("RL",), analyze=geo), tmp_path / "alone")
    pd.testing.assert_frame_equal(src.runs[1].frame, alone.runs[0].frame)
    assert any(m.startswith("base_w0:") for m in alone.runs[0].provenance["svd_methods"])
