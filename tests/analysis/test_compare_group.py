"""compare_group: every pair's numbers, with each run's copy of a tensor read once for all pairs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import checkpoints
import pytest
import torch

import opdlens

from .test_compare_reads import count_reads, update_of


@pytest.fixture(scope="module")
def group_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three bf16 runs of tiny llama (seeds 1–3), each with its own copy of one base."""
    return [
        checkpoints.write_hf_run(tmp_path_factory.mktemp(f"seed-{seed}"), "llama", (0, 2),
                                 dtype=torch.bfloat16, update=update_of(seed), trainer_files=False)
        for seed in (1, 2, 3)
    ]  # fmt: skip


def test_a_group_reads_each_run_once_and_gives_each_pairs_numbers(group_runs: list[Path]) -> None:
    paths = group_runs
    group = [opdlens.open_run(p) for p in paths]
    reads = [count_reads(r) for r in group]
    df = opdlens.compare_group(group, ranks=(1, 2), workers=1)
    names = group[0].tensor_names
    for got in reads:  # 3 runs, 3 pairs: each run's W_0 and W_2 once, not once per pair
        assert got == Counter({(s, n): 1 for n in names for s in (0, 2)})
    assert list(df["pair"].unique()) == ["0-1", "0-2", "1-2"]
    for key, (i, j) in (("0-1", (0, 1)), ("0-2", (0, 2)), ("1-2", (1, 2))):
        one = opdlens.compare(*(opdlens.open_run(paths[k]) for k in (i, j)), ranks=(1, 2),
                              workers=1)  # fmt: skip
        mine = df[df["pair"] == key].drop(columns=["pair", "run_a", "run_b"])
        assert mine.reset_index(drop=True).equals(one), key
        assert set(df[df["pair"] == key]["run_b"]) == {str(paths[j])}
