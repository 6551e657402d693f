"""README's demo figures are what a fresh full demo prints, within the tolerances below."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from opdlens.analysis.findings import CLAIMS, verdict
from opdlens.demo.readme import MARGIN_ABS, MARGIN_REL, figures_markdown, with_margin

README = Path(__file__).resolve().parents[2] / "README.md"
START = "<!-- demo-figures: python scripts/demo_figures.py -->\n"
END = "<!-- /demo-figures -->"
# The training is float64 on one thread: any thread count, inline or in processes, gives the same
# runs on one set of CPU kernels; these bounds leave room for rounding in the analysis.
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
    assert block.startswith("Teacher: ") and block.count("```text") == 2
    assert all(claim.text.format(s="s") in block for claim in CLAIMS)


@pytest.mark.slow
def test_readme_demo_figures_match_a_fresh_full_demo(full_demo) -> None:
    printed, fresh = readme_block(), figures_markdown(full_demo)
    sft = [re.search(r"after (\d+) SFT steps", text).group(1) for text in (printed, fresh)]
    if sft[0] != sft[1]:
        # Float64 on one thread reproduces the runs for one set of CPU kernels (any thread
        # count, inline or in worker processes), but another kernel path (e.g.
        # ATEN_CPU_CAPABILITY=default) rounds differently and the SFT ends elsewhere.
        pytest.skip(
            f"this machine's CPU kernels trained another teacher ({sft[1]} SFT steps, "
            f"README's took {sft[0]}): README's figures are not this machine's"
        )
    check_close(printed, fresh)
    # A decided verdict is decided with room to spare, so that rounding elsewhere cannot flip it.
    for claim in CLAIMS:
        if verdict(full_demo.findings, claim) in ("holds", "does not hold"):
            assert with_margin(full_demo.findings, claim.quantity), (
                f"{claim.quantity}: the 95 % interval's nearer end is within "
                f"max({MARGIN_ABS}, {MARGIN_REL} × |difference|) of 0"
            )
