"""analyze's changed_frac / changed_frac_tol against numpy counts on the stored checkpoint values."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import checkpoints
import numpy as np
import pandas as pd
import pytest
import torch
from planted import STEPS, load_states, ref_slices, write_state_run

import opdlens
from opdlens import open_run
from opdlens.analysis.frame import summarize
from opdlens.errors import OptionError

TOL = 1e-5
KEYS = ["span", "step", "tensor", "expert", "part"]


def sparse_update(name: str, w0: torch.Tensor, step: int) -> torch.Tensor:
    """W_step: 30 % of elements move by ~1e-2, 30 % by ~1e-4·|w| (rounds back in bf16 and f16;
    changes in f32, mostly below TOL), the rest stay; a further 10 % move only at step 4; the
    first element is +0 at the base and −0 afterwards (equal). Steps ≥ 2 repeat step 2 elsewhere.
    """
    if not w0.is_floating_point():
        return w0.clone()
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    shape = tuple(w0.shape)
    r = torch.rand(shape, generator=g)
    big = 1e-2 * torch.randn(shape, generator=g)
    tiny = 1e-4 * w0.float().abs() * torch.rand(shape, generator=g)
    late = 1e-2 * torch.randn(shape, generator=g) * ((r >= 0.6) & (r < 0.7))
    d = torch.where(r < 0.3, big, torch.where(r < 0.6, tiny, torch.zeros(shape)))
    w = w0.float() + min(step, 2) * d + (step >= 4) * late
    w = w.to(w0.dtype)
    w.view(-1)[0] = 0.0 if step == 0 else -0.0
    return w


def expected(states: dict[int, dict[str, torch.Tensor]], config: dict, tol: float = TOL):
    """One row of counts per (span, step, tensor, slice) by numpy on float64 stored values."""
    rows = []
    steps = [s for s in states if s != 0]
    for name in states[0]:
        if not states[0][name].is_floating_point():
            continue
        for i, step in enumerate(steps):
            prev = steps[i - 1] if i else 0
            for span, ref in (("cumulative", 0), ("consecutive", prev)):
                a = ref_slices(name, states[ref][name], config)
                b = ref_slices(name, states[step][name], config)
                for (e, p, x), (_, _, y) in zip(a, b, strict=True):
                    x, y = x.numpy(), y.numpy()
                    rows.append({
                        "span": span, "step": step, "tensor": name, "expert": e, "part": p,
                        "n_changed": int((x != y).sum()),
                        "n_tol": int((np.abs(y - x) > tol).sum()), "n": x.size,
                    })  # fmt: skip
    return pd.DataFrame(rows)


def check_rows(df: pd.DataFrame, ref: pd.DataFrame) -> pd.DataFrame:
    """Every row's counts and shares equal the reference's; returns the merged table."""
    got = df.copy()
    got["expert"] = got["expert"].astype("float64")
    got["part"] = got["part"].astype(object).where(got["part"].notna(), None)
    r = ref.assign(expert=ref["expert"].astype("float64"))
    m = got.merge(r, on=KEYS, how="inner")
    assert len(m) == len(df) == len(ref), (len(m), len(df), len(ref))
    assert (m["numel"] == m["n"]).all()
    assert (m["changed_count"].astype(int) == m["n_changed"]).all()
    assert (m["changed_tol_count"].astype(int) == m["n_tol"]).all()
    assert (m["changed_frac"] == m["n_changed"] / m["n"]).all()
    assert (m["changed_frac_tol"] == m["n_tol"] / m["n"]).all()
    return m


def _analyze(root: Path, **kw) -> pd.DataFrame:
    return opdlens.analyze(open_run(root), ranks=(1,), consecutive=True, workers=1, **kw)


def _config(root: Path, step: int = 0) -> dict:
    return json.loads((root / f"checkpoint-{step}" / "config.json").read_text())


@pytest.fixture(scope="module")
def hf_runs(tmp_path_factory):
    made = {}

    def make(arch: str, dtype: torch.dtype, layout: str = "safetensors") -> Path:
        key = (arch, dtype, layout)
        if key not in made:
            made[key] = checkpoints.write_hf_run(
                tmp_path_factory.mktemp(f"sparse-{arch}"), arch, STEPS, layout, dtype,
                update=sparse_update, trainer_files=False,
            )  # fmt: skip
        return made[key]

    return make


@pytest.mark.parametrize(
    ("arch", "dtype", "layout"),
    [
        ("llama", torch.bfloat16, "sharded"),
        ("llama", torch.float16, "safetensors"),
        ("llama", torch.float32, "bin"),
        ("phi3", torch.bfloat16, "safetensors"),  # fused qkv_proj and gate_up_proj, split
    ],
)
def test_counts_match_numpy_on_the_stored_values(hf_runs, arch, dtype, layout):
    root = hf_runs(arch, dtype, layout)
    df = _analyze(root)
    states = load_states(root)
    m = check_rows(df, expected(states, _config(root)))
    cum = m[m["span"] == "cumulative"]
    if dtype == torch.float32:
        # float32 keeps the tiny updates: most of the weights change, few by more than TOL
        assert (cum["n_changed"] > cum["n_tol"]).any()
        assert cum["changed_count"].sum() / cum["numel"].sum() > 0.55
    else:
        # bf16 / f16 storage hides them: the tiny 30 % round back to the base value
        assert cum["changed_count"].sum() / cum["numel"].sum() < 0.45
    # from step 2 to 4 only the late 10 % moved
    late = m[(m["span"] == "consecutive") & (m["step"] == 4)]
    assert 0.05 < late["changed_count"].sum() / late["numel"].sum() < 0.15
    if arch == "phi3":
        assert {"q", "k", "v", "gate", "up"} <= set(df["part"].dropna())


def test_values_that_round_back_are_unchanged_and_zero_signs_are_equal(hf_runs):
    root = hf_runs("llama", torch.bfloat16, "sharded")
    name = "model.layers.0.mlp.down_proj.weight"
    states = load_states(root)
    w0, w4 = states[0][name], states[4][name]
    unmoved = (w0 == w4).sum().item()
    assert torch.signbit(w4.view(-1)[0]) and not torch.signbit(w0.view(-1)[0])
    row = _analyze(root, tensors=[name])
    row = row[(row["span"] == "cumulative") & (row["step"] == 4)].iloc[0]
    assert row["changed_count"] == w0.numel() - unmoved
    # float32 arithmetic of the planted update moved 60 %, storage kept only about half of it
    assert 0.3 < row["changed_frac"] < 0.45


def test_aggregates_are_summed_counts_over_summed_numel(hf_runs):
    root = hf_runs("phi3", torch.bfloat16, "safetensors")
    df = _analyze(root, sparsity_tol=1e-3)
    ref = expected(load_states(root), _config(root), tol=1e-3)
    m = check_rows(df, ref)
    final = m[(m["span"] == "cumulative") & (m["step"] == 4)]
    for by in (("block",), ("layer",), ()):
        got = summarize(df[(df["span"] == "cumulative") & (df["step"] == 4)], by=by)
        if not by:
            assert len(got) == 1
            want = final["n_changed"].sum() / final["n"].sum()
            assert got["changed_frac"].iloc[0] == want
            assert got["changed_frac_tol"].iloc[0] == final["n_tol"].sum() / final["n"].sum()
            continue
        col = by[0]
        sums = final.groupby(final[col].astype(object), dropna=False)[["n_changed", "n_tol", "n"]]
        for key, s in sums.sum().iterrows():
            g = got[got[col].astype(object).isna()] if pd.isna(key) else got[got[col] == key]
            assert g["changed_count"].iloc[0] == s["n_changed"]
            assert g["changed_frac"].iloc[0] == s["n_changed"] / s["n"]
            assert g["changed_frac_tol"].iloc[0] == s["n_tol"] / s["n"]


def test_stacked_experts_are_counted_per_expert(tmp_path):
    model = checkpoints.tiny_model("qwen3_moe", dtype=torch.bfloat16)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    states = {s: {n: sparse_update(n, w, s) for n, w in base.items()} for s in STEPS}
    config = checkpoints.tiny_config("qwen3_moe").to_dict()
    root = write_state_run(tmp_path / "moe", states, config)
    df = _analyze(root)
    m = check_rows(df, expected(load_states(root), config))
    experts = m[m["tensor"] == "model.layers.0.mlp.experts.gate_up_proj"]
    assert set(experts["expert"].dropna()) == {0.0, 1.0, 2.0, 3.0}


def test_verl_rank_files_are_counted_on_the_joined_tensors(tmp_path):
    root = checkpoints.write_verl_run(
        tmp_path / "verl", "llama", (0, 2, 4), weights="plain", dtype=torch.bfloat16,
        update=sparse_update,
    )  # fmt: skip
    df = _analyze(root)
    states = {}
    for step in (0, 2, 4):
        actor = root / f"global_step_{step}" / "actor"
        parts = [torch.load(actor / f"model_world_size_2_rank_{r}.pt") for r in (0, 1)]
        states[step] = {
            n: (parts[0][n] if parts[0][n].dim() == 0 else torch.cat([p[n] for p in parts]))
            .double() for n in parts[0]
        }  # fmt: skip
    config = json.loads(
        (root / "global_step_0" / "actor" / "huggingface" / "config.json").read_text()
    )
    check_rows(df, expected(states, config))


def test_float64_storage_is_compared_as_stored(tmp_path):
    # W_t = W_0 + 1e-12: the float32 readings are equal, the stored float64 values are not.
    name = "model.layers.0.self_attn.q_proj.weight"
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(8, 8, generator=g, dtype=torch.float64)
    step1 = w0.clone()
    step1[:3] += 1e-12
    step2 = step1.clone()
    step2[5] += 1e-3
    states = {s: {name: w} for s, w in ((0, w0), (1, step1), (2, step2))}
    root = write_state_run(tmp_path / "f64", states, {"model_type": "llama"})
    assert torch.equal(w0.float(), step1.float())
    df = _analyze(root)
    check_rows(df, expected(load_states(root), {}))
    got = df.set_index(["span", "step"])["changed_count"]
    assert got[("cumulative", 1)] == 24 and got[("consecutive", 2)] == 8


def test_lora_rows_are_empty_with_a_note(planted_runs):
    run = open_run(planted_runs("lora"), base=planted_runs("llama-f32") / "checkpoint-0")
    df = opdlens.analyze(run, ranks=(1,), consecutive=True, workers=1)
    factored = df["tensor"].str.contains(r"\.(?:q_proj|v_proj|down_proj)\.")
    assert df.loc[factored, ["changed_frac", "changed_frac_tol"]].isna().all().all()
    assert df.loc[factored, "changed_count"].isna().all()
    # tensors the adapter leaves alone are read densely: their base weights, unchanged
    assert (df.loc[~factored, "changed_count"] == 0).all()
    assert any("LoRA factors" in w and "changed_frac" in w for w in df.attrs["warnings"])
    final = df[(df["span"] == "cumulative") & (df["step"] == df["step"].max())]
    by_block = summarize(final, by=("block",)).set_index("block")
    assert np.isnan(by_block.loc["attn", "changed_frac"])
    assert by_block.loc["norm", "changed_frac"] == 0.0


@pytest.mark.parametrize("tol", [-1e-5, float("nan"), float("inf"), "abc", True])
def test_a_bad_tolerance_is_an_option_error(small_run, tol):
    with pytest.raises(OptionError, match="'sparsity_tol' parameter of analyze"):
        opdlens.analyze(open_run(small_run), sparsity_tol=tol)


def test_a_cached_analysis_still_counts_every_row(hf_runs, tmp_path):
    # The cache holds factors only; the counts come from the bytes each analyze reads again.
    from opdlens.analysis.write import write_analysis

    root = hf_runs("llama", torch.float16, "safetensors")
    run = open_run(root)
    first, _ = write_analysis(run, tmp_path / "out", ranks=(1,), workers=1)
    again, _ = write_analysis(run, tmp_path / "out", ranks=(1,), workers=1, sparsity_tol=1e-3)
    assert again.cache_hits > 0 and again.svd_calls == 0
    cum = expected(load_states(root), _config(root), tol=1e-3)
    check_rows(again.frame, cum[cum["span"] == "cumulative"])
    pd.testing.assert_series_equal(first.frame["changed_count"], again.frame["changed_count"])


@pytest.mark.parametrize(
    ("dtype", "changed", "above_tol"), [(torch.bfloat16, 3, 3), (torch.float32, 5, 4)]
)
def test_the_worked_example_of_the_design_notes(tmp_path, dtype, changed, above_tol):
    name = "model.layers.0.self_attn.q_proj.weight"
    w0 = torch.tensor([[0.5, -1.0, 0.0], [2.0, 0.25, 3.0]])
    w1 = w0 + torch.tensor([[0.001, 3e-6, 0.0], [0.01, -0.002, 0.02]])
    w1[0, 2] = -0.0
    states = {0: {name: w0.to(dtype)}, 1: {name: w1.to(dtype)}}
    root = write_state_run(tmp_path / "example", states, {"model_type": "llama"})
    row = _analyze(root).iloc[0]
    assert (row["changed_count"], row["changed_tol_count"], row["numel"]) == (changed, above_tol, 6)
    assert row["changed_frac"] == changed / 6 and row["changed_frac_tol"] == above_tol / 6
