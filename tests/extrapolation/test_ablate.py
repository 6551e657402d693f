"""ablate: candidates against numpy, additivity of a distance scorer, resume, parallel scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from safetensors.torch import load_file as load_torch

from opdlens import OpdlensError, OptionError, ScorerError, open_run
from opdlens.extrapolation.ablate import ABLATION_COLUMNS, SCORES_FILE, ablate

from .conftest import linear_state, shapes, write_run

REFERENCE = {
    k: v.numpy().astype(np.float64) for k, v in linear_state(3).items() if v.is_floating_point()
}


def weights(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of a checkpoint directory, read by safetensors' numpy API."""
    out: dict[str, np.ndarray] = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        out |= load_file(f)
    return out


def distance_score(path: Path) -> float:
    """Minus the squared distance to a fixed reference: a sum over tensors, so additive."""
    return -sum(
        float(((v.astype(np.float64) - REFERENCE[k]) ** 2).sum())
        for k, v in weights(path).items()
        if k in REFERENCE
    )


class Counting:
    """distance_score that counts its calls and raises after `fail_after` of them."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls = 0
        self.fail_after = fail_after
        self.__name__ = "distance_score"

    def __call__(self, path: Path) -> float:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("killed")
        self.calls += 1
        return distance_score(path)


@pytest.fixture
def random_run(tmp_path: Path) -> Path:
    """Full-rank random float64 updates, saved at steps 0, 2 and 5, sharded."""
    g = torch.Generator().manual_seed(7)
    states = {
        s: {n: torch.randn(sh, generator=g, dtype=torch.float64) for n, sh in shapes().items()}
        for s in (0, 2, 5)
    }
    for s in states:
        states[s]["model.step_counter"] = torch.tensor([s])
    return write_run(tmp_path / "run", steps=(0, 2, 5), sharded=True, state=lambda s: states[s])


def test_candidates_are_theta0_plus_the_kept_updates(random_run: Path, tmp_path: Path) -> None:
    run = open_run(random_run)
    res = ablate(run, 5, distance_score, by="layer", out=tmp_path / "out", keep=True)
    w0, wt = weights(random_run / "checkpoint-0"), weights(random_run / "checkpoint-5")
    kept = tmp_path / "out/candidates"
    layer1 = [n for n in w0 if n.startswith("model.layers.1.")]
    assert len(layer1) == 8
    for mode in ("drop", "only"):
        got = weights(kept / f"{mode}-layer-layer-1")
        assert sorted(got) == sorted(wt)
        for name, value in got.items():
            if name == "model.step_counter":  # no update: as step T stores it
                np.testing.assert_array_equal(value, wt[name])
                continue
            delta = wt[name] - w0[name]
            zeroed = (name in layer1) == (mode == "drop")
            want = w0[name] + (0.0 if zeroed else delta)  # θ_0 + Δ_T: θ_T up to float64 round-off
            np.testing.assert_allclose(value, want, rtol=0, atol=1e-15 * np.abs(want).max())
            np.testing.assert_array_equal(value, w0[name] if zeroed else wt[name])  # bytes copied
    # The candidates are written like step 5: two shards plus the index, config copied.
    assert (kept / "full/model.safetensors.index.json").is_file()
    assert (kept / "full/config.json").is_file()
    assert res.ablation["group"].tolist() == [
        "embed",
        "layer 0",
        "layer 1",
        "layer 2",
        "norm",
        "head",
    ]


def test_scores_add_up_to_base_and_full(linear_run: Path, tmp_path: Path) -> None:
    run = open_run(linear_run)
    res = ablate(run, 4, distance_score, by="layer,block", out=tmp_path / "out")
    df = res.ablation
    full = distance_score(linear_run / "checkpoint-4")
    base = distance_score(linear_run / "checkpoint-0")
    assert df["score_full"].iloc[0] == pytest.approx(full, rel=1e-12)
    assert df["score_base"].iloc[0] == pytest.approx(base, rel=1e-12)
    # Additive scorer: dropping every group in turn loses full − base; adding every one gains it.
    assert df["utility"].sum() == pytest.approx(full - base, rel=1e-9)
    assert (df["score_only"] - base).sum() == pytest.approx(full - base, rel=1e-9)
    assert df["update_share"].sum() == pytest.approx(1.0)
    w0, w4 = weights(linear_run / "checkpoint-0"), weights(linear_run / "checkpoint-4")
    q = [n for n in w0 if n.startswith("model.layers.0.self_attn.")]
    d2 = sum(float(((w4[n].astype(np.float64) - w0[n]) ** 2).sum()) for n in q)
    b2 = sum(float((w0[n].astype(np.float64) ** 2).sum()) for n in q)
    row = df[df["group"] == "layer 0 attn"].iloc[0]
    assert row["rel_update_norm"] == pytest.approx(np.sqrt(d2 / b2))
    assert list(df.columns) == ABLATION_COLUMNS and str(df["layer"].dtype) == "Int64"


def test_dropping_the_only_moving_group_scores_as_the_base(tmp_path: Path) -> None:
    def state(step: int) -> dict[str, torch.Tensor]:
        moving, still = linear_state(step), linear_state(0)
        return {n: moving[n] if ".self_attn." in n else still[n] for n in moving}

    root = write_run(tmp_path / "run", steps=(0, 4), state=state)
    res = ablate(open_run(root), 4, distance_score, by="block", out=tmp_path / "out")
    df = res.ablation.set_index("group")
    assert df.loc["attn", "score_drop"] == df.loc["attn", "score_base"]
    assert df.loc["attn", "score_only"] == df.loc["attn", "score_full"]
    assert df.loc["attn", "update_share"] == 1.0
    assert (df.drop(index="attn")["utility"] == 0.0).all()


def test_rank_candidates_are_the_float64_svd_truncation(random_run: Path, tmp_path: Path) -> None:
    res = ablate(open_run(random_run), 5, distance_score, mode="drop", ranks=[1, 3, 16, 40],
                 out=tmp_path / "out", keep=True)  # fmt: skip
    w0, wt = weights(random_run / "checkpoint-0"), weights(random_run / "checkpoint-5")
    top, total = {k: 0.0 for k in (1, 3, 16, 40)}, 0.0
    for k in (1, 3, 16, 40):
        got = weights(tmp_path / f"out/candidates/rank-{k}")
        for name, value in got.items():
            if value.ndim != 2:  # 1-D updates are kept whole
                np.testing.assert_array_equal(value, wt[name])
                continue
            delta = wt[name].astype(np.float64) - w0[name].astype(np.float64)
            u, s, vt = np.linalg.svd(delta, full_matrices=False)
            want = w0[name].astype(np.float64) + (u[:, :k] * s[:k]) @ vt[:k]
            np.testing.assert_allclose(value, want, rtol=0, atol=1e-12 * np.abs(want).max())
            top[k] += float((s[:k] ** 2).sum())
            total += float((s**2).sum()) / 4
    curve = res.rank_curve
    assert curve["k"].tolist() == [1, 3, 16, 40]
    np.testing.assert_allclose(
        curve["energy_k"], [top[k] / total for k in (1, 3, 16, 40)], rtol=1e-9
    )
    assert curve["energy_k"].iloc[-1] == 1.0  # k ≥ every min(rows, cols): the whole update
    # rank ≥ min(rows, cols) everywhere: θ_T itself.
    assert curve["score"].iloc[-1] == res.ablation["score_full"].iloc[0]
    assert (tmp_path / "out/rank_curve.csv").is_file() and (
        tmp_path / "out/rank_curve.parquet"
    ).is_file()


def test_a_killed_ablation_resumes_from_the_scores_it_saved(
    linear_run: Path, tmp_path: Path
) -> None:
    run, out = open_run(linear_run), tmp_path / "out"
    killed = Counting(fail_after=4)
    with pytest.raises(ScorerError, match="raised RuntimeError on .*killed"):
        ablate(run, 4, killed, by="block", ranks=[2], out=out)
    assert len(json.loads((out / SCORES_FILE).read_text())["scores"]) == 4
    assert not [p for p in out.iterdir() if p.name.startswith("candidate-")]  # no leftovers
    again = Counting()
    res = ablate(run, 4, again, by="block", ranks=[2], out=out)
    assert res.ablation.attrs["reused"] == 4 and again.calls == 2 + 2 * 5 + 1 - 4
    clean = ablate(run, 4, distance_score, by="block", ranks=[2], out=tmp_path / "clean")
    assert res.ablation.equals(clean.ablation) and res.rank_curve.equals(clean.rank_curve)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["reused_scores"] == 4 and prov["scorer"] == "distance_score"
    # Another step is another ablation: nothing reused, and it says so.
    other = Counting()
    res = ablate(run, 2, other, by="block", out=out)
    assert other.calls == 2 + 2 * 5 and res.ablation.attrs["reused"] == 0
    assert any("another run, step or scorer" in w for w in res.ablation.attrs["warnings"])


def test_two_jobs_give_the_same_tables(linear_run: Path, tmp_path: Path) -> None:
    run = open_run(linear_run)
    one = ablate(run, 8, distance_score, by="block", ranks=[1, 2], out=tmp_path / "one")
    two = ablate(run, 8, distance_score, by="block", ranks=[1, 2], jobs=2, out=tmp_path / "two")
    assert one.ablation.equals(two.ablation) and one.rank_curve.equals(two.rank_curve)
    assert (
        json.loads((tmp_path / "one" / SCORES_FILE).read_text())["scores"]
        == json.loads((tmp_path / "two" / SCORES_FILE).read_text())["scores"]
    )


def test_without_out_nothing_is_left(linear_run: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    seen: list[Path] = []

    def score(path: Path) -> float:
        seen.append(Path(path))
        return distance_score(path)

    res = ablate(open_run(linear_run), 2, score, mode="only")
    assert res.ablation["utility"].isna().all() and res.ablation["score_only"].notna().all()
    assert res.rank_curve.empty
    assert all(str(p).startswith(str(tmp_path / "tmp")) for p in seen)
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not any(str(p).startswith(str(linear_run)) for p in seen)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"by": "head"},
            OptionError,
            "'by' parameter of ablate .* block, layer, layer,block, kind",
        ),
        ({"mode": "keep"}, OptionError, "'mode' parameter .* drop, only, both. Got 'keep'"),
        ({"ranks": [0, 2]}, OptionError, "'ranks' parameter .* ≥ 1.*Got \\[0, 2\\]"),
        ({"jobs": 0}, OptionError, "'jobs' parameter .* ≥ 1; got 0"),
        ({"keep": True}, OptionError, "keep=True .* give out=DIR"),
        ({"step": 3}, OpdlensError, "Step 3 is not a saved step .* \\[1, 2, 4, 8\\]"),
        ({"step": 0}, OpdlensError, "Step 0 is not a saved step"),
    ],
)
def test_bad_options_are_refused(linear_run: Path, kwargs: dict, error: type, match: str) -> None:
    step = kwargs.pop("step", 4)
    with pytest.raises(error, match=match):
        ablate(open_run(linear_run), step, distance_score, **kwargs)


def test_out_of_another_command_is_refused(linear_run: Path, tmp_path: Path) -> None:
    from opdlens.io.paths import write_marker

    (tmp_path / "rep").mkdir()
    write_marker(tmp_path / "rep", "replay")
    with pytest.raises(OpdlensError, match="output of `opdlens replay`, not of ablate"):
        ablate(open_run(linear_run), 4, distance_score, out=tmp_path / "rep")
    with pytest.raises(OpdlensError, match="overlaps the input"):
        ablate(open_run(linear_run), 4, distance_score, out=linear_run / "checkpoint-4" / "x")


def test_base_values_are_written_in_the_dtype_step_t_stores(tmp_path: Path) -> None:
    def state(step: int) -> dict[str, torch.Tensor]:
        return linear_state(step, torch.float32 if step == 0 else torch.bfloat16)

    root = write_run(tmp_path / "run", steps=(0, 2), state=state)
    zero = lambda path: 0.0  # noqa: E731  (only the written weights matter here)
    ablate(open_run(root), 2, zero, by="block", mode="drop", out=tmp_path / "out", keep=True)

    got = load_torch(tmp_path / "out/candidates/drop-block-mlp/model.safetensors")
    w0, w2 = linear_state(0), linear_state(2, torch.bfloat16)
    for name, value in got.items():
        assert value.dtype == w2[name].dtype
        want = w0[name] if ".mlp." in name else w2[name]  # multiples of 1/64: exact in bf16
        torch.testing.assert_close(value.float(), want.float(), rtol=0, atol=0)


def test_a_failure_under_two_jobs_stops_and_keeps_what_was_scored(
    linear_run: Path, tmp_path: Path
) -> None:
    killed = Counting(fail_after=3)
    with pytest.raises(ScorerError, match="killed"):
        ablate(open_run(linear_run), 4, killed, by="block", jobs=2, out=tmp_path / "out")
    saved = json.loads((tmp_path / "out" / SCORES_FILE).read_text())["scores"]
    assert len(saved) == killed.calls == 3  # the other job's candidate ended; none started after
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".opdlens", SCORES_FILE]
