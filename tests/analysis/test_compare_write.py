"""analysis.compare_write: the summary line, and outputs written only where opdlens may write."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from planted import SMALL_CONFIG, small_states, write_state_run  # noqa: E402

from opdlens import open_run  # noqa: E402
from opdlens.analysis.compare_write import summary_line, summary_rank, write_compare  # noqa: E402
from opdlens.errors import OptionError  # noqa: E402


def _overall(ratio: float, frac: float = 0.23) -> pd.Series:
    return pd.Series({
        "changed_frac_a": frac, "changed_frac_b": 0.31, "overlap_ratio": ratio, "cos": 0.12,
        "subspace_left_k4": 0.41, "subspace_left_random_k4": 0.004,
    })  # fmt: skip


def test_summary_line_says_how_the_overlap_compares_with_chance() -> None:
    assert summary_line(_overall(2.4), 4) == (
        "the runs changed 23 % and 31 % of the weights; their changed sets overlap 2.4× more "
        "than chance; top-4 subspaces overlap 0.41 (random 0.004); cos 0.12"
    )
    assert "overlap 0.5× chance, less than independent masks" in summary_line(_overall(0.5), 4)
    assert "as much as chance (1.0×)" in summary_line(_overall(1.001), 4)
    lora = summary_line(_overall(math.nan, math.nan), 4)
    assert "an unknown share (LoRA)" in lora and "undefined" in lora
    assert summary_rank((1, 4, 16)) == 4 and summary_rank((8,)) == 8


def test_writes_only_into_a_directory_it_may_write(tmp_path: Path) -> None:
    states = small_states((0, 2))
    states[2] = {n: (w + 0.01).to(torch.bfloat16) for n, w in states[2].items()}
    states[0] = {n: w.to(torch.bfloat16) for n, w in states[0].items()}
    run = open_run(write_state_run(tmp_path / "run", states, SMALL_CONFIG))
    out = tmp_path / "out"
    result, lines = write_compare([run, run], out, ranks=(1,), scopes="block", workers=1)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "compare.csv", "compare.parquet", "provenance.json",
    ]  # fmt: skip
    assert set(result.frame["scope"]) == {"block"}  # the summary's overall row is not written
    blocks = result.frame  # their sums are the overall row's
    pct = f"{100 * blocks['changed_a'].sum() / blocks['numel'].sum():.3g} %"
    assert lines[0].startswith(f"the runs changed {pct} and {pct} of the weights")
    assert lines[0].endswith("top-1 subspaces overlap 1 (random 0.047); cos 1")  # A against A
    with pytest.raises(OptionError, match="overlaps the input"):
        write_compare([run, run], tmp_path / "run" / "checkpoint-2" / "out", workers=1)
