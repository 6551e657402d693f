"""The demo's three lens verdicts (fewer weights changed, the seeds' overlap against chance, the
base's principal directions) against numpy on its checkpoint files."""

from __future__ import annotations

import itertools

import lens_reference as ref
import pandas as pd
import pytest

from opdlens.analysis.findings import verdict
from opdlens.analysis.lenses import LENS_CLAIMS, OverlapFinding, overlap_line
from opdlens.analysis.stats import Interval
from opdlens.demo.pipeline import SPARSITY_DTYPE, format_summary
from opdlens.demo.settings import replicate_dir


def test_overlap_verdict_needs_an_interval_off_one() -> None:
    ratios = pd.Series([1.01, 1.02], index=["A-1 vs A-2", "A-1 vs A-3"])

    def found(low: float, high: float) -> OverlapFinding:
        return OverlapFinding("A", 3, ratios, None, None, Interval(1.0, low, high, 0.95, 2, 10, 0))

    assert found(1.001, 1.02).verdict == "holds"
    assert found(0.98, 0.999).verdict == "does not hold"
    assert found(0.99, 1.02).verdict == "inconclusive at n = 2 pair(s) of 3 run(s)"
    assert found(1.01, 1.01).verdict.startswith("inconclusive")  # no spread to judge by
    lone = OverlapFinding("RL", 1, pd.Series(dtype="float64"), None, None, None)
    assert overlap_line(lone) == (
        "RL's seeds change overlapping weights more than chance: inconclusive at n = 0 pair(s) "
        "of 1 run(s) — one run: no pair to compare."
    )


@pytest.mark.slow
def test_full_demo_lenses_match_numpy_on_its_checkpoints(full_demo) -> None:
    r = full_demo
    assert SPARSITY_DTYPE == "bfloat16"
    runs = r.out_dir / "runs"
    dirs = {label: runs / replicate_dir(method.lower(), i)
            for method, labels in r.groups.items() for i, label in enumerate(labels)}  # fmt: skip
    lenses = r.lenses
    assert lenses is not None and [c.quantity for c in lenses.claims] == [
        "changed_frac", "principal_energy",
    ]  # fmt: skip
    k = int(lenses.per_run["principal_k"].iloc[0])
    assert k == 16
    for label, path in dirs.items():
        row = lenses.per_run.loc[label]
        assert row["changed_frac"] == pytest.approx(ref.changed_frac(path), abs=1e-12)
        energy, random = ref.principal_energy(path, k)
        assert row["principal_energy"] == pytest.approx(energy, abs=1e-3)
        assert row["principal_random"] == pytest.approx(random, rel=1e-6)  # float32 norms
    # float32 storage: every run changed nearly every weight; the bf16 view is below 1
    assert (lenses.per_run["changed_frac"] < 0.99).all()
    # each method's three seeds give three pairs, each ratio numpy's
    assert [f.group for f in r.overlap] == ["OPD", "RL"]
    for f in r.overlap:
        members = r.groups[f.group]
        assert list(f.ratios.index) == [
            f"{a} vs {b}" for a, b in itertools.combinations(members, 2)
        ]
        for a, b in itertools.combinations(members, 2):
            want = ref.overlap_ratio(dirs[a], dirs[b])
            assert f.ratios[f"{a} vs {b}"] == pytest.approx(want, rel=1e-9)
        assert f.interval is not None and f.interval.low <= f.ratios.mean() <= f.interval.high
    # the printed lines: the verdict words follow the intervals, under their own heading
    text = format_summary(r)
    head = text.index("Sparsity, overlap and the base's principal directions")
    assert text.index("The paper's claims") < head < text.index("EffOPD replay")
    sparsity, principal = LENS_CLAIMS
    assert (
        f"  OPD changes fewer weights than RL: {verdict(lenses, sparsity)} — " in text[head:]
    )  # fmt: skip
    assert f"  OPD puts less of its update into the base's principal directions than RL: " \
           f"{verdict(lenses, principal)} — " in text[head:]  # fmt: skip
    for f in r.overlap:
        assert f"  {overlap_line(f)}\n" in text
    assert "A random update would put K/rows there: OPD " in text
