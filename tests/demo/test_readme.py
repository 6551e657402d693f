"""README's demo figures are what a fresh full demo prints, within the tolerances below."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from opdlens.analysis.findings import CLAIMS, GroupFindings
from opdlens.analysis.stats import Difference
from opdlens.demo.readme import close_calls, figures_markdown, with_margin

README = Path(__file__).resolve().parents[2] / "README.md"
START = "<!-- demo-figures: python scripts/demo_figures.py -->\n"
END = "<!-- /demo-figures -->"
# The training runs on the portable code path (opdlens/demo/portable.py): one torch build gives
# the same runs on any x86-64 CPU; these bounds leave room for rounding in the analysis.
DECIMAL_TOL = 0.01  # absolute, for every number printed with a decimal point
# Integers (runs per group, steps, seeds) must match exactly.
_NUMBER = re.compile(r"[+\-−]?\d+(?:\.\d+)?")


def readme_block() -> str:
    """The figures README prints between its demo-figures markers."""
    text = README.read_text(encoding="utf-8")
    start = text.index(START) + len(START)
    return text[start : text.index(END, start)].strip()


def split_numbers(text: str) -> tuple[str, list[str]]:
    """The text with each number replaced by '#', and the numbers in order."""
    return _NUMBER.sub("#", text), _NUMBER.findall(text)


def check_close(printed: str, fresh: str) -> None:
    """Same words and verdicts; numbers within DECIMAL_TOL (decimals) or equal (integers)."""
    (skeleton, numbers), (want_skeleton, want) = split_numbers(printed), split_numbers(fresh)
    assert skeleton == want_skeleton, f"README says:\n{printed}\n\na fresh demo prints:\n{fresh}"
    assert len(numbers) == len(want)
    for got, exp in zip(numbers, want, strict=True):
        value, expected = (float(x.replace("−", "-")) for x in (got, exp))
        if "." in exp:
            assert abs(value - expected) <= DECIMAL_TOL, (got, exp, fresh)
        else:
            assert value == expected, (got, exp, fresh)


def test_check_close_catches_a_changed_verdict_or_number() -> None:
    line = "holds — OPD 0.398 ± 0.014; difference +0.017 [+0.009, +0.030] at n = 3"
    check_close(line, line.replace("0.398", "0.404"))
    with pytest.raises(AssertionError):
        check_close(line, line.replace("0.398", "0.410"))
    with pytest.raises(AssertionError):
        check_close(line, line.replace("holds", "inconclusive"))
    with pytest.raises(AssertionError):
        check_close(line, line.replace("n = 3", "n = 4"))


def test_readme_holds_the_figures_block() -> None:
    block = readme_block()
    assert block.startswith("Trained with torch ") and block.count("```text") == 2
    assert all(claim.text.format(s="s") in block for claim in CLAIMS)


def _findings(low: float, high: float) -> GroupFindings:
    diff = Difference((low + high) / 2, low, high, 0.95, 3, 3, 10_000, 0)
    differences = {claim.quantity: {"RL": diff} for claim in CLAIMS}
    return GroupFindings({"OPD": ["a"], "RL": ["b"]}, pd.DataFrame(), {}, differences)


def test_a_verdict_needs_room_to_spare() -> None:
    assert with_margin(_findings(0.010, 0.030), "energy_k1")  # decided, 0.010 from 0
    assert not with_margin(_findings(0.002, 0.030), "energy_k1")  # decided on a knife-edge
    assert not with_margin(_findings(0.004, 0.030), "energy_k1")  # under 20 % of 0.017
    assert with_margin(_findings(-0.020, 0.030), "energy_k1")  # clearly undecided
    assert not with_margin(_findings(-0.029, 0.000), "energy_k1")  # undecided by a hair
    lines = close_calls(_findings(-0.029, 0.000))
    assert len(lines) == len(CLAIMS) and lines[0].startswith("Too close to call: ")
    assert close_calls(_findings(-0.020, 0.030)) == []


@pytest.mark.slow
def test_readme_demo_figures_match_a_fresh_full_demo(full_demo) -> None:
    printed, fresh = readme_block(), figures_markdown(full_demo)
    build = re.search(r"torch (\S+) on the portable code path", printed)
    assert build is not None, "README's figures block names the torch that made it"
    if build.group(1) != torch.__version__:
        # Another torch (or its MKL) may round differently, and the toy amplifies it.
        pytest.skip(
            f"README's figures come from torch {build.group(1)}; this is {torch.__version__}"
        )
    check_close(printed, fresh)
