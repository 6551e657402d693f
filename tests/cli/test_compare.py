"""`opdlens compare`: outputs, the summary line, the group table, and one-line refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1] / "analysis"))
from cli_errors import cli_fails  # noqa: E402
from planted import SMALL_CONFIG, small_states, write_state_run  # noqa: E402

from opdlens.cli import app  # noqa: E402

runner = CliRunner()


def _run(root: Path, seed: int, base_seed: int = 0) -> Path:
    """A bf16 run whose step 2 changes a shared 10 % and its own 10 % of every tensor."""
    base = {n: w.to(torch.bfloat16) for n, w in small_states((0,), seed=base_seed)[0].items()}
    step: dict[str, torch.Tensor] = {}
    for i, (n, w) in enumerate(base.items()):
        g_shared = torch.Generator().manual_seed(i)
        g_own = torch.Generator().manual_seed(1000 * seed + i)
        m = (torch.rand(w.shape, generator=g_shared) < 0.1) | (
            torch.rand(w.shape, generator=g_own) < 0.1
        )
        step[n] = (w.float() + m * 0.1 * torch.randn(w.shape, generator=g_own)).to(w.dtype)
    return write_state_run(root, {0: base, 2: step}, SMALL_CONFIG)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return [_run(tmp_path_factory.mktemp(f"seed{s}"), s) for s in (1, 2, 3)]


def _states(run: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    return (
        load_file(run / "checkpoint-0" / "model.safetensors"),
        load_file(run / "checkpoint-2" / "model.safetensors"),
    )


def test_writes_the_table_provenance_and_one_summary_line(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = runner.invoke(app, ["compare", str(runs[0]), str(runs[1]), "--out", str(out),
                              "--ranks", "1,4", "--workers", "1"])  # fmt: skip
    assert res.exit_code == 0, res.output
    pq, csv = pd.read_parquet(out / "compare.parquet"), pd.read_csv(out / "compare.csv")
    assert len(pq) == len(csv) and set(pq["scope"]) == {"tensor", "block", "layer", "overall"}
    assert np.allclose(pq["jaccard"], csv["jaccard"], equal_nan=True)
    # The overall changed shares and Jaccard, by hand from the files.
    (w0, wa), (_, wb) = _states(runs[0]), _states(runs[1])
    ma = np.concatenate([(wa[n].float() != w0[n].float()).numpy().ravel() for n in w0])
    mb = np.concatenate([(wb[n].float() != w0[n].float()).numpy().ravel() for n in w0])
    pa, pb = ma.mean(), mb.mean()
    jac = (ma & mb).sum() / (ma | mb).sum()
    ratio = jac / (pa * pb / (pa + pb - pa * pb))
    overall = pq[pq["scope"] == "overall"].iloc[0]
    assert overall["overlap_ratio"] == pytest.approx(ratio)
    lines = res.stdout.splitlines()
    assert lines[0] == (
        f"the runs changed {100 * pa:.3g} % and {100 * pb:.3g} % of the weights; their changed "
        f"sets overlap {ratio:.3g}× more than chance; top-4 subspaces overlap "
        f"{overall['subspace_left_k4']:.2g} (random {overall['subspace_left_random_k4']:.2g}); "
        f"cos {overall['cos']:.2g}"
    )
    assert lines[1].startswith(f"wrote {out}/compare.parquet")
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["options"]["ranks"] == [1, 4] and prov["steps"] == [[2, 2]]
    assert [len(i) for i in prov["inputs"]] == [2, 2] and prov["warnings"] == []
    # Run again into the directory it wrote: replaced, as analyze does.
    again = runner.invoke(app, ["compare", str(runs[0]), str(runs[1]), "--out", str(out), "-q",
                                "--scopes", "overall"])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert list(pd.read_parquet(out / "compare.parquet")["scope"]) == ["overall"]
    assert "compare [" not in again.stderr


def test_a_different_base_is_one_line_and_the_override_a_recorded_warning(
    runs: list[Path], tmp_path: Path
) -> None:
    other = _run(tmp_path / "other", 2, base_seed=9)
    out = tmp_path / "out"
    line = cli_fails(["compare", runs[0], other, "--out", out, "--workers", "1"],
                     str(runs[0] / "checkpoint-0"), str(other / "checkpoint-0"),
                     "first differing tensor", "--allow-different-base")  # fmt: skip
    assert "'lm_head.weight'" in line  # the first tensor in the run's order
    assert not out.exists()
    res = runner.invoke(app, ["compare", str(runs[0]), str(other), "--out", str(out), "-q",
                              "--allow-different-base"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "warning: --allow-different-base: the bases" in res.stderr
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["options"]["allow_different_base"] is True
    assert prov["warnings"][0].startswith("--allow-different-base: the bases")


def test_user_errors_are_one_line(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    cli_fails(["compare", runs[0], runs[1], "--out", out, "--step-a", "3"],
              "--step-a 3", str(runs[0]), "saved steps are [2]")  # fmt: skip
    cli_fails(["compare", runs[0], "--out", out], "needs two runs")
    cli_fails(["compare", runs[0], runs[1], "--out", out, "--scopes", "tensor,model"], "scopes")
    cli_fails(["compare", runs[0], runs[1], "--out", out, "--ranks", "1,x"], "--ranks")
    cli_fails(["compare", runs[0], runs[1], "--group", runs[2], "--out", out], "not both")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    cli_fails(["compare", runs[0], runs[1], "--out", foreign], str(foreign))
    assert (foreign / "notes.txt").read_text() == "mine" and not out.exists()


def test_group_writes_every_pair(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "group"
    args = ["compare", "--out", str(out), "-q", "--ranks", "1"]
    res = runner.invoke(app, args + [a for r in runs for a in ("--group", str(r))])
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(out / "compare.parquet")
    overall = df[df["scope"] == "overall"]
    assert list(overall["pair"]) == ["0-1", "0-2", "1-2"]
    assert list(overall["run_a"]) == [str(runs[0]), str(runs[0]), str(runs[1])]
    assert [ln.split(":")[0] for ln in res.stdout.splitlines()[:3]] == ["pair 0-1", "pair 0-2",
                                                                        "pair 1-2"]  # fmt: skip


def test_group_computes_each_runs_factors_once(runs: list[Path], tmp_path: Path) -> None:
    """3 runs: each update's top-K SVD once per matrix (3), not once per pair it is in (6)."""
    common = ["-q", "--ranks", "1,4", "--workers", "1"]
    out = tmp_path / "group"
    res = runner.invoke(app, ["compare", "--out", str(out), *common,
                              *[a for r in runs for a in ("--group", str(r))]])  # fmt: skip
    assert res.exit_code == 0, res.output
    group = pd.read_parquet(out / "compare.parquet")
    tensors = group[group["scope"] == "tensor"]
    matrices = int(tensors[tensors["pair"] == "0-1"]["rows"].notna().sum())
    assert matrices == 8  # lm_head, embed_tokens and 2 × (q, o, down): the vectors have no SVD
    assert json.loads((out / "provenance.json").read_text())["svd_calls"] == 3 * matrices
    for key, (i, j) in (("0-1", (0, 1)), ("0-2", (0, 2)), ("1-2", (1, 2))):
        alone = tmp_path / f"pair-{key}"
        res = runner.invoke(app, ["compare", str(runs[i]), str(runs[j]), "--out", str(alone),
                                  *common])  # fmt: skip
        assert res.exit_code == 0, res.output
        assert json.loads((alone / "provenance.json").read_text())["svd_calls"] == 2 * matrices
        mine = group[group["pair"] == key].drop(columns=["pair", "run_a", "run_b"])
        pd.testing.assert_frame_equal(mine.reset_index(drop=True),
                                      pd.read_parquet(alone / "compare.parquet"))  # fmt: skip
    # Pair 1-2 took both runs' factors from the earlier pairs: against float64 SVDs.
    (w0, w1), (_, w2) = _states(runs[1]), _states(runs[2])
    checked = 0
    for _, row in tensors[(tensors["pair"] == "1-2") & tensors["rows"].notna()].iterrows():
        name = row["tensor"]
        da, db = ((w[name].double() - w0[name].double()).numpy() for w in (w1, w2))
        ua, sa, vta = np.linalg.svd(da)
        ub, sb, vtb = np.linalg.svd(db)
        for k in (1, 4):
            if min((s[k - 1] - s[k]) / s[0] for s in (sa, sb)) < 1e-2:
                continue  # an ill-defined subspace (design.md)
            left = ((ua[:, :k].T @ ub[:, :k]) ** 2).sum() / k
            right = ((vta[:k] @ vtb[:k].T) ** 2).sum() / k
            assert row[f"subspace_left_k{k}"] == pytest.approx(left, abs=1e-2), (name, k)
            assert row[f"subspace_right_k{k}"] == pytest.approx(right, abs=1e-2), (name, k)
            checked += 1
    assert checked >= matrices


def test_the_command_line_in_a_child_process(runs: list[Path], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "opdlens", "compare", str(runs[0]), str(runs[1]), "--out",
         str(tmp_path / "o"), "--workers", "2"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("the runs changed ")
    assert "compare [" in proc.stderr  # the progress bar, on stderr


def test_factors_of_an_earlier_analyze_are_reused(runs: list[Path], tmp_path: Path) -> None:
    metrics = tmp_path / "metrics-a"
    done = runner.invoke(app, ["analyze", str(runs[0]), "--out", str(metrics), "-q",
                               "--ranks", "1,4", "--workers", "1"])  # fmt: skip
    assert done.exit_code == 0, done.output
    plain, cached = tmp_path / "plain", tmp_path / "cached"
    for out, extra in ((plain, []), (cached, ["--cache-a", str(metrics)])):
        res = runner.invoke(app, ["compare", str(runs[0]), str(runs[1]), "--out", str(out), "-q",
                                  "--ranks", "1,4", "--workers", "1", *extra])  # fmt: skip
        assert res.exit_code == 0, res.output
    p0, p1 = (json.loads((d / "provenance.json").read_text()) for d in (plain, cached))
    a, b = (pd.read_parquet(d / "compare.parquet") for d in (plain, cached))
    matrices = int(a[(a["scope"] == "tensor")]["rows"].notna().sum())
    assert p0["cache_hits"] == 0 and p1["cache_hits"] == matrices  # every matrix of run A
    assert p1["svd_calls"] == p0["svd_calls"] - matrices
    cols = [c for c in a.columns if c.startswith("subspace_")]
    assert np.allclose(a[cols], b[cols], atol=1e-6, equal_nan=True)
    cli_fails(["compare", runs[0], runs[1], "--out", tmp_path / "x", "--cache-a", runs[2]],
              "no factor cache here")  # fmt: skip
