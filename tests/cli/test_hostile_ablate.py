"""Hostile ablate inputs (issue 22, items 13, 14, 26): huge ranks, edited scores.json, slugs."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli_errors import cli_fails  # noqa: E402
from extrapolation.conftest import write_run  # noqa: E402

from opdlens import open_run  # noqa: E402
from opdlens.extrapolation.ablate import SCORES_FILE, ablate  # noqa: E402


def distance_score(path: Path) -> float:
    """Minus the squared distance of every tensor to 1 (a function of the weights only)."""
    total = 0.0
    for f in sorted(Path(path).glob("*.safetensors")):
        total += sum(float(((v.double() - 1) ** 2).sum()) for v in load_file(f).values())
    return -total


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run", steps=(0, 2, 4))


def test_a_rank_past_int64_is_one_line_and_claims_no_out(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    cli_fails(["ablate", run, "--step", "4", "--scorer", "hindsight", "--ranks",
               "2,99999999999999999999", "--out", out], "--ranks", "< 2⁶³")  # fmt: skip
    assert not out.exists()


def test_a_rank_past_every_matrix_is_the_whole_update(run: Path, tmp_path: Path) -> None:
    """No list as long as k: a rank past every matrix's size scores like the full update."""
    r = open_run(run)
    res = ablate(r, 4, distance_score, ranks=[2**24], out=tmp_path / "o")
    curve = res.rank_curve
    assert curve["k"].tolist() == [2**24]
    assert curve["score"].iloc[0] == res.ablation["score_full"].iloc[0]
    assert curve["energy_k"].iloc[0] == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["scores"].update(full="oops"),
        lambda d: d["scores"].update(full=None),
        lambda d: d["scores"].update(full=[1]),
        lambda d: d["scores"].update(full=True),
        lambda d: d.update(scores=[1, 2]),
        lambda d: d.update(scores="x"),
        lambda d: d["scores"].update(full=math.nan),
        lambda d: d["scores"].update(full=math.inf),
    ],
)
def test_an_edited_scores_file_is_ignored_with_a_warning(run: Path, tmp_path: Path, edit) -> None:
    r, out = open_run(run), tmp_path / "o"
    clean = ablate(r, 4, distance_score, ranks=[1], out=out)
    saved = json.loads((out / SCORES_FILE).read_text())
    edit(saved)
    (out / SCORES_FILE).write_text(json.dumps(saved))  # json writes NaN and Infinity as such
    again = ablate(r, 4, distance_score, ranks=[1], out=out)
    assert again.ablation.attrs["reused"] == 0
    assert any(
        "is not a file of scores opdlens wrote" in w for w in again.ablation.attrs["warnings"]
    )
    assert again.ablation.equals(clean.ablation) and again.rank_curve.equals(clean.rank_curve)
    rewritten = json.loads((out / SCORES_FILE).read_text())["scores"]
    assert all(isinstance(v, float) and math.isfinite(v) for v in rewritten.values())


@pytest.mark.parametrize("text", ["null", "[1]", '"scores"', "{"])
def test_a_scores_file_that_is_not_an_object_is_ignored(run: Path, tmp_path: Path, text) -> None:
    r, out = open_run(run), tmp_path / "o"
    clean = ablate(r, 4, distance_score, out=out)
    (out / SCORES_FILE).write_text(text)
    again = ablate(r, 4, distance_score, out=out)
    assert again.ablation.attrs["reused"] == 0 and again.ablation.equals(clean.ablation)


def test_groups_that_slug_alike_keep_two_candidates(tmp_path: Path) -> None:
    """'foo bar' and 'foo-bar' both slug to foo-bar: each kept candidate has its own folder."""
    g = torch.Generator().manual_seed(0)
    w0 = {n: torch.randn(4, 4, generator=g) for n in ("foo bar.weight", "foo-bar.weight")}
    d = {n: torch.randn(4, 4, generator=g) for n in w0}
    for s in (0, 4):
        ck = tmp_path / "run" / f"checkpoint-{s}"
        ck.mkdir(parents=True)
        save_file({n: w0[n] + s * d[n] for n in w0}, ck / "model.safetensors")
    out = tmp_path / "o"
    res = ablate(open_run(tmp_path / "run"), 4, distance_score, by="kind", mode="drop",
                 keep=True, out=out)  # fmt: skip
    kept = sorted(p.name for p in (out / "candidates").iterdir() if p.name.startswith("drop-"))
    assert len(kept) == 2 and all(k.startswith("drop-kind-foo-bar-") for k in kept)
    by_group = {}
    for k in kept:
        state = load_file(out / "candidates" / k / "model.safetensors")
        dropped = [n for n in w0 if torch.equal(state[n], w0[n])]
        assert len(dropped) == 1
        by_group[dropped[0]] = state
    assert set(by_group) == set(w0)
    for name, state in by_group.items():
        other = next(n for n in w0 if n != name)
        assert torch.equal(state[other], w0[other] + 4 * d[other])
    # Each row's score is that of its own candidate.
    rows = res.ablation.set_index("group")["score_drop"]
    for name, state in by_group.items():
        expected = -sum(float(((v.double() - 1) ** 2).sum()) for v in state.values())
        assert rows[name.removesuffix(".weight")] == pytest.approx(expected, rel=1e-12)
