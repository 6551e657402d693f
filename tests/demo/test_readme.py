"""README's demo figures and lens lines are what the code prints, and what a fresh full demo does."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from opdlens.analysis.findings import CLAIMS, GroupFindings
from opdlens.analysis.lenses import LENS_CLAIMS, OverlapFinding, lens_lines
from opdlens.analysis.stats import BOOTSTRAP_SAMPLES, Difference, Interval, MeanSD
from opdlens.demo.readme import close_calls, figures_markdown, with_margin
from opdlens.demo.settings import demo_settings

README = Path(__file__).resolve().parents[2] / "README.md"
START = "<!-- demo-figures: python scripts/demo_figures.py -->\n"
END = "<!-- /demo-figures -->"
LENS_START = "<!-- demo-lenses: lens_lines of the full demo (opdlens/analysis/lenses.py) -->\n"
LENS_END = "<!-- /demo-lenses -->"
# The training runs on the portable code path (opdlens/demo/portable.py): one torch build gives
# the same runs on any x86-64 CPU; these bounds leave room for rounding in the analysis.
DECIMAL_TOL = 0.01  # absolute, for every number printed with a decimal point
# Integers (runs per group, steps, seeds) must match exactly.
_NUMBER = re.compile(r"[+\-−]?\d+(?:\.\d+)?")
_DECIMAL = re.compile(r"[+\-]?\d+\.\d+")


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


def _skip_unless_readme_torch() -> None:
    """Skip where this torch is not the one README's figures name (it may round differently)."""
    build = re.search(r"torch (\S+) on the portable code path", readme_block())
    assert build is not None, "README's figures block names the torch that made it"
    if build.group(1) != torch.__version__:
        # Another torch (or its MKL) may round differently, and the toy amplifies it.
        pytest.skip(
            f"README's figures come from torch {build.group(1)}; this is {torch.__version__}"
        )


@pytest.mark.slow
def test_readme_demo_figures_match_a_fresh_full_demo(full_demo) -> None:
    _skip_unless_readme_torch()
    check_close(readme_block(), figures_markdown(full_demo))


# -- the lens lines ------------------------------------------------------------------------------


def readme_lens_lines() -> list[str]:
    """The lines README prints between its demo-lenses markers (one text block)."""
    text = README.read_text(encoding="utf-8")
    start = text.index(LENS_START) + len(LENS_START)
    block = text[start : text.index(LENS_END, start)]
    assert block.startswith("```text\n") and block.endswith("\n```\n"), block
    return block[len("```text\n") : -len("\n```\n")].splitlines()


def _decimals(line: str, count: int) -> list[float]:
    numbers = [float(x) for x in _DECIMAL.findall(line)]
    assert len(numbers) == count, (count, line)
    return numbers


def _spread(mean: float, sd: float, n: int) -> np.ndarray:
    """n values whose mean and sample standard deviation (ddof = 1) are `mean` and `sd`."""
    z = np.arange(n) - (n - 1) / 2
    return mean + sd * z / z.std(ddof=1) if n > 1 else np.full(n, mean)


def findings_from_lines(lines: list[str], runs: int) -> tuple[GroupFindings, list[OverlapFinding]]:
    """The findings (`runs` per group) whose lens_lines are `lines`, from the numbers in them.

    Only the numbers are read back: the words, the verdicts and the formats are lens_lines'.
    """
    first, *pairs, last = lines
    a = first.split(" ", 1)[0]
    than = re.search(r" than (\S+?): ", first)
    assert than is not None, first
    b = than.group(1)
    groups = {g: [f"{g}-{i + 1}" for i in range(runs)] for g in (a, b)}
    summary, differences = {}, {}
    changed, principal = _decimals(first, 7), _decimals(last, 7 + 4)  # + a random update's
    for claim, numbers in zip(LENS_CLAIMS, (changed, principal[:7]), strict=True):
        ma, sa, mb, sb, d, low, high = numbers
        summary[claim.quantity] = {a: MeanSD(ma, sa, runs), b: MeanSD(mb, sb, runs)}
        diff = Difference(d, low, high, 0.95, runs, runs, BOOTSTRAP_SAMPLES, 0)
        differences[claim.quantity] = {b: diff}
    ra, sa, rb, sb = principal[7:]
    top = re.search(r"top-(\d+) ", last)
    assert top is not None, last
    per_run = pd.DataFrame(
        {"principal_random": [*_spread(ra, sa, runs), *_spread(rb, sb, runs)],
         "principal_k": float(top.group(1))},
        index=[*groups[a], *groups[b]],
    )  # fmt: skip
    findings = GroupFindings(groups, per_run, summary, differences, LENS_CLAIMS)
    overlap = []
    for line in pairs:
        n = re.search(r" over (\d+) pair\(s\)", line)
        assert n is not None, line
        k = int(n.group(1))
        mean, sd, im, low, high, jm, js, cm, cs = _decimals(line, 9)
        ratios = pd.Series(_spread(mean, sd, k), index=[f"pair {i}" for i in range(k)])
        interval = Interval(im, low, high, 0.95, k, BOOTSTRAP_SAMPLES, 0)
        group = line.split("'s seeds ", 1)[0]
        overlap.append(
            OverlapFinding(group, runs, ratios, MeanSD(jm, js, k), MeanSD(cm, cs, k), interval)
        )
    return findings, overlap


def check_lens_lines(lines: list[str], runs: int) -> None:
    """`lines` are word for word what lens_lines prints for the numbers written in them."""
    regenerated = lens_lines(*findings_from_lines(lines, runs))
    assert regenerated == lines, "\n".join(["README:", *lines, "lens_lines:", *regenerated])


def test_readme_lens_lines_are_what_lens_lines_prints() -> None:
    lines = readme_lens_lines()
    runs = demo_settings(quick=False).replicates
    assert len(lines) == 2 + 2  # fewer weights, each method's overlap, principal directions
    check_lens_lines(lines, runs)


@pytest.mark.parametrize(
    ("line", "old", "new"),
    [
        (0, "does not hold", "holds"),  # a verdict its interval contradicts
        (0, "0.981 ± 0.000", "0.98 ± 0.00"),  # another number format
        (0, "share of weights changed", "fraction of weights changed"),  # other words
        (1, "1.0055 ± 0.0002", "1.006 ± 0.000"),
        (1, "holds", "does not hold"),
        (3, "top-16 left singular", "top-16 singular"),
        (3, " A random update", " A random one"),
    ],
)
def test_lens_check_catches_a_changed_word_format_or_verdict(line, old, new) -> None:
    lines = readme_lens_lines()
    assert old in lines[line]
    lines[line] = lines[line].replace(old, new, 1)
    with pytest.raises(AssertionError):
        check_lens_lines(lines, demo_settings(quick=False).replicates)


@pytest.mark.slow
def test_readme_lens_lines_match_a_fresh_full_demo(full_demo) -> None:
    _skip_unless_readme_torch()
    fresh = full_demo.lens_verdict  # the lines the demo prints: lens_lines of its findings
    assert len(fresh) == 4, fresh
    check_close("\n".join(readme_lens_lines()), "\n".join(fresh))
